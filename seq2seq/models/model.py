"""The encoder-decoder composition, its loss, and a factory from the model config."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from seq2seq.config import ConfigError, ImageConfig, ModelConfig
from seq2seq.models.decoder import RNNDecoder
from seq2seq.models.encoders import ImageEncoder, TextEncoder
from seq2seq.models.loss import token_losses
from seq2seq.models.memory import Memory
from seq2seq.tokenizers import PAD
from seq2seq.train.distributed import current


class Output(NamedTuple):
    logits: Tensor  # (batch, tgt_len, vocab)
    attention: Tensor | None  # (batch, tgt_len, mem_len), None without attention
    memory_mask: Tensor  # (batch, mem_len)


class Seq2Seq(nn.Module):
    """Any encoder that returns a :class:`Memory`, and the shared :class:`RNNDecoder`."""

    def __init__(self, encoder: nn.Module, decoder: RNNDecoder):
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder

    def encode(self, *inputs: Tensor) -> Memory:
        return self.encoder(*inputs)

    def decode(self, memory: Memory, tgt_in: Tensor, teacher_forcing: float = 1.0) -> Output:
        """Teacher-forced logits, attention weights and the memory mask."""
        logits, attention = self.decoder(tgt_in, memory, teacher_forcing)
        return Output(logits, attention, memory.mask)

    def forward(self, inputs: tuple[Tensor, ...], tgt_in: Tensor, teacher_forcing: float = 1.0) -> Output:
        return self.decode(self.encode(*inputs), tgt_in, teacher_forcing)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)


class Regressor(nn.Module):
    """Many to one: an encoder's summary through a linear head, one number per input (the
    adding problem). It shares the encoders of :class:`Seq2Seq`; the trainer treats it alike."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.summary_dim, 1)

    def encode(self, *inputs: Tensor) -> Memory:
        return self.encoder(*inputs)

    def decode(self, memory: Memory, tgt_in: Tensor | None = None, teacher_forcing: float = 1.0) -> Tensor:
        """Memory -> predictions (batch,); there is no target sequence to feed."""
        return self.head(memory.summary).squeeze(-1)

    def forward(self, inputs: tuple[Tensor, ...], tgt_in: Tensor | None = None, teacher_forcing: float = 1.0) -> Tensor:
        return self.decode(self.encode(*inputs))

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)


class LossSum(NamedTuple):
    """One term of a training loss, summed over a batch: the loss is ``total / count`` summed over
    terms, and a data-parallel run divides by the count of all ranks' batches together."""

    total: Tensor  # () the term summed over its units
    count: int  # its units in the batch: target tokens, sequences or values


def mean_loss(terms: list[LossSum]) -> Tensor:
    """The loss of one batch: each term's total over its count, summed."""
    return sum(t.total / max(t.count, 1) for t in terms)


def summed_sequence_loss(logits: Tensor, tgt_out: Tensor, label_smoothing: float = 0.0) -> tuple[Tensor, Tensor, int]:
    """Training loss summed over non-padding tokens, summed NLL (for perplexity) and the token count.

    With label smoothing ``e`` the loss is ``(1 - e) * NLL + e * mean_v(-log p_v)``, as in
    ``F.cross_entropy(label_smoothing=e)`` (fused: :mod:`seq2seq.models.loss`).
    """
    target = tgt_out.reshape(-1)
    loss, nll = token_losses(logits.reshape(-1, logits.size(-1)), target, label_smoothing)  # (batch*tgt_len,)
    padding = target == PAD
    return loss.masked_fill(padding, 0.0).sum(), nll.masked_fill(padding, 0.0).sum(), int((~padding).sum())


def sequence_loss(logits: Tensor, tgt_out: Tensor, label_smoothing: float = 0.0) -> tuple[Tensor, Tensor, int]:
    """As :func:`summed_sequence_loss`, with the loss averaged over the tokens."""
    loss, nll, n = summed_sequence_loss(logits, tgt_out, label_smoothing)
    return loss / max(n, 1), nll, n


@torch.no_grad()
def teacher_forced_nll(model: nn.Module, batches: Iterable[Any], device: torch.device,
                       autocast: Callable[[], torch.autocast]) -> tuple[float, int]:
    """Summed NLL and token count of ``model`` over ``batches`` (for perplexity); in a
    data-parallel run each rank takes its share of the batches and the sums are shared."""
    d = current()
    total, count = 0.0, 0
    for batch in list(batches)[d.rank::d.world]:
        batch = batch.to(device)
        with autocast():
            logits = model(batch.inputs, batch.tgt_in).logits
        _, nll, n = sequence_loss(logits, batch.tgt_out)
        total, count = total + float(nll), count + n
    total, count = d.sum(torch.tensor([total, count], dtype=torch.float64)).tolist()
    return total, int(count)


def attention_penalty(attention: Tensor, memory_mask: Tensor, tgt_out: Tensor) -> LossSum:
    """Doubly stochastic attention (Xu et al., 2015): ``sum_i (1 - sum_t alpha_ti)^2`` summed over
    sequences (a mean once divided by its count), pushing every memory position to be attended about once."""
    steps = (tgt_out != PAD).unsqueeze(-1).to(attention.dtype)  # (batch, tgt_len, 1)
    coverage = (attention * steps).sum(dim=1)  # (batch, mem_len)
    return LossSum((((1.0 - coverage) ** 2) * memory_mask).sum(), attention.size(0))


def check_attention_sizes(cfg: ModelConfig, memory_dim: int) -> None:
    """Dot attention compares decoder states with memory vectors directly: their sizes must match."""
    if cfg.attention == "luong_dot" and cfg.dec_hidden != memory_dim:
        raise ConfigError(f"model.attention=luong_dot needs model.dec_hidden equal to the size of the encoder's "
                          f"memory vectors ({memory_dim}), got {cfg.dec_hidden}; use luong_general")


def build_decoder(cfg: ModelConfig, vocab_size: int, memory_dim: int, summary_dim: int,
                  enc_layers: int) -> RNNDecoder:
    """The shared decoder for an encoder with these sizes (``enc_layers``: the final states it
    hands over, 0 for a summary alone)."""
    check_attention_sizes(cfg, memory_dim)
    try:
        return RNNDecoder(
            vocab_size, cfg.emb_dim, cfg.dec_hidden, memory_dim, summary_dim, cell=cfg.dec_cell,
            layers=cfg.dec_layers, dropout=cfg.dropout, attention=cfg.attention, attention_dim=cfg.attention_dim,
            input_feeding=cfg.input_feeding, init=cfg.init, readout_dim=cfg.readout_dim,
            tied_embeddings=cfg.tied_embeddings, context_gate=cfg.context_gate, recurrent_gain=cfg.recurrent_gain,
            forget_bias=cfg.forget_bias, enc_layers=enc_layers, attention_scale=cfg.attention_scale,
            attention_fp32=cfg.attention_fp32, rnn_impl=cfg.rnn_impl, chrono_tmax=cfg.chrono_tmax,
        )
    except ValueError as err:  # options that do not go together: one line, as every config error
        raise ConfigError(str(err)) from None


def build_text_encoder(cfg: ModelConfig, src_vocab: int, input_dim: int | None = None) -> TextEncoder:
    """The RNN encoder sized by ``cfg``, over token ids (or ``input_dim``-sized vectors)."""
    return TextEncoder(src_vocab, cfg.emb_dim, cfg.enc_hidden, cfg.enc_cell, cfg.enc_layers, cfg.bidirectional,
                       cfg.dropout, input_dim, cfg.recurrent_gain, cfg.forget_bias, cfg.rnn_impl, cfg.chrono_tmax)


def build_translation_model(cfg: ModelConfig, src_vocab: int, tgt_vocab: int) -> Seq2Seq:
    """A text encoder and the shared decoder, sized by ``cfg``."""
    encoder = build_text_encoder(cfg, src_vocab)
    decoder = build_decoder(cfg, tgt_vocab, encoder.output_dim, encoder.summary_dim, encoder.layers)
    return Seq2Seq(encoder, decoder)


def build_captioning_model(model: ModelConfig, image: ImageConfig, tgt_vocab: int, pretrained: bool = True) -> Seq2Seq:
    """A CNN image encoder and the same shared decoder. ``pretrained=False`` skips fetching the
    CNN's weights (when a checkpoint will supply them)."""
    encoder = ImageEncoder(image.backbone, image.grid_block, image.weights if pretrained else None,
                           image.finetune_from, model.dropout)
    decoder = build_decoder(model, tgt_vocab, encoder.output_dim, encoder.summary_dim, 0)  # h0, c0 from the summary
    return Seq2Seq(encoder, decoder)
