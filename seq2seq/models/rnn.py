"""Layers shared by encoders and the decoder: tanh RNN, GRU or LSTM, dropout, and a linear
layer whose matrix shapes repeat."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seq2seq.models.recurrence import ExplicitRNN

RNNState = Tensor | tuple[Tensor, Tensor]  # (layers*dirs, batch, hidden), LSTM: (h, c)


def make_rnn(cell: str, input_size: int, hidden: int, layers: int = 1, dropout: float = 0.0,
             bidirectional: bool = False, recurrent_gain: float | None = None,
             forget_bias: float | None = None, impl: str = "torch", chrono_tmax: int | None = None) -> nn.Module:
    """A batch-first multi-layer recurrent layer; ``cell`` is rnn (tanh), gru or lstm.

    ``recurrent_gain`` g replaces PyTorch's uniform init of each recurrent matrix (each gate's
    block) by an orthogonal one times g: every singular value is g, so g > 1 makes the
    backpropagated error grow step by step in a tanh RNN's linear regime, g < 1 shrink.

    ``forget_bias`` b (LSTM only) starts every layer's and direction's forget gate at
    sigmoid(b + ...): PyTorch's init leaves it near 0, a gate near 0.5 that halves the cell's
    memory at every step, so a signal T steps back arrives scaled by about 2^-T. Gers et al.
    (2000) and Jozefowicz et al. (2015) start it at 1. PyTorch adds two biases (``bias_ih`` and
    ``bias_hh``); b goes into the first and the second's forget block is zeroed, so the
    effective bias is b exactly (JoeyNMT fills both with b, which makes it 2b).

    ``chrono_tmax`` T (LSTM only, in place of ``forget_bias``) is Tallec & Ollivier's (2018)
    chrono initialisation: each unit's forget bias drawn as log(u), u ~ U(1, T - 1), and its
    input bias the negative: the units start with memory time scales spread up to T steps,
    where a bias of 1 gives every unit about 1 / (1 - sigmoid(1)) = 4 steps.

    ``impl`` ``explicit`` runs the same parameters through the written-out BPTT of
    :mod:`seq2seq.models.recurrence` instead of PyTorch's kernels.
    """
    kinds = {"rnn": nn.RNN, "gru": nn.GRU, "lstm": nn.LSTM}
    if cell not in kinds:
        raise ValueError(f"unknown cell {cell!r}; choose one of {', '.join(kinds)}")
    extra = {"nonlinearity": "tanh"} if cell == "rnn" else {}
    rnn = kinds[cell](input_size, hidden, num_layers=layers, batch_first=True,
                      dropout=dropout if layers > 1 else 0.0, bidirectional=bidirectional, **extra)
    if recurrent_gain is not None:
        with torch.no_grad():
            for name, weight in rnn.named_parameters():
                if name.startswith("weight_hh"):
                    for block in weight.split(hidden):  # (hidden, hidden) per gate
                        nn.init.orthogonal_(block, gain=recurrent_gain)
    if chrono_tmax is not None and cell == "lstm":
        if chrono_tmax < 3:
            raise ValueError(f"chrono initialisation needs a horizon of at least 3 steps, got {chrono_tmax}")
        with torch.no_grad():
            for name, bias in rnn.named_parameters():  # gates in PyTorch's order: input, forget, cell, output
                if name.startswith("bias_ih"):
                    b_f = torch.empty(hidden).uniform_(1, chrono_tmax - 1).log()  # (hidden,)
                    bias[:hidden], bias[hidden:2 * hidden] = -b_f, b_f
                elif name.startswith("bias_hh"):
                    bias[:2 * hidden] = 0.0  # the effective input and forget biases are the ones above
    elif forget_bias is not None and cell == "lstm":
        with torch.no_grad():
            for name, bias in rnn.named_parameters():  # gates in PyTorch's order: input, forget, cell, output
                if name.startswith("bias_"):
                    bias[hidden:2 * hidden] = forget_bias if name.startswith("bias_ih") else 0.0
    if impl == "explicit":
        return ExplicitRNN(rnn)
    if impl != "torch":
        raise ValueError(f"unknown recurrence {impl!r}; choose torch or explicit")
    return rnn


def top_hidden(state: RNNState) -> Tensor:
    """The last layer's hidden state, (batch, hidden)."""
    h = state[0] if isinstance(state, tuple) else state
    return h[-1]


def select_state(state: RNNState, index: Tensor) -> RNNState:
    """Reorder the batch dimension of a recurrent state."""
    if isinstance(state, tuple):
        return tuple(s.index_select(1, index) for s in state)
    return state.index_select(1, index)


class Dropout(nn.Module):
    """Inverted dropout that is fast on the CPU too.

    torch's CPU dropout spends its time drawing one random number per element. Here the
    CPU keep-mask takes one random byte per element, four bytes per 32-bit draw, which is
    about ten times faster; ``p`` is rounded to a multiple of 1/256. On a GPU it is
    ``F.dropout``.
    """

    def __init__(self, p: float):
        super().__init__()
        self.p = p
        self.threshold = round(p * 256)  # drop where the random byte < threshold

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.threshold == 0:
            return x
        if x.device.type != "cpu":
            return F.dropout(x, self.p, True)
        n = x.numel()
        words = torch.randint(-(2 ** 31), 2 ** 31 - 1, ((n + 3) // 4,), dtype=torch.int32)
        keep = words.view(torch.uint8)[:n].view(x.shape) >= self.threshold
        return x * keep.to(x.dtype) * (256 / (256 - self.threshold))

    def extra_repr(self) -> str:
        return f"p={self.threshold / 256:.4f}"


def padded_rows(n: int) -> int:
    """``n`` rounded up to one of 16 sizes per power of two (at most 1/16 more)."""
    step = max(1, (1 << (n.bit_length() - 1)) // 16)
    return -(-n // step) * step


class Linear(nn.Linear):
    """``nn.Linear`` that, computing in bf16 on the CPU, multiplies a row count rounded up by
    :func:`padded_rows`.

    bf16 products on the CPU run in oneDNN, which compiles a kernel for each new matrix shape
    (tens of milliseconds for an output layer) and caches it. A batch's token count changes
    from step to step, so unrounded, most steps would compile their output layer's kernels
    anew; rounded, a run sees a few dozen shapes. The padding rows are zeros, cut off after.
    fp32 products (MKL) and GPUs build nothing per shape: there it is ``nn.Linear``.
    """

    def forward(self, x: Tensor) -> Tensor:
        rows = x.numel() // x.size(-1) if x.size(-1) else 0
        bf16_cpu = x.device.type == "cpu" and (x.dtype == torch.bfloat16 or torch.is_autocast_enabled("cpu"))
        padded = padded_rows(rows) if rows and bf16_cpu else rows
        if padded == rows:
            return super().forward(x)
        flat = F.pad(x.reshape(rows, x.size(-1)), (0, 0, 0, padded - rows))  # (padded, in)
        return super().forward(flat)[:rows].view(*x.shape[:-1], self.out_features)
