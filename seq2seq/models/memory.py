"""The memory an encoder hands the decoder: vectors to attend over, a mask and a summary.

A text encoder's memory is one vector per source token; an image encoder's is one vector
per cell of its feature grid. The decoder reads nothing else, so any encoder plugs in.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor


@dataclass
class Memory:
    states: Tensor  # (batch, mem_len, mem_dim) vectors to attend over
    mask: Tensor  # (batch, mem_len) bool, True at real positions, False at padding
    summary: Tensor  # (batch, summary_dim) one vector for the whole input (final state / pooled)
    # a recurrent encoder's final state of every layer, directions joined per layer, for the
    # decoder to start from layer by layer (Sutskever et al., Luong et al.); None for images
    layers: Tensor | None = None  # (enc_layers, batch, summary_dim); layers[-1] is the summary
    cells: Tensor | None = None  # LSTM encoders: the final cell states, (enc_layers, batch, summary_dim)

    @property
    def lengths(self) -> Tensor:
        return self.mask.sum(dim=1)  # (batch,)

    def index_select(self, rows: Tensor) -> "Memory":
        """The rows ``rows`` (beam search drops the inputs it has finished)."""
        def pick(t: Tensor | None, dim: int) -> Tensor | None:
            return None if t is None else t.index_select(dim, rows)
        return Memory(self.states.index_select(0, rows), self.mask.index_select(0, rows),
                      self.summary.index_select(0, rows), pick(self.layers, 1), pick(self.cells, 1))

    def for_search(self) -> "Memory":
        """The states in autocast's dtype where autocast is on. Attention reads them at every step
        and would cast them anew each time; search needs no gradient, so they are cast once."""
        kind = self.states.device.type
        if not torch.is_autocast_enabled(kind):
            return self
        return replace(self, states=self.states.to(torch.get_autocast_dtype(kind)))
