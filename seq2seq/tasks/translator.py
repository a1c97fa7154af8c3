"""Load a trained translation model and translate sentences: greedy, beam, n-best, alignments."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from seq2seq.config import Config
from seq2seq.data.batching import pad_ids
from seq2seq.models.model import Seq2Seq, build_translation_model
from seq2seq.runtime import autocast, pick_device, serving_precision
from seq2seq.search import Hypothesis, max_lengths, search
from seq2seq.tokenizers import Tokenizer
from seq2seq.train.checkpoints import load_trained
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

    @property
    def text(self) -> str:
        return self.candidates[0].text if self.candidates else ""


class Translator:
    def __init__(self, model: Seq2Seq, cfg: Config, src_tok: Tokenizer, tgt_tok: Tokenizer,
                 device: torch.device, amp_dtype: torch.dtype | None = None):
        self.model, self.cfg = model.to(device).eval(), cfg
        self.src_tok, self.tgt_tok = src_tok, tgt_tok
        self.device, self.amp_dtype = device, amp_dtype

    @classmethod
    def load(cls, path: str | Path, device: str = "auto", precision: str = "model") -> "Translator":
        """From a run folder (its best checkpoint) or a checkpoint file; ``precision="model"``
        translates at the precision the model was trained and scored at."""
        model, cfg, toks, trained_at = load_trained(path, "translation", lambda cfg, t: build_translation_model(
            cfg.model, len(t["src"]), len(t["tgt"])))
        dev = pick_device(device)
        return cls(model, cfg, toks["src"], toks["tgt"], dev, serving_precision(precision, trained_at, dev))

    def translate(self, lines: list[str], beam: int | None = None, nbest: int = 1,
                  max_len_ratio: float | None = None, batch_size: int | None = None) -> list[Translation]:
        """Translate ``lines`` in order; an empty (or whitespace) line gives an empty translation.

        Lines are searched in consecutive windows of ``batch_size`` (sorted by length inside a
        window), so a file gives the same batches, and so the same outputs to the last bit,
        whether it is translated in one call (test evaluation), streamed through the tool, or
        shared out over the ranks of a data-parallel run.
        """
        s = self.cfg.search
        beam = beam or s.beam
        ratio = s.max_len_ratio if max_len_ratio is None else max_len_ratio
        batch_size = batch_size or s.batch_size
        ids = self.src_tok.encode([" ".join(line.split()) for line in lines])

        def window(span: range) -> list[Translation]:
            out = {i: Translation(lines[i], [], [], None) for i in span if not ids[i]}
            todo = sorted((i for i in span if ids[i]), key=lambda i: len(ids[i]))  # similar lengths together
            if todo:
                src, src_lens = pad_ids([ids[i] for i in todo])
                for i, hyps in zip(todo, self._search(src, src_lens, beam, nbest, ratio)):
                    cands = [Candidate(self.tgt_tok.decode([h.tokens])[0], h.score, h.tokens) for h in hyps]
                    out[i] = Translation(lines[i], cands, self.src_tok.pieces(ids[i]), hyps[0].attention)
            return [out[i] for i in span]

        spans = [range(start, min(start + batch_size, len(lines))) for start in range(0, len(lines), batch_size)]
        return current().shard_map(spans, window)  # in a data-parallel run each rank searches its share

    @torch.no_grad()
    def _search(self, src: Tensor, src_lens: Tensor, beam: int, nbest: int, ratio: float) -> list[list[Hypothesis]]:
        limits = max_lengths(src_lens, ratio, self.cfg.search.max_len_offset)
        self.model.eval()  # the model may be shared with a trainer that left it in training mode
        with autocast(self.device, self.amp_dtype):
            memory = self.model.encode(src.to(self.device), src_lens)
            return search(self.model.decoder, memory, beam, limits, self.cfg.search.length_penalty, nbest)
