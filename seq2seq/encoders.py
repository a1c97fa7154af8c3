"""Encoders turn an input into a :class:`~seq2seq.memory.Memory` for the shared decoder."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from seq2seq.memory import Memory
from seq2seq.rnn import Dropout, make_rnn
from seq2seq.tokenizers import PAD


class TextEncoder(nn.Module):
    """Embeddings and a (bi)directional multi-layer RNN over packed sequences (Cho et al., 2014)."""

    def __init__(self, vocab_size: int, emb_dim: int, hidden: int, cell: str = "gru", layers: int = 1,
                 bidirectional: bool = True, dropout: float = 0.0):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, emb_dim, padding_idx=PAD)
        self.dropout = Dropout(dropout)
        self.rnn = make_rnn(cell, emb_dim, hidden, layers, dropout, bidirectional)
        self.directions = 2 if bidirectional else 1
        self.output_dim = hidden * self.directions  # size of each memory vector and of the summary
        self.summary_dim = self.output_dim

    def forward(self, src: Tensor, src_lens: Tensor) -> Memory:
        """src (batch, src_len) ids, src_lens (batch,) -> Memory of (batch, src_len, output_dim)."""
        if int(src_lens.min()) < 1:
            raise ValueError("every source sentence needs at least one token (an empty line was batched)")
        emb = self.dropout(self.embed(src))  # (batch, src_len, emb_dim)
        packed = pack_padded_sequence(emb, src_lens.cpu(), batch_first=True, enforce_sorted=False)
        out, final = self.rnn(packed)
        states, _ = pad_packed_sequence(out, batch_first=True, total_length=src.size(1))
        h = final[0] if isinstance(final, tuple) else final  # (layers*dirs, batch, hidden)
        summary = torch.cat(list(h[-self.directions:]), dim=-1)  # top layer: (batch, output_dim)
        mask = src != PAD  # (batch, src_len)
        return Memory(self.dropout(states), mask, summary)
