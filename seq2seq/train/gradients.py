"""Gradient flow: how much of the loss gradient reaches each source position and each layer.

Backpropagation through time multiplies one Jacobian per step, so the gradient of the loss
with respect to an early hidden state of a tanh RNN can vanish (or explode) with its distance
from the end of the sentence; gates and attention are the cures. :func:`gradient_flow`
measures this on one batch. PyTorch's fused recurrent layers hide their hidden states from
autograd, so there the probe reruns the text encoder one step at a time with the same
weights: ``dL/dh_t`` is then the total derivative, through every later step and the
attention. The explicit recurrence (``model.rnn_impl=explicit``) computes exactly that
``dL/dh_t`` in its own backward loop, and the probe reads it from there. It
reports the norm for the forward direction of the top encoder layer (the one whose gradient
travels back from the end of the sentence) by distance from the end, averaged in source
length buckets, and the gradient norm of every layer's parameters.

The probe runs in evaluation mode and in fp32: no dropout, no random numbers drawn, no
gradient left behind, so turning it on does not change training.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from seq2seq.models.encoders import TextEncoder
from seq2seq.models.memory import Memory
from seq2seq.models.model import Output, Regressor, Seq2Seq
from seq2seq.models.recurrence import ExplicitRNN

LENGTH_BUCKETS = ((1, 9), (10, 19), (20, 39), (40, 79), (80, 159), (160, 10**9))  # source tokens
_CELLS = {"RNN_TANH": torch.rnn_tanh_cell, "GRU": torch.gru_cell, "LSTM": torch.lstm_cell}  # by rnn.mode


@dataclass
class GradientFlow:
    """One probe's measurements."""

    by_distance: dict[str, list[float]] = field(default_factory=dict)  # bucket -> mean norm at distance 0, 1, ...
    sentences: dict[str, int] = field(default_factory=dict)  # bucket -> sentences averaged
    layers: dict[str, float] = field(default_factory=dict)  # layer -> parameter gradient norm
    first_to_last: float = float("nan")  # mean over sentences of |dL/dh_first| / |dL/dh_last|
    seconds: float = 0.0  # what the probe cost

    def scalars(self) -> dict[str, float]:
        out = {f"gradient_flow/layer/{name}": norm for name, norm in self.layers.items()}
        for bucket, norms in self.by_distance.items():
            out[f"gradient_flow/{bucket}/last_token"] = norms[0]
            out[f"gradient_flow/{bucket}/first_token"] = norms[-1]
            out[f"gradient_flow/{bucket}/sentences"] = self.sentences[bucket]
        if self.by_distance:
            out["gradient_flow/first_to_last"] = self.first_to_last
        out["gradient_flow/seconds"] = self.seconds
        return out


def unrolled_encoder(encoder: TextEncoder, src: Tensor, src_lens: Tensor) -> tuple[Memory, list[Tensor]]:
    """The encoder's memory computed one step at a time with its own weights (evaluation mode),
    and the forward direction's top-layer hidden states, one (batch, hidden) tensor per position,
    each a node of the graph whose gradient is the total ``dL/dh_t``."""
    rnn = encoder.rnn
    cell = _CELLS[rnn.mode]
    lstm = rnn.mode == "LSTM"
    batch, length = src.shape[:2]
    mask = encoder.mask(src, src_lens)  # (batch, src_len)
    valid = mask.unsqueeze(-1)
    x = encoder.embed(src)  # (batch, src_len, emb_dim)
    final_h, final_c, probed = [], [], []  # per layer: (batch, hidden * directions)
    for layer in range(rnn.num_layers):
        outputs, hs, cs = [], [], []
        for direction in range(encoder.directions):
            suffix = f"_l{layer}" + ("_reverse" if direction else "")
            names = ["weight_ih", "weight_hh"] + (["bias_ih", "bias_hh"] if rnn.bias else [])
            weights = [getattr(rnn, name + suffix) for name in names]
            h = x.new_zeros(batch, rnn.hidden_size)
            c = torch.zeros_like(h)
            states: list[Tensor] = [h] * length
            for t in (range(length) if direction == 0 else reversed(range(length))):
                if lstm:
                    h_new, c_new = cell(x[:, t], (h, c), *weights)
                    c = torch.where(valid[:, t], c_new, c)
                else:
                    h_new = cell(x[:, t], h, *weights)
                h = torch.where(valid[:, t], h_new, h)  # padding: hold the state (as packing does)
                states[t] = h
            outputs.append(torch.stack(states, dim=1) * valid)  # (batch, src_len, hidden), zero padding
            hs.append(h)
            cs.append(c)
            if direction == 0 and layer == rnn.num_layers - 1:
                probed = states
        x = torch.cat(outputs, dim=-1)  # (batch, src_len, hidden * directions)
        final_h.append(torch.cat(hs, dim=-1))
        final_c.append(torch.cat(cs, dim=-1))
    layers = torch.stack(final_h)  # (layers, batch, output_dim), as the encoder hands them over
    return Memory(x, mask, layers[-1], layers, torch.stack(final_c) if lstm else None), probed


def layer_name(parameter: str) -> str:
    """'encoder.rnn.weight_hh_l1_reverse' -> 'encoder.rnn.l1_reverse'; 'decoder.out.bias' -> 'decoder.out'."""
    module, _, name = parameter.rpartition(".")
    match = re.search(r"_l(\d+(?:_reverse)?)$", name)
    return f"{module}.l{match.group(1)}" if match else module


def gradient_flow(model: Seq2Seq | Regressor, inputs: tuple[Tensor, ...], tgt_in: Tensor | None,
                  loss_fn: Callable[[Output | Tensor], Tensor]) -> GradientFlow:
    """Measure gradient flow on one batch; ``loss_fn`` is the training loss of the model's output."""
    start = time.monotonic()
    was_training = model.training
    model.eval()
    try:
        with torch.backends.cudnn.flags(enabled=False):  # cuDNN has no RNN backward in evaluation mode
            grads, named, probed = _probe_gradients(model, inputs, tgt_in, loss_fn)
    finally:
        model.train(was_training)
    flow = GradientFlow()
    squares: dict[str, float] = {}
    for (name, _), g in zip(named, grads[len(probed):]):
        if g is not None:
            key = layer_name(name)
            squares[key] = squares.get(key, 0.0) + float(g.float().pow(2).sum())
    flow.layers = {k: v ** 0.5 for k, v in squares.items()}
    if probed:
        norms = torch.stack([g.norm(dim=-1) for g in grads[:len(probed)]], dim=1)  # (batch, src_len)
        flow.by_distance, flow.sentences, flow.first_to_last = _by_distance(norms, inputs[1].to(norms.device))
    flow.seconds = time.monotonic() - start
    return flow


def _probe_gradients(model: Seq2Seq | Regressor, inputs: tuple[Tensor, ...], tgt_in: Tensor | None,
                     loss_fn: Callable[[Output | Tensor], Tensor]
                     ) -> tuple[tuple[Tensor | None, ...], list[tuple[str, nn.Parameter]], list[Tensor]]:
    """Gradients of the loss with respect to the probed hidden states, then every trainable parameter."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    encoder = model.encoder
    if isinstance(encoder, TextEncoder) and isinstance(encoder.rnn, ExplicitRNN):  # its backward has dL/dh_t
        with encoder.rnn.state_gradients() as states:
            loss = loss_fn(model.decode(model.encode(*inputs), tgt_in))
            grads = torch.autograd.grad(loss, [p for _, p in named], allow_unused=True)
        return (*states, *grads), named, states
    probed: list[Tensor] = []
    if isinstance(encoder, TextEncoder):
        memory, probed = unrolled_encoder(encoder, *inputs)
    else:
        memory = model.encode(*inputs)
    loss = loss_fn(model.decode(memory, tgt_in))
    return torch.autograd.grad(loss, probed + [p for _, p in named], allow_unused=True), named, probed


def _by_distance(norms: Tensor, lens: Tensor) -> tuple[dict[str, list[float]], dict[str, int], float]:
    """Per-position norms (batch, src_len) -> bucket -> mean norm by distance from the last token,
    the sentences in each bucket, and the mean ratio of the first token's norm to the last's."""
    rows = torch.arange(norms.size(0), device=norms.device)
    last = norms[rows, lens - 1]
    ratio = float((norms[:, 0] / last.clamp_min(1e-30)).mean())
    out, sentences = {}, {}
    for lo, hi in LENGTH_BUCKETS:
        chosen = ((lens >= lo) & (lens <= hi)).nonzero().squeeze(1)
        if len(chosen) == 0:
            continue
        longest = int(lens[chosen].max())
        sums, counts = torch.zeros(longest), torch.zeros(longest)
        for i in chosen.tolist():
            n = int(lens[i])
            sums[:n] += norms[i, :n].flip(0).cpu()  # distance 0 = the last token
            counts[:n] += 1
        label = f"len_{lo}-{hi}" if hi < 10**9 else f"len_{lo}+"
        out[label], sentences[label] = (sums / counts).tolist(), len(chosen)
    return out, sentences, ratio
