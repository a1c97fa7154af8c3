"""Backpropagation through time, written out: tanh RNN, GRU and LSTM layers whose forward
loop and backward loop are the textbook's equations.

Unroll the recurrence in time and it is a deep network whose layers share one weight
matrix. Forward, step by step (PyTorch's equations and parameter layout)::

    tanh RNN   h_t = tanh(a_t),   a_t = W_ih x_t + b_ih + W_hh h_{t-1} + b_hh
    GRU        r, z = sigmoid(.);  n = tanh(W_in x_t + b_in + r * (W_hn h_{t-1} + b_hn))
               h_t = (1 - z) * n + z * h_{t-1}
    LSTM       i, f, o = sigmoid(.);  g = tanh(.);  c_t = f * c_{t-1} + i * g;  h_t = o * tanh(c_t)

Backward, from the last step to the first: the error reaching h_t (from the layer's output at
t and from step t+1) goes through the gates to their pre-activations d_t, and on to h_{t-1}
through the recurrent matrix, ``dh_{t-1} = d_t W_hh`` (plus the gates' direct paths). That
product, repeated T times, is where gradients vanish or explode.

What does not recur runs once over all steps, as cuDNN and oneDNN do: the input products
``W_ih x_t`` of every step are one product before the loop (and their gradient one product
after it, by autograd), and the shared recurrent weights' gradient, ``sum_t d_t^T h_{t-1}``,
is one product after the backward loop instead of T small ones. Under bf16 autocast the
recurrent products run in bf16 while the states, gates and sums stay in float32.

A decoder with attention over its previous state (Bahdanau, input feeding) cannot run the
loop here: each step's input needs the previous step's state first, so it calls the layer
once per step, and its input products run per step too (the input includes the attention's
context). Inside ``with rnn.unrolled():`` the steps share one *tap* per weight matrix, W_hh
and W_ih alike: each step's backward leaves its (d_t, h_{t-1}) or (d_t, x_t) with the tap
instead of a weight gradient, and the tap's backward, which autograd runs after every step's,
sums them in one product.

The backward loop's ``dh_t`` is the total derivative of the loss with respect to h_t (through
every later step and the layer's outputs): inside ``with rnn.state_gradients() as grads:``,
the top layer's forward direction leaves it in ``grads``, which the gradient-flow probe
(:mod:`seq2seq.train.gradients`) reads instead of rerunning the layer step by step.

Padded steps (``mask`` False) keep the state and output zeros, as packed sequences do, so a
reverse direction starts at each sentence's last real token. :class:`ExplicitRNN` has
``nn.RNN``/``nn.GRU``/``nn.LSTM``'s parameter names and shapes: checkpoints load either way.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

GATES = {"rnn": 1, "gru": 3, "lstm": 4}  # blocks of W_hh
ACTS = {"rnn": 1, "gru": 4, "lstm": 6}  # blocks saved per step: h_t; r, z, n, W_hn h; i, f, g, o, c_{t-1}, tanh c_t


class Recurrence(torch.autograd.Function):
    """One layer, one direction: gi (batch, T, gates*hidden) = the input products with b_ih,
    h0 (batch, hidden), c0 (LSTM, else None), w_hh (gates*hidden, hidden), b_hh, mask (batch, T)
    -> outputs (batch, T, hidden), h_T, c_T (LSTM, else None)."""

    @staticmethod
    def forward(ctx: Any, gi: Tensor, h0: Tensor, c0: Tensor | None, w_hh: Tensor, b_hh: Tensor, mask: Tensor | None,
                cell: str, reverse: bool, low: torch.dtype | None, tap: "Steps | None" = None,
                record: "list[Tensor | None] | None" = None) -> tuple[Tensor, Tensor, Tensor | None]:
        batch, steps, _ = gi.shape
        H = h0.size(1)  # noqa: N806 (the equations' name)
        acc = torch.promote_types(gi.dtype, torch.float32)  # states and sums: float32 (float64 in gradcheck)
        with torch.autocast(gi.device.type, enabled=False):
            w = w_hh.to(low or acc)  # the recurrent matrix, cast once
            h = h0.to(acc)
            c = c0.to(acc) if c0 is not None else None
            outputs = gi.new_empty(batch, steps, H, dtype=acc)
            h_prev = gi.new_empty(steps, batch, H, dtype=acc)  # h_{t-1} of each step
            acts = gi.new_empty(steps, batch, ACTS[cell] * H, dtype=acc)  # what the backward loop reads
            for t in (range(steps - 1, -1, -1) if reverse else range(steps)):
                h_prev[t] = h
                gh = (h.to(w.dtype) @ w.t()).to(acc) + b_hh  # (batch, gates*H)
                a, x = gi[:, t].to(acc), acts[t]
                if cell == "gru":  # x = [r, z, n, W_hn h + b_hn]
                    torch.sigmoid(a[:, :2 * H] + gh[:, :2 * H], out=x[:, :2 * H])
                    x[:, 3 * H:] = gh[:, 2 * H:]
                    torch.tanh(a[:, 2 * H:] + x[:, :H] * x[:, 3 * H:], out=x[:, 2 * H:3 * H])
                    n = x[:, 2 * H:3 * H]
                    h_new = n + x[:, H:2 * H] * (h - n)
                elif cell == "lstm":  # x = [i, f, g, o, c_{t-1}, tanh c_t]
                    s = a + gh
                    torch.sigmoid(s[:, :2 * H], out=x[:, :2 * H])
                    torch.tanh(s[:, 2 * H:3 * H], out=x[:, 2 * H:3 * H])
                    torch.sigmoid(s[:, 3 * H:], out=x[:, 3 * H:4 * H])
                    x[:, 4 * H:5 * H] = c
                    c_new = x[:, H:2 * H] * c + x[:, :H] * x[:, 2 * H:3 * H]
                    torch.tanh(c_new, out=x[:, 5 * H:])
                    h_new = x[:, 3 * H:4 * H] * x[:, 5 * H:]
                    c = c_new if mask is None else torch.where(mask[:, t, None], c_new, c)
                else:  # x = h_t
                    h_new = torch.tanh(a + gh, out=x)
                if mask is None:
                    h = outputs[:, t] = h_new
                else:  # padded steps keep the state and output zeros
                    real = mask[:, t, None]
                    h = torch.where(real, h_new, h)
                    outputs[:, t] = h_new * real
        ctx.save_for_backward(w, h_prev, acts, mask)
        ctx.cell, ctx.reverse, ctx.gi_dtype, ctx.w_dtype, ctx.tap = cell, reverse, gi.dtype, w_hh.dtype, tap
        ctx.record = record
        ctx.b_dtype = b_hh.dtype
        return outputs, h, c

    @staticmethod
    def backward(ctx: Any, d_out: Tensor, d_h: Tensor, d_c: Tensor | None) -> tuple[Tensor | None, ...]:
        w, h_prev, acts, mask = ctx.saved_tensors
        cell = ctx.cell
        steps, batch, H = h_prev.shape  # noqa: N806
        acc = h_prev.dtype
        d_out = d_out.to(acc)
        dh = d_h.to(acc) if d_h is not None else h_prev.new_zeros(batch, H)
        dc = (d_c.to(acc) if d_c is not None else h_prev.new_zeros(batch, H)) if cell == "lstm" else None
        d_gh = h_prev.new_empty(steps, batch, GATES[cell] * H)  # dL/d(recurrent products); = d(input products)
        d_n = h_prev.new_empty(steps, batch, H) if cell == "gru" else None  # GRU: n's input product differs
        for t in (range(steps) if ctx.reverse else range(steps - 1, -1, -1)):  # the forward loop, backwards
            real = None if mask is None else mask[:, t, None]
            dh_t = dh + d_out[:, t]  # from step t+1 and from the output at t (zero at padding)
            if ctx.record is not None:
                ctx.record[t] = dh_t  # (batch, H): dL/dh_t, the total derivative
            x, d = acts[t], d_gh[t]
            if cell == "gru":
                r, z, n, ghn = x[:, :H], x[:, H:2 * H], x[:, 2 * H:3 * H], x[:, 3 * H:]
                dn = torch.mul(dh_t * (1 - z), 1 - n * n, out=d_n[t])  # through n's tanh
                torch.mul(dn * ghn, r * (1 - r), out=d[:, :H])
                torch.mul(dh_t * (h_prev[t] - n), z * (1 - z), out=d[:, H:2 * H])
                torch.mul(dn, r, out=d[:, 2 * H:])
                direct = dh_t * z  # h_t = ... + z * h_{t-1}
            elif cell == "lstm":
                i, f, g, o, c_prev, tanh_c = (x[:, k * H:(k + 1) * H] for k in range(6))
                dc_t = dc + dh_t * o * (1 - tanh_c * tanh_c)
                torch.mul(dc_t * g, i * (1 - i), out=d[:, :H])
                torch.mul(dc_t * c_prev, f * (1 - f), out=d[:, H:2 * H])
                torch.mul(dc_t * i, 1 - g * g, out=d[:, 2 * H:3 * H])
                torch.mul(dh_t * tanh_c, o * (1 - o), out=d[:, 3 * H:])
                dc = dc_t * f if real is None else torch.where(real, dc_t * f, dc)
                direct = None
            else:
                torch.mul(dh_t, 1 - x * x, out=d)
                direct = None
            if real is not None:  # a padded step changed nothing: no gradient to its gates
                d.mul_(real)
                if d_n is not None:
                    d_n[t].mul_(real)
            back = (d.to(w.dtype) @ w).to(acc)  # dL/dh_{t-1} through W_hh
            if direct is not None:
                back = back + direct
            dh = back if real is None else torch.where(real, back, dh)  # a padded step passed the state through
        d_gi = d_gh if d_n is None else torch.cat([d_gh[..., :2 * H], d_n], dim=-1)  # (steps, batch, gates*H)
        d_gi = d_gi.transpose(0, 1).to(ctx.gi_dtype)  # (batch, steps, gates*H)
        # the shared weights' gradient: every step's outer product summed in one product
        flat, h_flat = d_gh.reshape(steps * batch, -1), h_prev.reshape(steps * batch, H)
        d_b = flat.sum(dim=0).to(ctx.b_dtype)
        if ctx.tap is not None:  # the tap sums them with the other calls' (see ExplicitRNN.unrolled)
            ctx.tap.leave(flat, h_flat)
            return d_gi, dh, dc, None, d_b, None, None, None, None, None, None
        d_w = (flat.to(w.dtype).t() @ h_flat.to(w.dtype)).to(ctx.w_dtype)
        return d_gi, dh, dc, d_w, d_b, None, None, None, None, None, None


class Steps:
    """What the steps of one unrolled loop leave for their shared matrix's gradient."""

    def __init__(self) -> None:
        self.parts: list[tuple[Tensor, Tensor]] = []

    def leave(self, d: Tensor, h: Tensor) -> None:
        """d (rows, gates*hidden) the pre-activations' gradient, h (rows, .) what the matrix
        multiplied: h_{t-1} for W_hh, the step's input x_t for W_ih."""
        self.parts.append((d, h))


class StepInput(torch.autograd.Function):
    """``StepInput.apply(x, w, tap)`` is one step's input product ``x w^T``, x (batch, 1, input),
    w (gates*hidden, input) from the loop's :class:`Tap`: its backward returns x's gradient and
    leaves (d_t, x_t) with the tap instead of a gradient for w."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, w: Tensor, tap: Steps) -> Tensor:
        ctx.save_for_backward(x, w)
        ctx.tap = tap
        return x.to(w.dtype) @ w.t()  # (batch, 1, gates*hidden)

    @staticmethod
    def backward(ctx: Any, d: Tensor) -> tuple[Tensor, None, None]:
        x, w = ctx.saved_tensors
        ctx.tap.leave(d.reshape(-1, d.size(-1)), x.reshape(-1, x.size(-1)))
        return (d.to(w.dtype) @ w).to(x.dtype), None, None


class Tap(torch.autograd.Function):
    """``Tap.apply(w, steps, low)`` is ``w`` (cast to ``low``) for the steps of one unrolled loop;
    their backward passes leave (d_t, h_{t-1}) or (d_t, x_t) in ``steps``, and this backward,
    which autograd runs after all of theirs, turns them into w's gradient with one product."""

    @staticmethod
    def forward(ctx: Any, w: Tensor, tap: Steps, low: torch.dtype | None) -> Tensor:
        ctx.tap, ctx.dtype = tap, w.dtype
        return w.to(low) if low else w.clone()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, None, None]:
        parts, ctx.tap.parts = ctx.tap.parts, []
        if not parts:
            return grad.to(ctx.dtype), None, None
        d, h = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])  # (steps*batch, .)
        return grad.to(ctx.dtype) + (d.to(grad.dtype).t() @ h.to(grad.dtype)).to(ctx.dtype), None, None


class ExplicitRNN(nn.Module):
    """A batch-first multi-layer (bi)directional tanh RNN, GRU or LSTM run by :class:`Recurrence`:
    ``forward(x, hx=None, mask=None)`` returns what ``nn.RNN``/``nn.GRU``/``nn.LSTM`` return."""

    def __init__(self, rnn: nn.RNNBase):
        """Take ``rnn``'s configuration and its parameters (the same tensors, the same names)."""
        super().__init__()
        self.mode, self.cell = rnn.mode, {"RNN_TANH": "rnn", "GRU": "gru", "LSTM": "lstm"}[rnn.mode]
        self.input_size, self.hidden_size, self.num_layers = rnn.input_size, rnn.hidden_size, rnn.num_layers
        self.dropout, self.bidirectional, self.bias = rnn.dropout, rnn.bidirectional, rnn.bias
        if not rnn.bias:
            raise ValueError("the explicit recurrence has biases, as every recurrent layer of seq2seq does")
        self._taps: dict[str, tuple[Tensor, Steps]] | None = None  # inside unrolled(): per weight matrix
        self._record: list[Tensor | None] | None = None  # inside state_gradients(): the top forward layer's dL/dh_t
        for name, param in rnn.named_parameters():
            self.register_parameter(name, param)

    def forward(self, x: Tensor, hx: Tensor | tuple[Tensor, Tensor] | None = None,
                mask: Tensor | None = None) -> tuple[Tensor, Tensor | tuple[Tensor, Tensor]]:
        """x (batch, T, input), hx (layers*dirs, batch, hidden) or (h, c), mask (batch, T) bool."""
        batch, steps, _ = x.shape
        dirs = 2 if self.bidirectional else 1
        h0, c0 = hx if isinstance(hx, tuple) else (hx, None)
        if h0 is None:
            h0 = x.new_zeros(self.num_layers * dirs, batch, self.hidden_size, dtype=torch.float32)
        if self.cell == "lstm" and c0 is None:
            c0 = torch.zeros_like(h0, dtype=torch.float32)
        low = _low_precision(x.device)
        finals_h, finals_c, layer_in = [], [], x
        for layer in range(self.num_layers):
            outs = []
            for d in range(dirs):
                k, suffix = layer * dirs + d, f"_l{layer}" + ("_reverse" if d else "")
                w_ih, ih_tap = self._shared_matrix("weight_ih" + suffix, low)
                b_ih = getattr(self, "bias_ih" + suffix)
                if ih_tap is None:
                    gi = F.linear(layer_in, w_ih, b_ih)  # (batch, T, gates*hidden), all steps at once
                else:  # one step of an unrolled loop
                    gi = StepInput.apply(layer_in, w_ih, ih_tap) + b_ih
                w_hh, tap = self._shared_matrix("weight_hh" + suffix, low)
                record = None
                if self._record is not None and layer == self.num_layers - 1 and d == 0:
                    record = self._record
                    record[:] = [None] * steps
                out, h, c = Recurrence.apply(gi, h0[k], None if c0 is None else c0[k], w_hh,
                                             getattr(self, "bias_hh" + suffix), mask, self.cell, d == 1, low, tap,
                                             record)
                outs.append(out)
                finals_h.append(h)
                finals_c.append(c)
            layer_in = torch.cat(outs, dim=-1) if dirs == 2 else outs[0]  # (batch, T, dirs*hidden)
            if layer < self.num_layers - 1 and self.dropout and self.training:
                layer_in = F.dropout(layer_in, self.dropout, True)
        h_n = torch.stack(finals_h)  # (layers*dirs, batch, hidden)
        return layer_in, ((h_n, torch.stack(finals_c)) if self.cell == "lstm" else h_n)

    @contextmanager
    def unrolled(self) -> Iterator[None]:
        """Calls inside share one :class:`Tap` per weight matrix (a step-by-step loop)."""
        self._taps = {}
        try:
            yield
        finally:
            self._taps = None

    @contextmanager
    def state_gradients(self) -> Iterator[list[Tensor | None]]:
        """A list that the next backward pass fills with dL/dh_t (batch, hidden), one per step,
        of the top layer's forward direction."""
        self._record = []
        try:
            yield self._record
        finally:
            self._record = None

    def _shared_matrix(self, name: str, low: torch.dtype | None) -> tuple[Tensor, Steps | None]:
        """The weight ``name`` (weight_hh_l0, weight_ih_l0, ...), through the loop's tap where there is one."""
        w = getattr(self, name)
        if self._taps is None or not (torch.is_grad_enabled() and w.requires_grad):
            return w, None
        if name not in self._taps:
            steps = Steps()
            self._taps[name] = (Tap.apply(w, steps, low), steps)
        return self._taps[name]


def _low_precision(device: torch.device) -> torch.dtype | None:
    """The dtype autocast asks for on ``device``, None when it is off."""
    return torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type) else None
