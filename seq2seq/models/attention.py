"""Attention over a memory: Bahdanau (additive) and Luong (dot, general) scores.

Keys are computed once per batch with :meth:`keys` and passed to every step; padding
positions get a score of -inf, so they never receive weight. Queries may hold one step
``(batch, 1, query_dim)`` or all steps at once ``(batch, tgt_len, query_dim)``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from seq2seq.models.rnn import Linear


class Attention(nn.Module):
    def keys(self, states: Tensor) -> Tensor:
        """Precompute what the score needs of the memory: (batch, mem_len, key_dim)."""
        raise NotImplementedError

    def score(self, query: Tensor, keys: Tensor) -> Tensor:
        """(batch, q_len, query_dim) x (batch, mem_len, key_dim) -> (batch, q_len, mem_len)."""
        raise NotImplementedError

    def forward(self, query: Tensor, keys: Tensor, values: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """Context vectors (batch, q_len, mem_dim) and float32 weights (batch, q_len, mem_len)."""
        scores = self.score(query, keys)
        scores = scores.masked_fill(~mask.unsqueeze(1), float("-inf"))
        weights = torch.softmax(scores.float(), dim=-1)
        return torch.bmm(weights.to(values.dtype), values), weights


class BahdanauAttention(Attention):
    """Additive score ``v^T tanh(W q + U h)`` (Bahdanau et al., 2015)."""

    def __init__(self, query_dim: int, memory_dim: int, attention_dim: int):
        super().__init__()
        self.key_proj = Linear(memory_dim, attention_dim, bias=False)  # U
        self.query_proj = Linear(query_dim, attention_dim, bias=False)  # W
        self.v = nn.Linear(attention_dim, 1, bias=False)  # per step over every memory vector: no padded copy

    def keys(self, states: Tensor) -> Tensor:
        return self.key_proj(states)  # (batch, mem_len, attention_dim)

    def score(self, query: Tensor, keys: Tensor) -> Tensor:
        q = self.query_proj(query).unsqueeze(2)  # (batch, q_len, 1, attention_dim)
        return self.v(torch.tanh(q + keys.unsqueeze(1))).squeeze(-1)  # (batch, q_len, mem_len)


class LuongAttention(Attention):
    """Multiplicative score: ``q . h`` (dot) or ``q . W h`` (general) (Luong et al., 2015)."""

    def __init__(self, query_dim: int, memory_dim: int, kind: str = "general"):
        super().__init__()
        if kind not in ("dot", "general"):
            raise ValueError(f"unknown Luong score {kind!r}; choose dot or general")
        if kind == "dot" and query_dim != memory_dim:
            raise ValueError(f"dot attention needs equal query and memory sizes, got {query_dim} and {memory_dim}")
        self.key_proj = Linear(memory_dim, query_dim, bias=False) if kind == "general" else None

    def keys(self, states: Tensor) -> Tensor:
        return states if self.key_proj is None else self.key_proj(states)  # (batch, mem_len, query_dim)

    def score(self, query: Tensor, keys: Tensor) -> Tensor:
        return torch.bmm(query, keys.transpose(1, 2))  # (batch, q_len, mem_len)


def make_attention(kind: str, query_dim: int, memory_dim: int, attention_dim: int) -> Attention | None:
    """``none``, ``bahdanau``, ``luong_dot`` or ``luong_general``."""
    if kind == "none":
        return None
    if kind == "bahdanau":
        return BahdanauAttention(query_dim, memory_dim, attention_dim)
    if kind in ("luong_dot", "luong_general"):
        return LuongAttention(query_dim, memory_dim, kind.split("_")[1])
    raise ValueError(f"unknown attention {kind!r}")
