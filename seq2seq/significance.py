"""Is a difference a finding? Paired tests of a system against a baseline on one test set,
with sacreBLEU's resampling (approximate randomisation for p, ties counted; paired bootstrap
for the interval), pooled over seed replicates as MultEval does (Clark et al. 2011), Holm's correction
for several comparisons, and Welch's t-test for metrics measured once per run.

Pooling: the test set of every seed is concatenated, paired seed by seed (seed n of the system
against seed n of the baseline), and the corpus score of the concatenation is the statistic.
Shuffling or resampling then mixes sentences of every replicate, so a system whose gain comes
from one lucky seed is not a finding.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import numpy as np
from sacrebleu.metrics.base import Metric
from sacrebleu.significance import _bootstrap_resample

from seq2seq.metrics import ref_streams

AR_TRIALS = 10_000  # sacreBLEU's default
BOOTSTRAP_SAMPLES = 1_000  # sacreBLEU's default
ALPHA = 0.05
EXACT_SPLITS = 1_000_000  # a permutation test over more splits of the seeds samples them ...
RANDOM_SPLITS = 100_000  # ... this many


@dataclass
class Comparison:
    """A system against the baseline: the difference of their scores, its 95 % interval and p."""

    delta: float  # system - baseline (the pooled corpus score for several seeds)
    ci95: tuple[float, float]
    p_value: float  # two-sided
    seeds: int  # replicates pooled
    test: str  # how p and the interval were found, in words
    p_exact: float | None = None  # a test over seeds: the exact permutation p beside Welch's (no normality assumed)


@contextmanager
def _fixed_seed() -> Iterator[None]:
    """sacreBLEU seeds its resampling with $SACREBLEU_SEED (12345 unless told otherwise); paired
    bootstrap intervals need the same resamples for both systems, so an unseeded setting is
    replaced by the default for the duration."""
    old = os.environ.get("SACREBLEU_SEED")
    if old is not None and old.lower() == "none":
        os.environ["SACREBLEU_SEED"] = "12345"
    try:
        yield
    finally:
        if old is not None:
            os.environ["SACREBLEU_SEED"] = old


def paired_test(baseline: Sequence[Sequence[str]], system: Sequence[Sequence[str]],
                refs: Sequence[Sequence[str]], metric: Callable[[], Metric]) -> Comparison:
    """``baseline[i]`` and ``system[i]`` are the test hypotheses of seed replicate i (the same
    seeds, in the same order), ``refs`` every test item's references, ``metric`` makes the
    sacreBLEU metric (e.g. ``lambda: BLEU(lowercase=True)``)."""
    if len(baseline) != len(system) or not baseline:
        raise ValueError(f"paired test: {len(baseline)} baseline and {len(system)} system replicates")
    for hyps in (*baseline, *system):
        if len(hyps) != len(refs):
            raise ValueError(f"paired test: {len(hyps)} hypotheses for {len(refs)} test items")
    base = [h for hyps in baseline for h in hyps]
    sys_ = [h for hyps in system for h in hyps]
    if base == sys_:  # sacreBLEU's AR counts only shuffles that differ by more: identical outputs would get p ~ 0
        return Comparison(0.0, (0.0, 0.0), 1.0, len(baseline), "identical outputs")
    streams = ref_streams([r for _ in baseline for r in refs])
    m = metric()
    base_stats, sys_stats = (m._extract_corpus_statistics(h, streams) for h in (base, sys_))
    delta = m._aggregate_and_compute(sys_stats).score - m._aggregate_and_compute(base_stats).score
    with _fixed_seed():
        p_value = _randomisation_p(m, base_stats, sys_stats, abs(delta))
        # the same seed gives both systems the same resampled test sets: their differences are paired
        _, resampled_base = _bootstrap_resample(base_stats, m, BOOTSTRAP_SAMPLES)
        _, resampled_sys = _bootstrap_resample(sys_stats, m, BOOTSTRAP_SAMPLES)
    diffs = np.sort([s.score - b.score for s, b in zip(resampled_sys, resampled_base)])
    low = len(diffs) // 40  # sacreBLEU's 95 % convention (estimate_ci)
    return Comparison(delta=delta, ci95=(float(diffs[low]), float(diffs[-low - 1])), p_value=p_value,
                      seeds=len(baseline),
                      test=f"paired approximate randomisation ({AR_TRIALS:,} trials drawn as sacreBLEU draws "
                           f"them, ties counted) and sacreBLEU's paired bootstrap ({BOOTSTRAP_SAMPLES:,} resamples) "
                           f"over {len(baseline)} pooled seed(s)")


def _randomisation_p(metric: Metric, base_stats: Sequence, sys_stats: Sequence, observed: float) -> float:
    """Two-sided paired approximate randomisation (Riezler & Maxwell 2005) as sacreBLEU draws it
    (the same swaps for the same $SACREBLEU_SEED, except 0, which sacreBLEU leaves unseeded):
    each trial swaps the two systems' outputs of a random half of the items;
    p = (trials at least as far apart as observed + 1) / (trials + 1).
    Unlike sacreBLEU, a trial exactly as far apart counts: when the systems differ in one item
    every swap leaves the difference as it is, which is no evidence (p = 1), not p = 1/(trials + 1)."""
    seed = os.environ.get("SACREBLEU_SEED", "12345")
    rng = np.random.default_rng(None if seed.lower() == "none" else int(seed))
    keep = rng.integers(2, size=(AR_TRIALS, len(base_stats)), dtype=bool)  # True: the item's outputs stay put
    base, sys_ = np.asarray(base_stats), np.asarray(sys_stats)
    shuffled_a, shuffled_b = keep @ base + ~keep @ sys_, ~keep @ base + keep @ sys_  # (trials, stats)
    apart = np.array([abs(metric._aggregate_and_compute(a[None]).score - metric._aggregate_and_compute(b[None]).score)
                      for a, b in zip(shuffled_a, shuffled_b)])
    return float((np.sum(apart >= observed - 1e-9) + 1) / (AR_TRIALS + 1))


def welch_test(baseline: Sequence[float], system: Sequence[float]) -> Comparison:
    """Welch's t-test of the mean of a per-run metric (accuracy, MSE) over seeds; needs two
    seeds on each side (with fewer there is no spread to test against: p is NaN)."""
    from scipy import stats

    delta = float(np.mean(system) - np.mean(baseline))
    if len(baseline) < 2 or len(system) < 2:
        return Comparison(delta, (math.nan, math.nan), math.nan, min(len(baseline), len(system)),
                          "Welch's t-test needs two seeds per run")
    exact = permutation_p(baseline, system)
    if np.var(baseline) == 0 and np.var(system) == 0:  # e.g. both always solve the task: Welch has no t
        return Comparison(delta, (delta, delta), exact, min(len(baseline), len(system)),
                          "exact permutation test over seeds (no spread on either side)", exact)
    result = stats.ttest_ind(system, baseline, equal_var=False)
    ci = result.confidence_interval(0.95)
    return Comparison(delta, (float(ci.low), float(ci.high)), float(result.pvalue), min(len(baseline), len(system)),
                      f"Welch's t-test over seeds ({len(system)} vs {len(baseline)})", exact)


def permutation_p(baseline: Sequence[float], system: Sequence[float]) -> float:
    """Two-sided exact permutation test of the difference of means over every split of the
    seeds into two groups of these sizes: the smallest p a few seeds can give (0.1 for 3 against
    3), where a parametric test of runs that never vary would claim p = 0. Past
    ``EXACT_SPLITS`` splits (13 seeds a side), 100,000 random splits estimate it instead."""
    pooled, k = np.asarray([*baseline, *system], dtype=np.float64), len(system)
    n = len(pooled)
    if math.comb(n, k) <= EXACT_SPLITS:
        chosen = np.zeros((math.comb(n, k), n), dtype=bool)  # (splits, seeds): True on the system's side
        chosen[np.repeat(np.arange(len(chosen)), k), np.fromiter(
            itertools.chain.from_iterable(itertools.combinations(range(n), k)), dtype=np.int64)] = True
        # the last split in lexicographic order is the observed one (the system's seeds last)
    else:
        draws = np.argsort(np.random.default_rng(0).random((RANDOM_SPLITS, n)), axis=1)[:, :k]
        chosen = np.zeros((RANDOM_SPLITS + 1, n), dtype=bool)
        chosen[np.repeat(np.arange(RANDOM_SPLITS), k), draws.ravel()] = True
        chosen[-1, n - k:] = True  # the observed split, counted once: p = (b + 1) / (N + 1)
    apart = np.abs(chosen @ pooled / k - ~chosen @ pooled / (n - k))  # every split's |difference of means|
    observed = apart[-1]  # computed the same way as the others: rounding cannot drop it from its own count
    extreme = apart >= observed - 1e-9 * max(1.0, float(np.abs(pooled).max()))
    return float(np.mean(extreme))


def holm(p_values: Sequence[float], alpha: float = ALPHA) -> list[tuple[float, bool]]:
    """Holm's step-down correction for several comparisons: each p's adjusted value and whether
    it is significant at ``alpha`` (NaN stays NaN and is never significant)."""
    order = sorted((p, i) for i, p in enumerate(p_values) if not math.isnan(p))
    m, out, running = len(order), [(math.nan, False)] * len(p_values), 0.0
    for rank, (p, i) in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p))
        out[i] = (running, running < alpha)
    return out
