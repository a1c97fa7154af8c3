"""Token-budget batches over length buckets, and padding into tensors.

Sentences are sorted by length (source, then target, random tie-break), cut into batches
whose padded source + target size stays within a token budget, and the batches are shuffled.
The order depends only on ``(seed, epoch)``, so a resumed run sees the same batches.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence

from seq2seq.data.encoded import TokenArray
from seq2seq.runtime import move
from seq2seq.tokenizers import BOS, EOS, PAD


class Batch(Protocol):
    """What the trainer reads of a batch (:class:`TextBatch`, the caption and synthetic batches)."""

    tgt_in: Tensor  # (batch, tgt_len)
    tgt_out: Tensor  # (batch, tgt_len)

    @property
    def inputs(self) -> tuple[Tensor, ...]: ...  # what the encoder takes

    @property
    def size(self) -> int: ...  # sentences or images

    def to(self, device: torch.device) -> "Batch": ...

    def num_tokens(self) -> int: ...


class TrainData(Protocol):
    """What the trainer reads of its data: the batch plan of an epoch (index lists), and a batch."""

    def epoch(self, epoch: int) -> list[list[int]]: ...

    def batch(self, indices: list[int]) -> Batch: ...


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
        return TextBatch(move(self.src, device), self.src_lens, move(self.tgt_in, device), move(self.tgt_out, device))

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


def token_batches(src_lens: Sequence[int] | np.ndarray, tgt_lens: Sequence[int] | np.ndarray, budget: int,
                  seed: int, epoch: int) -> list[list[int]]:
    """Index lists of one epoch's batches, each within ``budget`` padded tokens.

    Vectorised over the length arrays (10 million pairs take seconds); the batches are those
    of sorting with Python's ``random.Random(seed * 1_000_003 + epoch)`` drawing one tie-break
    number per sentence, then shuffling the batches with the same generator.
    """
    rng = random.Random(seed * 1_000_003 + epoch)
    src = np.asarray(src_lens, dtype=np.int64)
    tgt = np.asarray(tgt_lens, dtype=np.int64) + 1  # +1: BOS/EOS
    noise = _uniforms(rng, len(src))
    # sort by (source length, target length, noise): stable sorts, least significant key first
    by_noise = np.argsort(noise, kind="stable")
    lengths = src * (int(tgt.max(initial=0)) + 1) + tgt
    order = by_noise[np.argsort(lengths[by_noise], kind="stable")]
    starts = _batch_starts(src[order].tolist(), tgt[order].tolist(), budget)
    batches = [order[a:b].tolist() for a, b in zip(starts, starts[1:])]
    rng.shuffle(batches)
    return batches


def _uniforms(rng: random.Random, n: int) -> np.ndarray:
    """``[rng.random() for _ in range(n)]`` in one numpy call (the same Mersenne Twister and
    53-bit construction), leaving ``rng`` where those calls would."""
    version, internal, gauss = rng.getstate()
    twister = np.random.RandomState()
    twister.set_state(("MT19937", np.array(internal[:-1], dtype=np.uint32), internal[-1]))
    out = twister.random_sample(n)
    _, key, pos, _, _ = twister.get_state()
    rng.setstate((version, tuple(int(k) for k in key) + (int(pos),), gauss))
    return out


def _batch_starts(src: list[int], tgt: list[int], budget: int) -> list[int]:
    """Where each batch starts in the sorted order (and the end): a batch grows while its
    padded size, (sentences) x (longest source + longest target), stays within ``budget``."""
    starts, size, longest_tgt = [0], 0, 0
    for k, (s, t) in enumerate(zip(src, tgt)):  # sources are sorted: the current one is the longest
        t = max(t, longest_tgt)
        if size and (size + 1) * (s + t) > budget:
            starts.append(k)
            size, t = 0, tgt[k]
        size += 1
        longest_tgt = t
    starts.append(len(src))
    return starts


class ParallelData:
    """Encoded training pairs (memory-mapped token arrays, or lists of ids) with their epoch batches."""

    def __init__(self, src: TokenArray | list[list[int]], tgt: TokenArray | list[list[int]], budget: int,
                 seed: int):
        if not len(src):
            raise ValueError("no training pairs left (check the corpus and data.max_len)")
        self.src = src if isinstance(src, TokenArray) else TokenArray.from_lists(src)
        self.tgt = tgt if isinstance(tgt, TokenArray) else TokenArray.from_lists(tgt)
        self.budget, self.seed = budget, seed
        self.src_lens, self.tgt_lens = self.src.lengths, self.tgt.lengths

    def __len__(self) -> int:
        return len(self.src)

    def tokens_per_epoch(self) -> int:
        """Non-padding source + target tokens (with EOS) in one pass over the data."""
        return int(self.src_lens.sum() + self.tgt_lens.sum()) + len(self.tgt_lens)

    def epoch(self, epoch: int) -> list[list[int]]:
        return token_batches(self.src_lens, self.tgt_lens, self.budget, self.seed, epoch)

    def batch(self, indices: list[int]) -> TextBatch:
        return collate([self.src[i] for i in indices], [self.tgt[i] for i in indices])
