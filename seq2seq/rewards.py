"""Sentence-level rewards for sequence-level training (:mod:`seq2seq.train.sequence_level`).

A reward scores one output against its reference, in [0, 1]: sacreBLEU's sentence BLEU (with
its effective order, so a short output with no matching 4-gram still gets credit for its
words) and chrF for translation; BLEU-4 and CIDEr-D for captions. CIDEr-D weighs an n-gram
by its rarity across the training images (Vedantam et al. 2015); a batch is too small to
estimate that, so its document frequencies come from the training references, as in
Rennie et al.'s SCST code.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence

from sacrebleu.metrics import BLEU, CHRF

from seq2seq.config import ConfigError
from seq2seq.tokenizers import WordTokenizer

Reward = Callable[[list[str], list[str]], list[float]]  # (outputs, references) -> one reward each

REWARDS = ("bleu", "chrf", "bleu4", "cider")


def sentence_bleu() -> Reward:
    """sacreBLEU's sentence BLEU (13a tokenisation, exponential smoothing, effective order) / 100."""
    scorer = BLEU(effective_order=True)
    return lambda hyps, refs: [scorer.sentence_score(h, [r]).score / 100 for h, r in zip(hyps, refs)]


def sentence_chrf() -> Reward:
    """sacreBLEU's sentence chrF / 100."""
    scorer = CHRF()
    return lambda hyps, refs: [scorer.sentence_score(h, [r]).score / 100 for h, r in zip(hyps, refs)]


def caption_bleu4() -> Reward:
    """Sentence BLEU-4 on lowercased captions, as captioning's test BLEU is scored."""
    scorer = BLEU(effective_order=True, lowercase=True)
    return lambda hyps, refs: [scorer.sentence_score(h, [r]).score / 100 for h, r in zip(hyps, refs)]


def _ngrams(words: Sequence[str], n_max: int) -> Counter:
    return Counter(tuple(words[i:i + n]) for n in range(1, n_max + 1) for i in range(len(words) - n + 1))


class CiderD:
    """CIDEr-D of one caption against its references, / 10 (a perfect match of a long caption
    scores near 10 in the paper's scale). TF-IDF vectors of 1- to 4-grams, their clipped cosine
    per n, a Gaussian penalty on the length difference (sigma 6), averaged over n and references.
    The length is the caption's word count (pycocoevalcap counts its bigrams). Words are
    :class:`~seq2seq.tokenizers.WordTokenizer`'s, lower-cased, punctuation apart (``"grass."`` is
    ``grass`` and ``.``), as the test metric counts them, whatever the spacing of the text."""

    def __init__(self, corpus: list[list[str]], n: int = 4, sigma: float = 6.0):
        """``corpus``: every training image's references (the document frequencies)."""
        self.n, self.sigma = n, sigma
        self.df: Counter = Counter()
        for refs in corpus:
            self.df.update(set().union(*(_ngrams(WordTokenizer.split(r), n) for r in refs)) if refs else set())
        self.log_docs = math.log(max(len(corpus), 1))

    def _vector(self, words: list[str]) -> tuple[list[dict[tuple[str, ...], float]], list[float]]:
        vec: list[dict[tuple[str, ...], float]] = [{} for _ in range(self.n)]
        for gram, tf in _ngrams(words, self.n).items():
            vec[len(gram) - 1][gram] = tf * (self.log_docs - math.log(max(1.0, self.df[gram])))
        return vec, [math.sqrt(sum(v * v for v in vn.values())) for vn in vec]

    def score(self, hyp: str, refs: list[str]) -> float:
        h_words = WordTokenizer.split(hyp)
        h_vec, h_norm = self._vector(h_words)
        total = 0.0
        for ref in refs:
            r_words = WordTokenizer.split(ref)
            r_vec, r_norm = self._vector(r_words)
            penalty = math.exp(-((len(h_words) - len(r_words)) ** 2) / (2 * self.sigma ** 2))
            for k in range(self.n):
                if h_norm[k] and r_norm[k]:
                    dot = sum(min(v, r_vec[k].get(g, 0.0)) * r_vec[k].get(g, 0.0) for g, v in h_vec[k].items())
                    total += penalty * dot / (h_norm[k] * r_norm[k])
        return total / (self.n * max(len(refs), 1))  # x10 is CIDEr-D's scale; /10 keeps rewards in [0, 1]

    def __call__(self, hyps: list[str], refs: list[str]) -> list[float]:
        return [self.score(h, [r]) for h, r in zip(hyps, refs)]


def make_reward(name: str, train_refs: list[list[str]] | None = None) -> Reward:
    """The reward ``name`` (one of :data:`REWARDS`); CIDEr-D needs the training references."""
    if name == "cider":
        if train_refs is None:
            raise ConfigError("train.reward=cider is a captioning reward (its weights come from the training captions)")
        return CiderD(train_refs)
    return {"bleu": sentence_bleu, "chrf": sentence_chrf, "bleu4": caption_bleu4}[name]()
