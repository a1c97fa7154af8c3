"""Load a trained translation model and translate sentences: greedy, beam, n-best, alignments."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from seq2seq.config import Config
from seq2seq.data import segments
from seq2seq.data.batching import pad_ids
from seq2seq.ensemble import Ensemble, load_members
from seq2seq.models.model import Seq2Seq, build_translation_model
from seq2seq.runtime import autocast, pick_device, serving_precision
from seq2seq.search import Hypothesis, max_lengths, search
from seq2seq.tokenizers import Tokenizer
from seq2seq.train.distributed import current


@dataclass
class Candidate:
    text: str
    score: float  # length-normalised log-probability
    tokens: list[int]


@dataclass
class Translation:
    source: str
    candidates: list[Candidate]  # n-best, best first; empty for an empty source
    src_pieces: list[str]
    attention: Tensor | None  # (tgt_steps, src_len) of the best candidate
    parts: int = 1  # sentences and pieces of them translated apart (see seq2seq.data.segments)
    longest_part: int = 0  # source pieces of the longest sentence before it was cut to the model's limit

    @property
    def text(self) -> str:
        return self.candidates[0].text if self.candidates else ""


@dataclass
class _Part:
    line: int  # index of its input line
    ids: list[int]
    hyps: list[Hypothesis] | None = None


class Translator:
    def __init__(self, model: Seq2Seq | Ensemble, cfg: Config, src_tok: Tokenizer, tgt_tok: Tokenizer,
                 device: torch.device, amp_dtype: torch.dtype | None = None):
        self.model, self.cfg = model.to(device).eval(), cfg
        self.src_tok, self.tgt_tok = src_tok, tgt_tok
        self.device, self.amp_dtype = device, amp_dtype

    @classmethod
    def load(cls, path: str | Path | Sequence[str | Path], device: str = "auto",
             precision: str = "model") -> "Translator":
        """From a run folder (its best checkpoint) or a checkpoint file, or several: an ensemble
        (:mod:`seq2seq.ensemble`); ``precision="model"`` translates at the precision the model
        was trained and scored at (see :func:`~seq2seq.runtime.serving_precision`)."""
        paths = [path] if isinstance(path, (str, Path)) else list(path)
        model, first = load_members(paths, "translation", lambda cfg, t: build_translation_model(
            cfg.model, len(t["src"]), len(t["tgt"])))
        dev = pick_device(device)
        return cls(model, first.config, first.tokenizers["src"], first.tokenizers["tgt"], dev,
                   serving_precision(precision, first.precision, dev))

    def translate(self, lines: list[str], beam: int | None = None, nbest: int = 1,
                  max_len_ratio: float | None = None, batch_size: int | None = None,
                  split: bool | None = None) -> list[Translation]:
        """Translate ``lines`` in order; an empty (or whitespace) line gives an empty translation.

        A line is translated sentence by sentence (``split``, default ``search.split_sentences``),
        and a sentence longer than the model's ``data.max_len`` pieces in parts cut at word
        boundaries; a line of several parts gets one candidate, its parts' best joined, and no
        attention. Lines are searched in consecutive windows of ``batch_size`` lines (their
        parts sorted by length, at most ``batch_size`` a search), so a file gives the same
        batches, and so the same outputs to the last bit, whether it is translated in one call
        (test evaluation), streamed through the tool from a file, or shared out over the ranks
        of a data-parallel run. (Input that pauses, typed or piped from a slow program, is
        answered a partial window at a time: other batches, the same translations up to the
        last bits of bf16 arithmetic.)
        """
        s = self.cfg.search
        beam = beam or s.beam
        ratio = s.max_len_ratio if max_len_ratio is None else max_len_ratio
        batch_size = batch_size or s.batch_size
        split = s.split_sentences if split is None else split

        def window(span: range) -> list[Translation]:
            parts, longest = self._parts([lines[i] for i in span], span.start, split)
            todo = sorted((p for p in parts if p.ids), key=lambda p: len(p.ids))  # similar lengths together
            for lo in range(0, len(todo), batch_size):
                chunk = todo[lo:lo + batch_size]
                src, src_lens = pad_ids([p.ids for p in chunk])
                for p, hyps in zip(chunk, self._search(src, src_lens, beam, nbest, ratio)):
                    p.hyps = hyps
            return [self._join(lines[i], [p for p in parts if p.line == i and p.ids], longest[i - span.start])
                    for i in span]

        spans = [range(start, min(start + batch_size, len(lines))) for start in range(0, len(lines), batch_size)]
        return current().shard_map(spans, window)  # in a data-parallel run each rank searches its share

    def _parts(self, lines: list[str], first: int, split: bool) -> tuple[list[_Part], list[int]]:
        """The parts of each line (see :mod:`seq2seq.data.segments`), and each line's longest sentence."""
        lang, limit = self.cfg.data.src_lang, self.cfg.data.max_len
        texts = [segments.sentences(line, lang) if split and line.strip() else [" ".join(line.split())]
                 for line in lines]
        ids = iter(self.src_tok.encode([t for group in texts for t in group]))
        parts, longest = [], []
        for i, group in enumerate(texts):
            encoded = [next(ids) for _ in group]
            longest.append(max(map(len, encoded)))
            for sentence in encoded:
                parts += [_Part(first + i, piece) for piece in segments.within_limit(sentence, limit,
                                                                                      self.src_tok.starts_word)]
        return parts, longest

    def _join(self, line: str, parts: list[_Part], longest: int) -> Translation:
        if not parts:
            return Translation(line, [], [], None, 0, longest)
        if len(parts) == 1:
            (p,) = parts
            cands = [Candidate(self.tgt_tok.decode([h.tokens])[0], h.score, h.tokens) for h in p.hyps]
            return Translation(line, cands, self.src_tok.pieces(p.ids), p.hyps[0].attention, 1, longest)
        best = [p.hyps[0] for p in parts]
        texts = self.tgt_tok.decode([h.tokens for h in best])
        steps = sum(len(h.tokens) + h.finished for h in best)  # every part's steps, end tokens included
        score = sum(h.logprob for h in best) / steps ** self.cfg.search.length_penalty  # as one hypothesis's
        joined = Candidate(" ".join(t for t in texts if t), score, [t for h in best for t in h.tokens])
        return Translation(line, [joined], self.src_tok.pieces([i for p in parts for i in p.ids]), None,
                           len(parts), longest)

    @torch.no_grad()
    def _search(self, src: Tensor, src_lens: Tensor, beam: int, nbest: int, ratio: float) -> list[list[Hypothesis]]:
        limits = max_lengths(src_lens, ratio, self.cfg.search.max_len_offset).clamp(max=self.cfg.search.max_len)
        self.model.eval()  # the model may be shared with a trainer that left it in training mode
        with autocast(self.device, self.amp_dtype):
            memory = self.model.encode(src.to(self.device), src_lens)
            return search(self.model.decoder, memory, beam, limits, self.cfg.search.length_penalty, nbest)
