"""The one recurrent decoder shared by translation and captioning.

It reads a :class:`~seq2seq.models.memory.Memory` and nothing task-specific. The ``attention``
option picks the architecture of one of three papers:

- ``none`` (Cho et al., 2014): the memory summary ``c`` enters every RNN step and the output
  layer: ``s_t = f(s_{t-1}, y_{t-1}, c)``, ``p(y_t) = g(s_t, y_{t-1}, c)``.
- ``bahdanau`` (Bahdanau et al., 2015): the *previous* state queries an additive attention,
  ``c_t = attend(s_{t-1})``; ``s_t = f(s_{t-1}, y_{t-1}, c_t)``; ``p(y_t) = g(s_t, y_{t-1}, c_t)``.
- ``luong_dot`` / ``luong_general`` (Luong et al., 2015): the *current* state queries,
  ``h_t = f(h_{t-1}, y_{t-1} [, h~_{t-1}])``, ``c_t = attend(h_t)``, ``h~_t = tanh(W_c [c_t; h_t])``,
  ``p(y_t) = softmax(W_s h~_t)``; input feeding passes ``h~_{t-1}`` to the next step.

The decoder's initial state (``init``) comes from the encoder's final state of every layer
(:attr:`Memory.layers`, and :attr:`Memory.cells` for an LSTM encoder), layer to layer when the
two have as many layers, else from the top layer (an image encoder: its summary, the grid's mean):

==========  ==========================================  ==========================================
``init``    h0 of decoder layer l                        c0 of decoder layer l (LSTM decoders)
==========  ==========================================  ==========================================
``zero``    0                                           0
``last``    the encoder's h of layer l (sizes equal)     the encoder's c of layer l (LSTM), else 0
``bridge``  ``tanh(W_l h_enc,l + b_l)``                  ``tanh(V_l c_enc,l + d_l)`` (c_enc: h_enc
                                                         for a GRU or image encoder, as Show,
                                                         Attend and Tell's f_init,c)
==========  ==========================================  ==========================================

``g`` is a maxout deep output layer (pool size 2) as in Cho and Bahdanau. ``context_gate``
scales the context by ``sigmoid(w . query + b)`` (the gating scalar beta of Show, Attend and
Tell, which with ``bahdanau`` order and an image memory is that paper's decoder). Without input
feeding, Luong and Cho decoders run the RNN over the whole target at once under teacher
forcing; Bahdanau, input feeding and scheduled sampling go step by step.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from seq2seq.models.attention import make_attention
from seq2seq.models.memory import Memory
from seq2seq.models.recurrence import ExplicitRNN
from seq2seq.models.rnn import Dropout, Linear, RNNState, make_rnn, select_state, top_hidden
from seq2seq.tokenizers import PAD


@dataclass
class DecoderState:
    hidden: RNNState  # (layers, batch, hidden), LSTM: (h, c)
    feed: Tensor | None  # (batch, hidden) previous attentional vector (input feeding only)
    keys: Tensor | None  # (batch, mem_len, key_dim) attention keys, computed once per memory

    def follow_beams(self, parents: Tensor, kept: Tensor | None) -> "DecoderState":
        """Beam search's reorder: the RNN state (and input feed) of each survivor is its parent
        row's; the keys, one row per input for all of its hypotheses, only lose the inputs that
        left the search (``kept``: the inputs still searched; None when none left)."""
        keys = self.keys if self.keys is None or kept is None else self.keys.index_select(0, kept)
        return DecoderState(select_state(self.hidden, parents),
                            None if self.feed is None else self.feed.index_select(0, parents), keys)


class RNNDecoder(nn.Module):
    def __init__(self, vocab_size: int, emb_dim: int, hidden: int, memory_dim: int, summary_dim: int,
                 cell: str = "gru", layers: int = 1, dropout: float = 0.0, attention: str = "luong_general",
                 attention_dim: int = 256, input_feeding: bool = False, init: str = "bridge",
                 readout_dim: int = 256, tied_embeddings: bool = False, context_gate: bool = False,
                 recurrent_gain: float | None = None, forget_bias: float | None = None, enc_layers: int = 1,
                 attention_scale: bool = False, attention_fp32: bool = False, rnn_impl: str = "torch",
                 chrono_tmax: int | None = None):
        super().__init__()
        if input_feeding and not attention.startswith("luong"):
            raise ValueError("input feeding applies to Luong attention only")
        if context_gate and attention == "none":
            raise ValueError("the context gate scales an attention context; it needs attention")
        if init not in ("zero", "last", "bridge"):
            raise ValueError(f"unknown decoder init {init!r}; choose zero, last or bridge")
        if init == "last" and (summary_dim != hidden or enc_layers not in (layers, 0)):
            raise ValueError(f"init=last hands layer l's final state to decoder layer l: it needs the encoder's "
                             f"{enc_layers} layers of size {summary_dim} (directions joined) to match the decoder's "
                             f"{layers} of size {hidden}; use init=bridge")
        self.kind, self.init, self.cell, self.layers, self.hidden = attention, init, cell, layers, hidden
        self.layer_to_layer = enc_layers == layers  # else every decoder layer starts from the top one
        self.input_feeding = input_feeding
        self.embed = nn.Embedding(vocab_size, emb_dim, padding_idx=PAD)
        self.dropout = Dropout(dropout)
        self.attention = make_attention(attention, hidden, memory_dim, attention_dim, attention_scale, attention_fp32)
        self.gate = Linear(hidden, 1) if context_gate else None  # Show, Attend and Tell's beta
        # the context that enters each RNN step: the summary (Cho) or attention (Bahdanau)
        ctx_dim = {"none": summary_dim, "bahdanau": memory_dim}.get(attention, 0)
        self.rnn = make_rnn(cell, emb_dim + ctx_dim + (hidden if input_feeding else 0), hidden, layers, dropout,
                            recurrent_gain=recurrent_gain, forget_bias=forget_bias, impl=rnn_impl,
                            chrono_tmax=chrono_tmax)
        bridges = init == "bridge"  # one projection per layer for h, and for c (LSTM)
        self.bridge = nn.ModuleList(Linear(summary_dim, hidden) for _ in range(layers)) if bridges else None
        self.cell_bridge = nn.ModuleList(Linear(summary_dim, hidden) for _ in range(layers)) \
            if bridges and cell == "lstm" else None
        self.register_load_state_dict_pre_hook(_from_one_bridge)
        if self.luong:
            self.combine = Linear(memory_dim + hidden, hidden, bias=False)  # W_c
            pre_dim = hidden
        else:
            self.readout = Linear(hidden + emb_dim + ctx_dim, 2 * readout_dim)  # maxout, pool 2
            pre_dim = readout_dim
        self.tie_proj = Linear(pre_dim, emb_dim, bias=False) if tied_embeddings and pre_dim != emb_dim else None
        self.out = Linear(emb_dim if tied_embeddings else pre_dim, vocab_size)
        if tied_embeddings:  # N(0, 1) embeddings as output weights would start logits at sd ~sqrt(emb_dim)
            with torch.no_grad():
                self.embed.weight.normal_(std=emb_dim ** -0.5)[PAD].zero_()  # logits start at sd <= 1
            self.out.weight = self.embed.weight

    @property
    def luong(self) -> bool:
        return self.kind.startswith("luong")

    @property
    def parallel(self) -> bool:
        """Whether teacher-forced training can run the RNN over all steps at once."""
        return self.kind != "bahdanau" and not self.input_feeding

    def init_state(self, memory: Memory) -> DecoderState:
        """The state before the first step: h0 (and c0) per layer as the module docstring's table says."""
        batch = memory.states.size(0)
        zeros = memory.summary.new_zeros(self.layers, batch, self.hidden)
        h, c = zeros, zeros
        if self.init != "zero":
            h_enc, c_enc = self._encoder_states(memory)  # (layers, batch, summary_dim) each; c_enc may be None
            if self.bridge is None:  # last
                h, c = h_enc, zeros if c_enc is None else c_enc
            else:
                h = torch.stack([torch.tanh(b(x)) for b, x in zip(self.bridge, h_enc)])  # (layers, batch, hidden)
                if self.cell_bridge is not None:
                    c_src = h_enc if c_enc is None else c_enc
                    c = torch.stack([torch.tanh(b(x)) for b, x in zip(self.cell_bridge, c_src)])
        hidden: RNNState = (h.contiguous(), c.contiguous()) if self.cell == "lstm" else h.contiguous()
        feed = memory.summary.new_zeros(batch, self.hidden) if self.input_feeding else None
        keys = self.attention.keys(memory.states) if self.attention is not None else None
        return DecoderState(hidden, feed, keys)

    def _encoder_states(self, memory: Memory) -> tuple[Tensor, Tensor | None]:
        """The encoder's final h (and c) each decoder layer starts from, (layers, batch, summary_dim):
        layer to layer when the encoder has as many, else the top layer's (or the summary) for all."""
        if memory.layers is not None and self.layer_to_layer:
            return memory.layers, memory.cells
        top_h = memory.summary.unsqueeze(0).expand(self.layers, -1, -1)
        top_c = None if memory.cells is None else memory.cells[-1:].expand(self.layers, -1, -1)
        return top_h, top_c

    def attend(self, query: Tensor, keys: Tensor, memory: Memory) -> tuple[Tensor, Tensor]:
        """Query (rows, steps, hidden) -> context (rows, steps, mem_dim), scaled by the gate
        sigma(w.query + b) if any, and weights (rows, steps, mem_len).

        The rows may be a multiple of the memory's: consecutive groups of rows (the hypotheses
        of one input in beam search) then query one memory row together, which is not copied.
        """
        rows, steps = query.shape[:2]
        if rows % keys.size(0):
            raise ValueError(f"{rows} query rows cannot share a memory of {keys.size(0)} rows")
        grouped = query.reshape(keys.size(0), -1, query.size(-1))  # (batch, rows/batch * steps, hidden)
        ctx, weights = self.attention(grouped, keys, memory.states, memory.mask)
        ctx, weights = ctx.view(rows, steps, -1), weights.view(rows, steps, -1)
        if self.gate is not None:
            ctx = torch.sigmoid(self.gate(query)) * ctx
        return ctx, weights

    def _pre_output(self, out: Tensor, emb: Tensor, ctx: Tensor | None, memory: Memory,
                    keys: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """RNN outputs (batch, steps, hidden) -> pre-output (batch, steps, pre_dim): Luong's h~ or
        the maxout readout; and Luong's attention (batch, steps, mem_len)."""
        if self.luong:
            ctx, weights = self.attend(out, keys, memory)  # (batch, steps, mem_dim)
            return torch.tanh(self.combine(torch.cat([ctx, out], dim=-1))), weights  # h~: (batch, steps, hidden)
        t = self.readout(torch.cat([out, emb, ctx], dim=-1))  # (batch, steps, 2*readout)
        return t.view(*t.shape[:-1], -1, 2).max(dim=-1).values, None  # maxout: (batch, steps, readout)

    def _logits(self, pre: Tensor) -> Tensor:
        """Pre-output (batch, steps, pre_dim) -> logits (batch, steps, vocab)."""
        x = self.dropout(pre)
        if self.tie_proj is not None:
            x = self.tie_proj(x)
        return self.out(x)

    def _embed(self, tokens: Tensor) -> Tensor:
        """Token ids (batch, steps) -> embeddings with dropout (batch, steps, emb)."""
        return self.dropout(self.embed(tokens))

    def _recur(self, emb: Tensor, state: DecoderState, memory: Memory
               ) -> tuple[Tensor, RNNState, Tensor | None, Tensor | None]:
        """One recurrence step from the embedded previous token emb (batch, 1, emb): the RNN output
        (batch, 1, hidden), its new state, and Cho's or Bahdanau's context (batch, 1, ctx_dim) and
        Bahdanau's attention (batch, 1, mem_len), where they exist."""
        parts, ctx, weights = [emb], None, None
        if self.kind == "none":
            rows = emb.size(0) // memory.summary.size(0)  # hypotheses per input in beam search
            ctx = memory.summary.repeat_interleave(rows, dim=0).unsqueeze(1)  # (batch, 1, summary_dim)
            parts.append(ctx)
        elif self.kind == "bahdanau":  # query with the previous state s_{t-1}
            query = top_hidden(state.hidden).unsqueeze(1)  # (batch, 1, hidden)
            ctx, weights = self.attend(query, state.keys, memory)
            parts.append(ctx)
        if self.input_feeding:
            parts.append(state.feed.unsqueeze(1))
        out, hidden = self.rnn(torch.cat(parts, dim=-1), state.hidden)  # (batch, 1, hidden)
        return out, hidden, ctx, weights

    def _advance(self, emb: Tensor, state: DecoderState, memory: Memory) -> tuple[Tensor, DecoderState, Tensor | None]:
        """One step from the embedded previous token emb (batch, 1, emb) to the pre-output
        (batch, 1, pre_dim), new state and attention (batch, 1, mem_len)."""
        out, hidden, ctx, weights = self._recur(emb, state, memory)
        pre, luong_weights = self._pre_output(out, emb, ctx, memory, state.keys)
        feed = pre.squeeze(1) if self.input_feeding else None
        return pre, DecoderState(hidden, feed, state.keys), weights if luong_weights is None else luong_weights

    def step(self, prev: Tensor, state: DecoderState, memory: Memory) -> tuple[Tensor, DecoderState, Tensor | None]:
        """One step: prev (batch,) ids -> logits (batch, vocab), new state, attention (batch, mem_len).

        ``batch`` may be a multiple of the memory's batch: each memory row then serves that many
        consecutive rows (an input's beam), as ``state.keys`` does."""
        pre, state, weights = self._advance(self._embed(prev.unsqueeze(1)), state, memory)
        return self._logits(pre).squeeze(1), state, None if weights is None else weights.squeeze(1)

    def forward(self, tgt_in: Tensor, memory: Memory, teacher_forcing: float = 1.0) -> tuple[Tensor, Tensor | None]:
        """Teacher-forced decoding: tgt_in (batch, tgt_len) -> logits (batch, tgt_len, vocab), attention.

        With ``teacher_forcing < 1`` each sentence feeds, at each step, its own sampled
        prediction instead of the reference with probability ``1 - teacher_forcing``.
        """
        state = self.init_state(memory)
        if teacher_forcing < 1.0:
            return self._sampled(tgt_in, state, memory, teacher_forcing)
        emb = self._embed(tgt_in)  # (batch, tgt_len, emb)
        if self.parallel:
            ctx = None
            rnn_in = emb
            if self.kind == "none":
                ctx = memory.summary.unsqueeze(1).expand(-1, tgt_in.size(1), -1)  # (batch, tgt_len, summary)
                rnn_in = torch.cat([emb, ctx], dim=-1)
            out, _ = self.rnn(rnn_in, state.hidden)  # (batch, tgt_len, hidden)
            pre, weights = self._pre_output(out, emb, ctx, memory, state.keys)
            return self._logits(pre), weights
        # step by step, but what does not feed back runs once over all steps: the embeddings, the
        # output layer and (Bahdanau) the readout; with input feeding, h~ is part of the recurrence
        outs, ctxs, steps_weights = [], [], []  # per step (batch, 1, .)
        with self.rnn.unrolled() if isinstance(self.rnn, ExplicitRNN) else nullcontext():  # one W_hh gradient
            self._steps(emb, state, memory, outs, ctxs, steps_weights)
        weights = torch.cat(steps_weights, dim=1)  # (batch, tgt_len, mem_len)
        if self.input_feeding:
            return self._logits(torch.cat(outs, dim=1)), weights
        pre, _ = self._pre_output(torch.cat(outs, dim=1), emb, torch.cat(ctxs, dim=1), memory, None)
        return self._logits(pre), weights

    def _steps(self, emb: Tensor, state: DecoderState, memory: Memory, outs: list[Tensor], ctxs: list[Tensor],
               steps_weights: list[Tensor]) -> None:
        """The teacher-forced steps of :meth:`forward`, appending each step's output, context and weights."""
        for emb_t in emb.unbind(1):  # one backward node for all steps (slices would make one each)
            emb_t = emb_t.unsqueeze(1)  # (batch, 1, emb)
            if self.input_feeding:
                pre, state, weights = self._advance(emb_t, state, memory)
                outs.append(pre)
            else:
                out, hidden, ctx, weights = self._recur(emb_t, state, memory)
                state = DecoderState(hidden, None, state.keys)
                outs.append(out)
                ctxs.append(ctx)
            steps_weights.append(weights)

    def _sampled(self, tgt_in: Tensor, state: DecoderState, memory: Memory,
                 teacher_forcing: float) -> tuple[Tensor, Tensor | None]:
        """Scheduled sampling: at each step a sentence feeds its reference token with probability
        ``teacher_forcing``, otherwise a token sampled from its previous prediction."""
        logits, steps_weights = [], []  # per step (batch, 1, .)
        prev = tgt_in[:, 0]
        for t in range(tgt_in.size(1)):
            if t > 0:
                prev = tgt_in[:, t]
                probs = torch.softmax(logits[-1].squeeze(1).detach().float(), dim=-1)
                sampled = torch.multinomial(probs, 1).squeeze(1)
                use_model = torch.rand(prev.shape, device=prev.device) >= teacher_forcing
                prev = torch.where(use_model & (prev != PAD), sampled, prev)
            pre, state, weights = self._advance(self._embed(prev.unsqueeze(1)), state, memory)
            logits.append(self._logits(pre))
            steps_weights.append(weights)
        weights = None if steps_weights[0] is None else torch.cat(steps_weights, dim=1)
        return torch.cat(logits, dim=1), weights


def _from_one_bridge(module: nn.Module, state_dict: dict, prefix: str, *args) -> None:
    """Checkpoints from before the per-layer handover had one ``bridge`` for every layer's h and
    started c at 0: load them as that (its weights in every layer, a zero cell bridge: tanh(0) = 0)."""
    old = [prefix + "bridge.weight", prefix + "bridge.bias"]
    if module.bridge is None or old[0] not in state_dict:
        return
    if module.layers > 1 and module.layer_to_layer:  # it started every layer from the top encoder layer
        raise ValueError(f"a {module.layers}-layer decoder from before the per-layer handover (one bridge from the "
                         f"top encoder layer) cannot load as this version's (layer l from encoder layer l)")
    weight, bias = (state_dict.pop(k) for k in old)
    for i in range(module.layers):
        state_dict[f"{prefix}bridge.{i}.weight"], state_dict[f"{prefix}bridge.{i}.bias"] = weight, bias
        if module.cell_bridge is not None:
            state_dict[f"{prefix}cell_bridge.{i}.weight"] = torch.zeros_like(weight)
            state_dict[f"{prefix}cell_bridge.{i}.bias"] = torch.zeros_like(bias)
