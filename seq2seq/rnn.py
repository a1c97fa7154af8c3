"""Recurrent layers shared by encoders and the decoder: tanh RNN, GRU or LSTM."""

from __future__ import annotations

from torch import Tensor, nn

RNNState = Tensor | tuple[Tensor, Tensor]  # (layers*dirs, batch, hidden), LSTM: (h, c)


def make_rnn(cell: str, input_size: int, hidden: int, layers: int = 1, dropout: float = 0.0,
             bidirectional: bool = False) -> nn.RNNBase:
    """A batch-first multi-layer recurrent layer; ``cell`` is rnn (tanh), gru or lstm."""
    kinds = {"rnn": nn.RNN, "gru": nn.GRU, "lstm": nn.LSTM}
    if cell not in kinds:
        raise ValueError(f"unknown cell {cell!r}; choose one of {', '.join(kinds)}")
    extra = {"nonlinearity": "tanh"} if cell == "rnn" else {}
    return kinds[cell](input_size, hidden, num_layers=layers, batch_first=True,
                       dropout=dropout if layers > 1 else 0.0, bidirectional=bidirectional, **extra)


def top_hidden(state: RNNState) -> Tensor:
    """The last layer's hidden state, (batch, hidden)."""
    h = state[0] if isinstance(state, tuple) else state
    return h[-1]


def select_state(state: RNNState, index: Tensor) -> RNNState:
    """Reorder the batch dimension of a recurrent state."""
    if isinstance(state, tuple):
        return tuple(s.index_select(1, index) for s in state)
    return state.index_select(1, index)
