import math

import pytest
import torch
from conftest import ATTENTIONS, CELLS, padded_batch, tiny_model

from seq2seq.models.decoder import RNNDecoder
from seq2seq.models.memory import Memory

COMBOS = [(c, a, f) for c in CELLS for a in ATTENTIONS for f in (False, True) if not f or a.startswith("luong")]
COMBOS += [("lstm", "bahdanau", "gate"), ("gru", "luong_general", "gate")]  # Show, Attend and Tell's beta


@pytest.mark.parametrize("cell, attention, feeding", COMBOS)
def test_teacher_forced_forward_equals_step_by_step(cell, attention, feeding):
    gate = feeding == "gate"
    model = tiny_model(cell, attention, feeding is True, context_gate=gate)
    assert (model.decoder.gate is not None) == gate
    src, lens = padded_batch([6, 3, 5])
    tgt = torch.randint(4, 24, (3, 7), generator=torch.Generator().manual_seed(1))
    logits, weights, mask = model((src, lens), tgt)
    assert logits.shape == (3, 7, 24) and mask.tolist()[1] == [True] * 3 + [False] * 3
    memory = model.encode(src, lens)
    state = model.decoder.init_state(memory)
    steps = []
    for t in range(7):
        out, state, w = model.decoder.step(tgt[:, t], state, memory)
        steps.append(out)
    torch.testing.assert_close(torch.stack(steps, 1), logits, atol=1e-5, rtol=1e-4)
    if attention == "none":
        assert weights is None
    else:
        assert weights.shape == (3, 7, 6)
        assert torch.all(weights[1, :, 3:] == 0) and torch.all(weights[2, :, 5:] == 0)
        torch.testing.assert_close(weights.sum(-1), torch.ones(3, 7))


@pytest.mark.parametrize("cell, attention, feeding", COMBOS + [("lstm", "bahdanau", "2 layers")])
def test_a_memory_row_serves_its_group_of_rows_as_its_copies_would(cell, attention, feeding):
    layers = 2 if feeding == "2 layers" else 1
    model = tiny_model(cell, attention, feeding is True, context_gate=feeding == "gate", dec_layers=layers).eval()
    src, lens = padded_batch([6, 3])
    memory = model.encode(src, lens)
    rows = torch.arange(2).repeat_interleave(3)  # three hypotheses per input, as in beam search
    copied = memory.index_select(rows)
    grouped_state, copied_state = model.decoder.init_state(memory), model.decoder.init_state(copied)
    grouped_state = grouped_state.follow_beams(rows, None)
    prev = torch.randint(4, 24, (6, 4), generator=torch.Generator().manual_seed(2))
    parents = torch.tensor([2, 0, 0, 4, 5, 3])  # each hypothesis follows one of its own input's rows
    for t in range(4):
        grouped, grouped_state, gw = model.decoder.step(prev[:, t], grouped_state, memory)
        alone, copied_state, cw = model.decoder.step(prev[:, t], copied_state, copied)
        grouped_state = grouped_state.follow_beams(parents, None)
        copied_state = copied_state.follow_beams(parents, None)
        torch.testing.assert_close(grouped, alone, atol=1e-6, rtol=1e-5)
        if attention != "none":
            torch.testing.assert_close(gw, cw, atol=1e-6, rtol=1e-5)
    if attention != "none":
        with pytest.raises(ValueError, match="4 query rows cannot share a memory of 3 rows"):
            model.decoder.attend(torch.zeros(4, 1, 32), torch.zeros(3, 6, 32), memory)


@pytest.mark.parametrize("init", ["zero", "last", "bridge"])
@pytest.mark.parametrize("cell", CELLS)
def test_initial_state(init, cell):
    model = tiny_model(cell, "bahdanau", init=init)
    src, lens = padded_batch([4, 2])
    memory = model.encode(src, lens)
    state = model.decoder.init_state(memory)
    h = state.hidden[0] if cell == "lstm" else state.hidden
    assert h.shape == (1, 2, 12)
    if init == "zero":
        assert torch.all(h == 0)
    elif init == "last":
        torch.testing.assert_close(h[0], memory.summary)
    else:
        torch.testing.assert_close(h[0], torch.tanh(model.decoder.bridge[0](memory.summary)))


def test_last_init_needs_matching_sizes():
    with pytest.raises(ValueError, match="init=last hands layer l's final state to decoder layer l"):
        RNNDecoder(10, 4, hidden=8, memory_dim=6, summary_dim=6, init="last")


@pytest.mark.parametrize("attention", ATTENTIONS)
def test_tied_embeddings_share_the_matrix(attention):
    model = tiny_model("gru", attention, tied_embeddings=True)
    assert model.decoder.out.weight is model.decoder.embed.weight
    src, lens = padded_batch([3, 2])
    logits = model((src, lens), torch.randint(4, 24, (2, 4))).logits
    assert logits.shape == (2, 4, 24)


def test_multi_layer_decoder_and_scheduled_sampling():
    model = tiny_model("lstm", "luong_general", dec_layers=2, enc_layers=2).train()
    src, lens = padded_batch([5, 4])
    tgt = torch.randint(4, 24, (2, 6))
    torch.manual_seed(0)
    logits = model((src, lens), tgt, teacher_forcing=0.5).logits
    logits.sum().backward()
    assert logits.shape == (2, 6, 24)
    assert model.decoder.embed.weight.grad is not None


def test_decoder_reads_any_memory():
    """The decoder sees only vectors, a mask and a summary: a grid of image features works as well."""
    torch.manual_seed(0)
    dec = RNNDecoder(24, 10, 12, memory_dim=9, summary_dim=5, attention="bahdanau").eval()
    grid = Memory(torch.randn(2, 49, 9), torch.ones(2, 49, dtype=torch.bool), torch.randn(2, 5))
    logits, weights = dec(torch.randint(4, 24, (2, 3)), grid)
    assert logits.shape == (2, 3, 24) and weights.shape == (2, 3, 49)



def test_the_encoder_hands_h_and_c_over_layer_by_layer():
    model = tiny_model("lstm", "luong_general", init="last", bidirectional=False, enc_hidden=12,
                       enc_layers=2, dec_layers=2)
    src, lens = padded_batch([4, 2])
    memory = model.encode(src, lens)
    _, (h_n, c_n) = model.encoder.rnn(model.encoder.embed(src))  # unpacked: compare the full-length row
    h, c = model.decoder.init_state(memory).hidden
    assert h.shape == c.shape == (2, 2, 12)
    torch.testing.assert_close(h[:, 0], h_n[:, 0])  # layer l from layer l
    torch.testing.assert_close(c[:, 0], c_n[:, 0])  # the cell state too, not zeros
    torch.testing.assert_close(memory.summary, memory.layers[-1])


def test_bridges_project_h_and_c_per_layer():
    model = tiny_model("lstm", "bahdanau", init="bridge", enc_layers=2, dec_layers=2)
    src, lens = padded_batch([3, 3])
    memory = model.encode(src, lens)
    h, c = model.decoder.init_state(memory).hidden
    dec = model.decoder
    for layer in range(2):
        torch.testing.assert_close(h[layer], torch.tanh(dec.bridge[layer](memory.layers[layer])))
        torch.testing.assert_close(c[layer], torch.tanh(dec.cell_bridge[layer](memory.cells[layer])))
    # a summary alone (an image) starts h and c from it, through their own projections
    image = Memory(memory.states, memory.mask, memory.summary)
    h, c = dec.init_state(image).hidden
    torch.testing.assert_close(c[1], torch.tanh(dec.cell_bridge[1](memory.summary)))
    assert not torch.allclose(h, c)


def test_a_checkpoint_with_one_bridge_loads_as_it_was_trained():
    model = tiny_model("lstm", "bahdanau", init="bridge")
    old = {k: v for k, v in model.state_dict().items() if "bridge" not in k}
    old["decoder.bridge.weight"], old["decoder.bridge.bias"] = torch.randn(12, 12), torch.randn(12)
    model.load_state_dict(old)
    memory = model.encode(*padded_batch([3, 2]))
    h, c = model.decoder.init_state(memory).hidden
    torch.testing.assert_close(h[0], torch.tanh(memory.summary @ old["decoder.bridge.weight"].T
                                                 + old["decoder.bridge.bias"]))
    assert torch.all(c == 0)  # those models started c at 0


def test_a_two_layer_checkpoint_with_one_bridge_is_refused_not_misread(tmp_path):
    model = tiny_model("gru", "bahdanau", init="bridge", enc_layers=2, dec_layers=2)
    old = {k: v for k, v in model.state_dict().items() if "bridge" not in k}
    old["decoder.bridge.weight"], old["decoder.bridge.bias"] = torch.randn(12, 12), torch.randn(12)
    with pytest.raises(ValueError, match="2-layer decoder from before the per-layer handover"):
        model.load_state_dict(old)
    from seq2seq.train.checkpoints import CheckpointError, load_weights, save_checkpoint

    save_checkpoint(tmp_path / "old.pt", {"model": old})
    with pytest.raises(CheckpointError, match="^train.init_from=.*old.pt: a 2-layer decoder from before"):
        load_weights(model, tmp_path / "old.pt")  # one line, as the tools and training report it


@pytest.mark.parametrize("attention", ["bahdanau", "luong_general"])
def test_tied_embeddings_start_near_a_uniform_prediction(attention):
    vocab = 500
    model = tiny_model("gru", attention, tgt_vocab=vocab, emb_dim=64, enc_hidden=64, dec_hidden=128,
                       readout_dim=64, tied_embeddings=True)
    assert model.decoder.out.weight is model.decoder.embed.weight and torch.all(model.decoder.embed.weight[0] == 0)
    src, lens = padded_batch([6, 5, 4])
    tgt = torch.randint(4, vocab, (3, 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits, _, _ = model((src, lens), tgt)
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, vocab), tgt.reshape(-1))
    assert abs(float(loss) - math.log(vocab)) < 0.5  # N(0, 1) output weights started it 6 to 14 nats higher


def test_last_init_refuses_other_layer_counts():
    from seq2seq.config import ConfigError

    with pytest.raises(ConfigError, match="encoder's 1 layers of size 12"):  # one line, not a traceback
        tiny_model("gru", "bahdanau", init="last", bidirectional=False, enc_hidden=12, dec_layers=2)
