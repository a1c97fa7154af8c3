import pytest
import torch

from seq2seq.models.rnn import Dropout, make_rnn, select_state, top_hidden


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
