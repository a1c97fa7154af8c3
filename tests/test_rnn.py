import math

import pytest
import torch

from seq2seq.models.rnn import Dropout, Linear, make_rnn, padded_rows, select_state, top_hidden


@pytest.mark.parametrize("cell, mode", [("rnn", "RNN_TANH"), ("gru", "GRU"), ("lstm", "LSTM")])
def test_make_rnn(cell, mode):
    rnn = make_rnn(cell, 4, 6, layers=2, dropout=0.1, bidirectional=True)
    assert rnn.mode == mode and rnn.batch_first and rnn.bidirectional and rnn.dropout == 0.1
    assert make_rnn(cell, 4, 6, layers=1, dropout=0.3).dropout == 0.0  # no inter-layer dropout for one layer


def test_unknown_cell():
    with pytest.raises(ValueError, match="unknown cell 'transformer'"):
        make_rnn("transformer", 4, 6)


def test_state_helpers():
    h = torch.arange(2 * 3 * 4, dtype=torch.float).view(2, 3, 4)
    assert torch.equal(top_hidden(h), h[1]) and torch.equal(top_hidden((h, h + 1)), h[1])
    index = torch.tensor([2, 2, 0])
    assert torch.equal(select_state(h, index), h[:, [2, 2, 0]])
    picked = select_state((h, -h), index)
    assert torch.equal(picked[1], -h[:, [2, 2, 0]])


def test_fast_dropout_drops_p_and_keeps_the_mean():
    torch.manual_seed(0)
    layer = Dropout(0.25)
    x = torch.ones(1000, 1000, requires_grad=True)
    y = layer(x)
    assert abs((y == 0).float().mean().item() - 0.25) < 0.005
    assert abs(y.mean().item() - 1.0) < 0.01
    y.sum().backward()
    assert torch.equal(x.grad, y.detach())  # the gradient is the same mask, same scale
    layer.eval()
    assert layer(x) is x
    assert Dropout(0.0).train()(x) is x


def test_padded_rows_round_up_by_at_most_a_sixteenth():
    assert [padded_rows(n) for n in (1, 15, 16, 17, 31, 33, 1000, 1024, 1025)] == [1, 15, 16, 17, 31, 34, 1024,
                                                                                    1024, 1088]
    assert all(n <= padded_rows(n) <= n * 17 / 16 for n in range(1, 5000))
    assert len({padded_rows(n) for n in range(1025, 2049)}) == 16  # 1088, 1152, ..., 2048


def test_linear_with_padded_rows_equals_nn_linear(monkeypatch):
    torch.manual_seed(0)
    layer = Linear(5, 3)
    ref = torch.nn.Linear(5, 3)
    ref.load_state_dict(layer.state_dict())
    x = torch.randn(3, 11, 5, requires_grad=True)  # 33 rows, computed as 34 under bf16 autocast
    rows, linear = [], torch.nn.functional.linear
    monkeypatch.setattr(torch.nn.functional, "linear", lambda x, *a: rows.append(x.shape[:-1]) or linear(x, *a))
    torch.testing.assert_close(layer(x), ref(x))
    grads = []
    for module in (layer, ref):
        with torch.autocast("cpu", torch.bfloat16):
            y = module(x)
        y.float().square().sum().backward()
        grads.append((y.detach().float(), x.grad.clone(), module.weight.grad.clone()))
        x.grad = None
    for mine, theirs in zip(*grads):
        torch.testing.assert_close(mine, theirs, atol=2e-2, rtol=2e-2)
    assert rows[0] == (3, 11) and rows[2] == (34,)  # fp32 runs unpadded; bf16 multiplies 34 rows


@pytest.mark.parametrize("layers,bidirectional", [(1, False), (2, True)])
def test_forget_bias_is_the_effective_bias_of_every_layer_and_direction(layers, bidirectional):
    rnn = make_rnn("lstm", 5, 7, layers, bidirectional=bidirectional, recurrent_gain=1.0, forget_bias=1.0)
    suffixes = [f"l{i}{d}" for i in range(layers) for d in (["", "_reverse"] if bidirectional else [""])]
    for suffix in suffixes:
        b_ih, b_hh = getattr(rnn, f"bias_ih_{suffix}"), getattr(rnn, f"bias_hh_{suffix}")
        torch.testing.assert_close(b_ih[7:14] + b_hh[7:14], torch.ones(7))  # the forget block: 1, not 2
        assert not torch.equal(b_ih[:7], torch.ones(7))  # the other gates keep PyTorch's init
    assert make_rnn("gru", 5, 7, forget_bias=1.0).bias_ih_l0.abs().max() < 1  # GRUs have no forget gate


@pytest.mark.parametrize("layers,bidirectional", [(1, False), (2, True)])
def test_chrono_initialisation_spreads_forget_biases_and_mirrors_the_input_gate(layers, bidirectional):
    torch.manual_seed(0)
    rnn = make_rnn("lstm", 5, 64, layers, bidirectional=bidirectional, forget_bias=1.0, chrono_tmax=60)
    suffixes = [f"l{i}{d}" for i in range(layers) for d in (["", "_reverse"] if bidirectional else [""])]
    for suffix in suffixes:
        bias = getattr(rnn, f"bias_ih_{suffix}") + getattr(rnn, f"bias_hh_{suffix}")  # the effective biases
        forget, inputs = bias[64:128], bias[:64]
        assert forget.min() >= 0 and forget.max() <= math.log(59) and forget.std() > 0.5  # log U(1, 59): spread
        torch.testing.assert_close(inputs, -forget)
    with pytest.raises(ValueError, match="at least 3 steps"):
        make_rnn("lstm", 5, 7, chrono_tmax=2)


def test_chrono_initialisation_reaches_every_lstm_of_a_model():
    from conftest import tiny_model

    model = tiny_model("lstm", "bahdanau", enc_layers=2, dec_layers=2, chrono_tmax=30)
    for rnn in (model.encoder.rnn, model.decoder.rnn):
        h = rnn.hidden_size
        forget = rnn.bias_ih_l1[h:2 * h] + rnn.bias_hh_l1[h:2 * h]
        assert forget.min() >= 0 and forget.max() <= math.log(29) and len(set(forget.tolist())) == h


def test_forget_bias_reaches_every_lstm_of_a_model():
    from conftest import tiny_model

    model = tiny_model("lstm", "bahdanau", enc_layers=2, dec_layers=2, forget_bias=1.0)
    for rnn in (model.encoder.rnn, model.decoder.rnn):
        for name, bias in rnn.named_parameters():
            if name.startswith("bias_ih"):
                h = rnn.hidden_size
                other = getattr(rnn, name.replace("_ih_", "_hh_"))
                torch.testing.assert_close(bias[h:2 * h] + other[h:2 * h], torch.ones(h))
