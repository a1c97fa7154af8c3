"""Token-budget batches over length buckets, and padding into tensors.

Sentences are sorted by length (source, then target, random tie-break), cut into batches
whose padded source + target size stays within a token budget, and the batches are shuffled.
The order depends only on ``(seed, epoch)``, so a resumed run sees the same batches.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence

from seq2seq.tokenizers import BOS, EOS, PAD


class SourceBatch:
    """What a text encoder reads of a batch: ``src`` and its lengths ``src_lens``."""

    src: Tensor
    src_lens: Tensor

    @property
    def inputs(self) -> tuple[Tensor, Tensor]:
        return self.src, self.src_lens

    @property
    def size(self) -> int:
        return self.src.size(0)


@dataclass
class TextBatch(SourceBatch):
    src: Tensor  # (batch, src_len) source ids, PAD-padded
    src_lens: Tensor  # (batch,) on the CPU (packing wants it there)
    tgt_in: Tensor  # (batch, tgt_len) BOS y1 .. yn
    tgt_out: Tensor  # (batch, tgt_len) y1 .. yn EOS

    def to(self, device: torch.device) -> "TextBatch":
        return TextBatch(self.src.to(device, non_blocking=True), self.src_lens,
                         self.tgt_in.to(device, non_blocking=True), self.tgt_out.to(device, non_blocking=True))

    def num_tokens(self) -> int:
        """Non-padding source plus target tokens (targets counted with their EOS)."""
        return int(self.src_lens.sum()) + int((self.tgt_out != PAD).sum())


def pad_ids(seqs: list[list[int]]) -> tuple[Tensor, Tensor]:
    """Pad id lists into (batch, max_len) and their lengths (batch,)."""
    lens = torch.tensor([len(s) for s in seqs], dtype=torch.long)
    padded = pad_sequence([torch.tensor(s, dtype=torch.long) for s in seqs], batch_first=True,
                          padding_value=PAD)
    return padded, lens


def collate(src: list[list[int]], tgt: list[list[int]]) -> TextBatch:
    """Build a training batch: targets get BOS on the input side and EOS on the output side."""
    src_ids, src_lens = pad_ids(src)
    tgt_in, _ = pad_ids([[BOS] + t for t in tgt])
    tgt_out, _ = pad_ids([t + [EOS] for t in tgt])
    return TextBatch(src_ids, src_lens, tgt_in, tgt_out)


def token_batches(src_lens: list[int], tgt_lens: list[int], budget: int, seed: int,
                  epoch: int) -> list[list[int]]:
    """Index lists of one epoch's batches, each within ``budget`` padded tokens."""
    rng = random.Random(seed * 1_000_003 + epoch)
    noise = [rng.random() for _ in src_lens]
    order = sorted(range(len(src_lens)), key=lambda i: (src_lens[i], tgt_lens[i], noise[i]))
    batches: list[list[int]] = []
    current: list[int] = []
    max_src = max_tgt = 0
    for i in order:
        s, t = max(max_src, src_lens[i]), max(max_tgt, tgt_lens[i] + 1)  # +1: BOS/EOS
        if current and (len(current) + 1) * (s + t) > budget:
            batches.append(current)
            current, s, t = [], src_lens[i], tgt_lens[i] + 1
        current.append(i)
        max_src, max_tgt = s, t
    if current:
        batches.append(current)
    rng.shuffle(batches)
    return batches


class ParallelData:
    """Encoded training pairs with their epoch batches."""

    def __init__(self, src: list[list[int]], tgt: list[list[int]], budget: int, seed: int):
        if not src:
            raise ValueError("no training pairs left (check the corpus and data.max_len)")
        self.src, self.tgt, self.budget, self.seed = src, tgt, budget, seed
        self.src_lens = [len(s) for s in src]
        self.tgt_lens = [len(t) for t in tgt]

    def __len__(self) -> int:
        return len(self.src)

    def tokens_per_epoch(self) -> int:
        """Non-padding source + target tokens (with EOS) in one pass over the data."""
        return sum(self.src_lens) + sum(self.tgt_lens) + len(self.tgt_lens)

    def epoch(self, epoch: int) -> list[list[int]]:
        return token_batches(self.src_lens, self.tgt_lens, self.budget, self.seed, epoch)

    def batch(self, indices: list[int]) -> TextBatch:
        return collate([self.src[i] for i in indices], [self.tgt[i] for i in indices])
