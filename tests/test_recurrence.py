"""BPTT written out (seq2seq.models.recurrence) against PyTorch's recurrent layers."""

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from seq2seq.models.recurrence import ExplicitRNN, Recurrence

KINDS = {"rnn": nn.RNN, "gru": nn.GRU, "lstm": nn.LSTM}


def _pair(cell: str, layers: int, bidirectional: bool, dtype=torch.float32):
    torch.manual_seed(0)
    reference = KINDS[cell](5, 7, num_layers=layers, batch_first=True, bidirectional=bidirectional).to(dtype)
    explicit = ExplicitRNN(KINDS[cell](5, 7, num_layers=layers, batch_first=True,
                                       bidirectional=bidirectional).to(dtype))
    explicit.load_state_dict(reference.state_dict())  # the same names and shapes
    return reference, explicit


def _states(cell, layers, dirs, batch, dtype):
    h = torch.randn(layers * dirs, batch, 7, dtype=dtype, requires_grad=True)
    if cell != "lstm":
        return h
    return h, torch.randn(layers * dirs, batch, 7, dtype=dtype, requires_grad=True)


def _flat(state):
    return list(state) if isinstance(state, tuple) else [state]


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
@pytest.mark.parametrize("layers,bidirectional", [(1, False), (2, True)])
@pytest.mark.parametrize("padded", [False, True])
def test_outputs_final_states_and_every_gradient_equal_torchs(cell, layers, bidirectional, padded):
    reference, explicit = _pair(cell, layers, bidirectional)
    dirs = 2 if bidirectional else 1
    lengths = torch.tensor([6, 3, 5, 1]) if padded else torch.tensor([6, 6, 6, 6])
    x = torch.randn(4, 6, 5, requires_grad=True)
    hx = _states(cell, layers, dirs, 4, torch.float32)
    mask = torch.arange(6) < lengths.unsqueeze(1)

    packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    out_ref, final_ref = reference(packed, hx)
    out_ref, _ = pad_packed_sequence(out_ref, batch_first=True, total_length=6)
    out, final = explicit(x, hx, mask)
    torch.testing.assert_close(out, out_ref, atol=1e-5, rtol=1e-5)
    for a, b in zip(_flat(final), _flat(final_ref)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)

    weights = torch.randn_like(out)
    loss = lambda o, f: (o * weights).sum() + sum((s ** 2).sum() for s in _flat(f))  # noqa: E731
    inputs = [x, *_flat(hx)]
    grads_ref = torch.autograd.grad(loss(out_ref, final_ref), inputs + list(reference.parameters()))
    grads = torch.autograd.grad(loss(out, final), inputs + list(explicit.parameters()))
    names = ["x", "h0", "c0"][:len(inputs)] + [n for n, _ in explicit.named_parameters()]
    for name, a, b in zip(names, grads, grads_ref):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5, msg=name)


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
@pytest.mark.parametrize("reverse", [False, True])
def test_the_written_out_backward_passes_gradcheck_in_float64(cell, reverse):
    torch.manual_seed(1)
    gates = {"rnn": 1, "gru": 3, "lstm": 4}[cell]
    gi = torch.randn(3, 4, gates * 3, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(3, 3, dtype=torch.float64, requires_grad=True)
    c0 = torch.randn(3, 3, dtype=torch.float64, requires_grad=True) if cell == "lstm" else None
    w = torch.randn(gates * 3, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(gates * 3, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[True] * 4, [True, True, False, False], [True, False, False, False]])

    def f(gi, h0, w, b, *c0):
        out, h, c = Recurrence.apply(gi, h0, c0[0] if c0 else None, w, b, mask, cell, reverse, None)
        return (out, h) if c is None else (out, h, c)

    assert torch.autograd.gradcheck(f, (gi, h0, w, b, *([c0] if c0 is not None else [])))


def test_checkpoints_load_either_way_and_bf16_stays_close():
    reference, explicit = _pair("gru", 2, True)
    assert list(explicit.state_dict()) == list(reference.state_dict())
    x = torch.randn(8, 10, 5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, _ = explicit(x)
    exact, _ = reference(x)
    assert out.dtype == torch.float32 and (out - exact).abs().max() < 0.05  # bf16 products, fp32 states


@pytest.mark.parametrize("cell,attention,layers,feeding", [("gru", "bahdanau", 1, False),
                                                           ("lstm", "luong_general", 2, False),
                                                           ("lstm", "luong_general", 2, True),
                                                           ("rnn", "none", 1, False)])
def test_a_model_trains_alike_with_either_recurrence(cell, attention, layers, feeding):
    from conftest import padded_batch, tiny_model

    from seq2seq.models.model import sequence_loss

    src, lens = padded_batch([5, 3, 4])
    tgt = torch.randint(4, 24, (3, 6))
    models = [tiny_model(cell, attention, feeding, enc_layers=layers, dec_layers=layers, rnn_impl=impl).train()
              for impl in ("torch", "explicit")]
    assert isinstance(models[1].encoder.rnn, ExplicitRNN) and isinstance(models[1].decoder.rnn, ExplicitRNN)
    losses = []
    for model in models:
        loss, _, _ = sequence_loss(model((src, lens), tgt).logits, tgt)
        loss.backward()
        losses.append(loss)
    torch.testing.assert_close(losses[0], losses[1])
    for (name, a), (_, b) in zip(models[0].named_parameters(), models[1].named_parameters()):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-5, rtol=1e-4, msg=name)


def test_the_step_by_step_decoder_sums_its_weight_gradients_once(monkeypatch):
    from conftest import padded_batch, tiny_model

    from seq2seq.models import recurrence

    calls = []
    backward = recurrence.Tap.backward
    monkeypatch.setattr(recurrence.Tap, "backward", staticmethod(lambda ctx, grad: calls.append(
        len(ctx.tap.parts)) or backward(ctx, grad)))
    model = tiny_model("gru", "bahdanau", rnn_impl="explicit").train()
    src, lens = padded_batch([5, 3])
    tgt = torch.randint(4, 24, (2, 7))
    model((src, lens), tgt).logits.sum().backward()
    assert calls == [7, 7]  # one tap each for the decoder's W_hh and W_ih: the 7 steps' gradient in one product
