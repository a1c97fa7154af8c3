"""Attention over a memory: Bahdanau (additive) and Luong (dot, general) scores.

Keys are computed once per batch with :meth:`keys` and passed to every step; padding
positions get a score of -inf, so they never receive weight. Queries may hold one step
``(batch, 1, query_dim)`` or all steps at once ``(batch, tgt_len, query_dim)``.

``fp32`` computes keys and scores in float32 under bf16 autocast (bf16 rounds a score of 100
to 200 by 0.25 to 1 nat). While :attr:`Attention.largest_score` is not None (the trainer sets
it to 0 for a step it logs), every call raises it to the largest |score| at a real position:
a collapsing softmax shows as scores that keep growing.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from seq2seq.models.rnn import Linear


class Attention(nn.Module):
    def __init__(self, fp32: bool = False):
        super().__init__()
        self.fp32 = fp32
        self.largest_score: Tensor | None = None  # () while recording, see the module docstring

    def keys(self, states: Tensor) -> Tensor:
        """Precompute what the score needs of the memory: (batch, mem_len, key_dim), in the dtype
        the score computes in (float32 when ``fp32``, else autocast's), so no step casts them again."""
        keys = self._maybe_fp32(self.make_keys, states)
        kind = keys.device.type
        if not self.fp32 and torch.is_autocast_enabled(kind):
            keys = keys.to(torch.get_autocast_dtype(kind))
        return keys

    def make_keys(self, states: Tensor) -> Tensor:
        return states

    def score(self, query: Tensor, keys: Tensor) -> Tensor:
        """(batch, q_len, query_dim) x (batch, mem_len, key_dim) -> (batch, q_len, mem_len)."""
        raise NotImplementedError

    def _maybe_fp32(self, fn: Callable[..., Tensor], *tensors: Tensor) -> Tensor:
        """``fn(*tensors)``, in float32 with autocast off when ``fp32``."""
        if not self.fp32:
            return fn(*tensors)
        with torch.autocast(tensors[0].device.type, enabled=False):
            return fn(*(t.float() for t in tensors))

    def forward(self, query: Tensor, keys: Tensor, values: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """Context vectors (batch, q_len, mem_dim) and float32 weights (batch, q_len, mem_len)."""
        scores = self._maybe_fp32(self.score, query, keys)
        if self.largest_score is not None:
            real = scores.detach().abs().masked_fill(~mask.unsqueeze(1), 0.0)
            self.largest_score = torch.maximum(self.largest_score, real.amax().float())
        scores = scores.masked_fill(~mask.unsqueeze(1), float("-inf"))
        weights = torch.softmax(scores.float(), dim=-1)
        return torch.bmm(weights.to(values.dtype), values), weights


class BahdanauAttention(Attention):
    """Additive score ``v^T tanh(W q + U h)`` (Bahdanau et al., 2015)."""

    def __init__(self, query_dim: int, memory_dim: int, attention_dim: int, fp32: bool = False):
        super().__init__(fp32)
        self.key_proj = Linear(memory_dim, attention_dim, bias=False)  # U
        self.query_proj = Linear(query_dim, attention_dim, bias=False)  # W
        self.v = nn.Linear(attention_dim, 1, bias=False)  # per step over every memory vector: no padded copy

    def make_keys(self, states: Tensor) -> Tensor:
        return self.key_proj(states)  # (batch, mem_len, attention_dim)

    def score(self, query: Tensor, keys: Tensor) -> Tensor:
        q = self.query_proj(query).unsqueeze(2)  # (batch, q_len, 1, attention_dim)
        return self.v(torch.tanh(q + keys.unsqueeze(1))).squeeze(-1)  # (batch, q_len, mem_len)


class LuongAttention(Attention):
    """Multiplicative score: ``q . h`` (dot) or ``q . W h`` (general) (Luong et al., 2015), divided
    by ``sqrt(query_dim)`` with ``scale`` (Vaswani et al.'s scaled dot product: unit-variance
    scores for unit-variance vectors, where the unscaled ones grow with the size)."""

    def __init__(self, query_dim: int, memory_dim: int, kind: str = "general", scale: bool = False,
                 fp32: bool = False):
        super().__init__(fp32)
        if kind not in ("dot", "general"):
            raise ValueError(f"unknown Luong score {kind!r}; choose dot or general")
        if kind == "dot" and query_dim != memory_dim:
            raise ValueError(f"dot attention needs equal query and memory sizes, got {query_dim} and {memory_dim}")
        self.key_proj = Linear(memory_dim, query_dim, bias=False) if kind == "general" else None
        self.scale = query_dim ** -0.5 if scale else None

    def make_keys(self, states: Tensor) -> Tensor:
        return states if self.key_proj is None else self.key_proj(states)  # (batch, mem_len, query_dim)

    def score(self, query: Tensor, keys: Tensor) -> Tensor:
        scores = torch.bmm(query, keys.transpose(1, 2))  # (batch, q_len, mem_len)
        return scores if self.scale is None else scores * self.scale


def make_attention(kind: str, query_dim: int, memory_dim: int, attention_dim: int, scale: bool = False,
                   fp32: bool = False) -> Attention | None:
    """``none``, ``bahdanau``, ``luong_dot`` or ``luong_general`` (``scale``: Luong's only)."""
    if kind == "none":
        return None
    if kind == "bahdanau":
        return BahdanauAttention(query_dim, memory_dim, attention_dim, fp32)
    if kind in ("luong_dot", "luong_general"):
        return LuongAttention(query_dim, memory_dim, kind.split("_")[1], scale, fp32)
    raise ValueError(f"unknown attention {kind!r}")
