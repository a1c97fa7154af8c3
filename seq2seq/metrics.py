"""Corpus metrics with sacreBLEU: BLEU and chrF over multiple references, with signatures;
CIDEr-D in sacreBLEU's form, so that the paired tests of :mod:`seq2seq.significance` apply to it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sacrebleu.metrics import BLEU, CHRF
from sacrebleu.metrics.base import Metric
from sacrebleu.metrics.base import Score as SacreScore
from torch import Tensor

from seq2seq.rewards import CiderD
from seq2seq.tokenizers import WordTokenizer


@dataclass
class Score:
    name: str  # "BLEU", "chrF2"
    score: float
    signature: str
    detail: str  # sacreBLEU's one-line summary (n-gram precisions, brevity penalty)
    brevity_penalty: float | None = None  # BLEU only


def ref_streams(refs: list[list[str]]) -> list[list[str | None]]:
    """Per-sentence reference lists -> sacreBLEU's reference streams (None where a sentence has fewer)."""
    if not refs:
        return [[]]
    width = max(len(r) for r in refs)
    return [[r[i] if i < len(r) else None for r in refs] for i in range(width)]


def check_references(hyps: list[str], refs: list[list[str]]) -> None:
    """One list of references per hypothesis, none of them empty (ValueError otherwise)."""
    if len(hyps) != len(refs):
        raise ValueError(f"{len(hyps)} hypotheses but {len(refs)} reference lists")
    if any(not r for r in refs):
        raise ValueError("every hypothesis needs at least one reference")


def bleu(hyps: list[str], refs: list[list[str]], tokenize: str = "13a", max_ngram_order: int = 4,
         lowercase: bool = False) -> Score:
    """Corpus BLEU (cased unless ``lowercase``); ``refs[i]`` holds every reference of ``hyps[i]``."""
    check_references(hyps, refs)
    metric = BLEU(tokenize=tokenize, max_ngram_order=max_ngram_order, lowercase=lowercase)
    result = metric.corpus_score(hyps, ref_streams(refs))
    return Score(f"BLEU-{max_ngram_order}" if max_ngram_order != 4 else "BLEU", result.score,
                 str(metric.get_signature()), str(result), result.bp)


def bleu_interval(hyps: list[str], refs: list[list[str]], lowercase: bool = False,
                  samples: int = 1000) -> list[float]:
    """sacreBLEU's 95 % bootstrap interval of corpus BLEU (test-set sampling alone, not training
    noise): ``[mean - ci, mean + ci]`` as its ``μ = mean ± ci`` reports it."""
    check_references(hyps, refs)
    score = BLEU(lowercase=lowercase).corpus_score(hyps, ref_streams(refs), n_bootstrap=samples)
    return [score._mean - score._ci, score._mean + score._ci]


def chrf(hyps: list[str], refs: list[list[str]]) -> Score:
    check_references(hyps, refs)
    metric = CHRF()
    result = metric.corpus_score(hyps, ref_streams(refs))
    return Score("chrF2", result.score, str(metric.get_signature()), str(result))


def bleu_by_length(hyps: list[str], refs: list[list[str]], src_lens: list[int],
                   edges: tuple[int, ...] = (5, 10, 15, 20, 25, 30, 40, 50)) -> dict[str, tuple[float, int]]:
    """BLEU per source-length bucket (``"6-10"`` -> (BLEU, sentences)), as in Cho/Bahdanau's curves.
    ``src_lens`` are source lengths in words; empty sources belong to no bucket."""
    buckets: dict[str, list[int]] = {}
    lows = (0,) + edges
    for i, n in enumerate(src_lens):
        if n < 1:
            continue
        for lo, hi in zip(lows, edges + (None,)):
            if hi is None or n <= hi:
                buckets.setdefault(f"{lo + 1}-{hi}" if hi else f">{lo}", []).append(i)
                break
    order = {f"{lo + 1}-{hi}" if hi else f">{lo}": j for j, (lo, hi) in enumerate(zip(lows, edges + (None,)))}
    return {name: (bleu([hyps[i] for i in idx], [refs[i] for i in idx]).score, len(idx))
            for name, idx in sorted(buckets.items(), key=lambda kv: order[kv[0]])}


def attention_entropy(weights: list[Tensor | None]) -> float | None:
    """Mean entropy (nats) of the attention distributions of every output step of every
    sentence: 0 when each step attends to one position, log(n) when it spreads evenly."""
    total, steps = 0.0, 0
    for w in weights:
        if w is None or not w.numel():
            continue
        p = w.float().clamp_min(1e-12)  # (steps, mem_len); padded positions have weight 0 and add nothing
        total += float(-(p * p.log()).sum())
        steps += p.size(0)
    return total / steps if steps else None


class CIDErD(Metric):
    """Corpus CIDEr-D x 100 (Vedantam et al. 2015) as a sacreBLEU metric. CIDEr-D is a mean over
    captions once its document frequencies are fixed, so a caption's statistics are its own
    score and a count, and sacreBLEU's approximate randomisation and bootstrap, which sum the
    statistics of the captions they draw, test it as they test BLEU. Document frequencies come
    from the references given (coco-caption's convention), counted once where they are one test
    set repeated (seeds pooled by :func:`~seq2seq.significance.paired_test`), so a pooled score is
    the mean of the seeds'; words are :class:`~seq2seq.tokenizers.WordTokenizer`'s, lower-cased."""

    def _extract_corpus_statistics(self, hypotheses: Sequence[str],
                                   references: Sequence[Sequence[str | None]] | None) -> list[list[float]]:
        if not references:
            raise ValueError("CIDEr-D needs the references of every caption")
        refs = [[caption_words(r) for r in item if r is not None] for item in zip(*references)]  # per caption
        check_references(list(hypotheses), refs)
        counts = {len(rs) for rs in refs}
        self.num_refs = counts.pop() if len(counts) == 1 else -1  # the signature's nrefs (-1: "var")
        scorer = CiderD(_one_copy(refs))  # scores CIDEr-D / 10
        return [[1000.0 * scorer.score(caption_words(h), rs), 1.0] for h, rs in zip(hypotheses, refs)]

    def _compute_score_from_stats(self, stats: Any) -> SacreScore:
        return SacreScore("CIDEr-D", float(stats[0]) / max(float(stats[1]), 1.0))

    def _aggregate_and_compute(self, stats: list[list[float]]) -> SacreScore:
        return self._compute_score_from_stats(np.sum(np.asarray(stats, dtype=float), axis=0))

    # per-segment hooks of sacreBLEU's default extraction, which CIDEr-D's corpus-wide weights replace
    def _preprocess_segment(self, sent: str) -> str:
        return sent

    def _extract_reference_info(self, refs: Sequence[str]) -> dict[str, Any]:
        raise NotImplementedError("CIDEr-D weighs n-grams by the whole corpus: see _extract_corpus_statistics")

    def _compute_segment_statistics(self, hypothesis: str, ref_kwargs: dict) -> list[float]:
        raise NotImplementedError("CIDEr-D weighs n-grams by the whole corpus: see _extract_corpus_statistics")


def _one_copy(items: list[list[str]]) -> list[list[str]]:
    """``items`` without repetition when it is one list repeated whole (k copies), else itself."""
    n = len(items)
    for k in range(n, 1, -1):
        if n % k == 0 and items == items[:n // k] * k:
            return items[:n // k]
    return items


def caption_words(text: str) -> str:
    """Lower-cased words and punctuation, space-joined: the tokens CIDEr-D counts."""
    return " ".join(WordTokenizer.split(text))
