import pytest
import torch
import torch.nn.functional as F

from seq2seq.config import ConfigError, ImageConfig, ModelConfig
from seq2seq.models.model import build_captioning_model, build_translation_model, sequence_loss
from seq2seq.tokenizers import PAD


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_sequence_loss_matches_cross_entropy(smoothing):
    logits = torch.randn(2, 5, 9)
    tgt = torch.tensor([[4, 5, 3, 0, 0], [6, 7, 8, 3, 0]])
    loss, nll, n = sequence_loss(logits, tgt, smoothing)
    flat = logits.reshape(-1, 9)
    expected = F.cross_entropy(flat, tgt.reshape(-1), ignore_index=0, label_smoothing=smoothing)
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(nll, F.cross_entropy(flat, tgt.reshape(-1), ignore_index=0, reduction="sum"))
    assert n == 7


def test_build_translation_model_from_config():
    cfg = ModelConfig(emb_dim=8, enc_hidden=5, dec_hidden=7, attention="bahdanau", enc_layers=2, dec_layers=2,
                      enc_cell="lstm", dec_cell="rnn")
    model = build_translation_model(cfg, 30, 40)
    assert model.encoder.embed.num_embeddings == 30 and model.decoder.out.out_features == 40
    assert model.encoder.embed.padding_idx == PAD == model.decoder.embed.padding_idx
    assert model.encoder.rnn.num_layers == 2 and model.decoder.rnn.mode == "RNN_TANH"
    assert model.num_parameters() == sum(p.numel() for p in model.parameters())
    src = torch.tensor([[5, 6, 7], [8, 9, PAD]])
    logits, weights, _ = model((src, torch.tensor([3, 2])), torch.tensor([[2, 10], [2, 11]]))
    assert logits.shape == (2, 2, 40) and weights.shape == (2, 2, 3)


def test_attention_penalty_is_zero_when_every_position_gets_one_unit():
    from seq2seq.models.model import attention_penalty

    mask = torch.tensor([[True, True, False]])
    tgt = torch.tensor([[5, 6, 0]])  # two real steps, one padding step
    perfect = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.5, 0.5, 0.0]]])  # padding step ignored
    assert attention_penalty(perfect, mask, tgt).total.item() == 0.0
    lopsided = torch.tensor([[[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]])
    lopsided_penalty = attention_penalty(lopsided, mask, tgt)
    assert lopsided_penalty.total.item() == 2.0 and lopsided_penalty.count == 1  # (1-2)^2 + (1-0)^2
    both = attention_penalty(torch.cat([perfect, lopsided]), mask.repeat(2, 1), tgt.repeat(2, 1))
    assert both.total.item() == 2.0 and both.count == 2  # the mean over sequences is 1.0



def test_luong_dot_is_checked_against_the_encoder_that_is_built():
    with pytest.raises(ConfigError, match=r"luong_dot needs model.dec_hidden equal to .* \(12\), got 100"):
        build_translation_model(ModelConfig(enc_hidden=6, dec_hidden=100, attention="luong_dot"), 10, 10)
    # an image encoder's memory is the CNN's channels (1280 for MobileNetV2), not 2 * enc_hidden
    image = ImageConfig(weights="none")
    model = build_captioning_model(ModelConfig(dec_hidden=1280, attention="luong_dot"), image, 10)
    assert model.decoder.hidden == 1280
    with pytest.raises(ConfigError, match=r"\(1280\), got 512"):
        build_captioning_model(ModelConfig(enc_hidden=256, dec_hidden=512, attention="luong_dot"), image, 10)
