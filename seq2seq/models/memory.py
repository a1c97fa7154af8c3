"""The memory an encoder hands the decoder: vectors to attend over, a mask and a summary.

A text encoder's memory is one vector per source token; an image encoder's is one vector
per cell of its feature grid. The decoder reads nothing else, so any encoder plugs in.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class Memory:
    states: Tensor  # (batch, mem_len, mem_dim) vectors to attend over
    mask: Tensor  # (batch, mem_len) bool, True at real positions, False at padding
    summary: Tensor  # (batch, summary_dim) one vector for the whole input (final state / pooled)

    @property
    def lengths(self) -> Tensor:
        return self.mask.sum(dim=1)  # (batch,)

    def index_select(self, rows: Tensor) -> "Memory":
        """The rows ``rows`` (beam search drops the inputs it has finished)."""
        return Memory(self.states.index_select(0, rows), self.mask.index_select(0, rows),
                      self.summary.index_select(0, rows))

    def for_search(self) -> "Memory":
        """The states in autocast's dtype where autocast is on. Attention reads them at every step
        and would cast them anew each time; search needs no gradient, so they are cast once."""
        kind = self.states.device.type
        if not torch.is_autocast_enabled(kind):
            return self
        return Memory(self.states.to(torch.get_autocast_dtype(kind)), self.mask, self.summary)
