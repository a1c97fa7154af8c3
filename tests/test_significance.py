"""Paired tests through sacreBLEU, pooled over seeds; Holm's correction; Welch's test."""

import itertools
import math
import random

import pytest
from sacrebleu.metrics import BLEU

from seq2seq.metrics import CIDErD, ref_streams
from seq2seq.significance import holm, paired_test, permutation_p, welch_test

WORDS = "le chat noir mange un poisson rouge dans la maison grande petite".split()


def _corpus(n=300, seed=0):
    rng = random.Random(seed)
    return [[" ".join(rng.choices(WORDS, k=rng.randint(4, 9))) for _ in range(rng.randint(1, 3))] for _ in range(n)]


def _noisy(refs, keep, seed):
    rng = random.Random(seed)
    return [" ".join(w if rng.random() < keep else rng.choice(WORDS) for w in r[0].split()) for r in refs]


def test_a_system_against_itself_is_no_finding():
    refs = _corpus()
    hyps = _noisy(refs, 0.7, 1)
    c = paired_test([hyps], [hyps], refs, BLEU)
    assert c.delta == 0 and c.ci95 == (0.0, 0.0) and c.p_value == 1.0 and c.seeds == 1


def test_a_clearly_better_system_is_found_and_seeds_pool():
    refs = _corpus()
    worse = [_noisy(refs, 0.6, s) for s in (1, 2)]
    better = [_noisy(refs, 0.8, s + 10) for s in (1, 2)]
    c = paired_test(worse, better, refs, BLEU)
    assert c.seeds == 2 and c.delta > 5 and 0 < c.ci95[0] <= c.delta <= c.ci95[1] and c.p_value < 0.01
    assert "2 pooled seed(s)" in c.test
    single = paired_test(worse[:1], better[:1], refs, BLEU)
    assert single.ci95[1] - single.ci95[0] > c.ci95[1] - c.ci95[0]  # twice the sentences: a narrower interval
    with pytest.raises(ValueError, match="replicates"):
        paired_test(worse, better[:1], refs, BLEU)


def test_cider_d_is_tested_like_bleu():
    """CIDEr-D's corpus score is a mean of per-caption scores: sacreBLEU's resampling applies, and
    pooling seeds (the test set repeated) leaves its document frequencies as they were."""
    refs = _corpus()
    worse = [_noisy(refs, 0.6, s) for s in (1, 2)]
    better = [_noisy(refs, 0.8, s + 10) for s in (1, 2)]
    c = paired_test(worse, better, refs, CIDErD)
    assert c.delta > 0 and 0 < c.ci95[0] <= c.delta <= c.ci95[1] and c.p_value < 0.01
    assert paired_test([better[0]], [better[0]], refs, CIDErD).p_value == 1.0
    scores = [CIDErD().corpus_score(h, ref_streams(refs)).score for h in better]
    pooled = CIDErD().corpus_score(better[0] + better[1], ref_streams(refs + refs)).score
    assert pooled == pytest.approx(sum(scores) / 2, rel=1e-9) and scores[0] > 0


def test_systems_that_differ_in_one_item_are_no_finding():
    """Every swap of the one differing item leaves the difference as observed: no evidence.
    sacreBLEU counts only larger differences, which would give p = 1/10,001."""
    refs = _corpus(60)
    base = _noisy(refs, 0.7, 1)
    system = [refs[0][0], *base[1:]]  # one sentence made perfect
    c = paired_test([base], [system], refs, BLEU)
    assert c.delta > 0 and c.p_value == 1.0


def test_randomisation_draws_as_sacrebleu_does_where_no_trial_ties():
    from sacrebleu.significance import PairedTest

    refs = _corpus(80)
    base, system = _noisy(refs, 0.6, 1), _noisy(refs, 0.7, 2)
    _, theirs = PairedTest([("baseline", base), ("system", system)], {"bleu": BLEU()}, ref_streams(refs),
                           test_type="ar", n_samples=10_000)()
    baseline_result, system_result = theirs["BLEU"]
    ours = paired_test([base], [system], refs, BLEU)
    assert ours.p_value == pytest.approx(system_result.p_value) and 0.0001 < ours.p_value < 1
    assert ours.delta == pytest.approx(system_result.score - baseline_result.score)


def test_two_seeds_of_one_noisy_system_are_usually_no_finding():
    refs = _corpus()
    c = paired_test([_noisy(refs, 0.7, 1)], [_noisy(refs, 0.7, 2)], refs, BLEU)
    assert c.p_value > 0.01 and c.ci95[0] < 0 < c.ci95[1]


def test_holm_steps_down():
    # sorted p 0.01, 0.02, 0.04 with m = 3: adjusted 0.03, 0.04, 0.04
    out = holm([0.04, 0.01, 0.02, math.nan])
    assert [round(p, 6) for p, _ in out[:3]] == [0.04, 0.03, 0.04] and [s for _, s in out] == [True, True, True, False]
    assert holm([0.03, 0.04]) == [(0.06, False), (0.06, False)]  # neither survives two comparisons


def test_welch_over_seeds():
    c = welch_test([0.10, 0.12, 0.11], [0.50, 0.52, 0.49])
    assert c.delta == pytest.approx(0.3933, abs=1e-3) and c.p_value < 0.001 and c.ci95[0] > 0
    assert math.isnan(welch_test([0.1], [0.5]).p_value)  # one seed: no spread to test against
    assert welch_test([1.0, 1.0], [1.0, 1.0]).p_value == 1.0


def test_runs_that_never_vary_get_the_exact_permutation_p_not_zero():
    # 3 seeds against 3 that always score 0 and 1: of the 20 splits only the observed one and its
    # mirror are as extreme, p = 0.1; a t-test of zero spread would claim p = 0
    never = welch_test([0.0, 0.0, 0.0], [1.0, 1.0, 1.0])
    assert never.p_value == pytest.approx(0.1) and never.delta == 1.0 and "permutation" in never.test
    assert permutation_p([1.0, 2.0, 3.0], [4.0, 5.0, 6.0]) == pytest.approx(0.1)
    assert permutation_p([0.0, 0.0], [1.0, 1.0, 1.0]) == pytest.approx(0.1)  # 1 split of C(5, 3) = 10
    assert permutation_p([1.0, 2.0], [1.0, 2.0]) == 1.0


def test_welch_reports_the_exact_permutation_p_beside_its_own():
    # three seeds a side that barely vary: Welch's normal spread makes p tiny, while no test free
    # of that assumption can go below 0.1 with 3 against 3; both are reported
    c = welch_test([0.0, 0.0, 0.002], [0.996, 0.998, 1.0])
    assert c.p_value < 1e-5 and c.p_exact == pytest.approx(0.1)
    five = welch_test([0.1, 0.2, 0.15, 0.12, 0.18], [0.9, 0.8, 0.85, 0.95, 0.88])
    assert five.p_exact == pytest.approx(2 / 252)  # the floor for 5 against 5: 2 of C(10, 5) splits
    assert permutation_p([0.1, 0.5, 0.3], [0.2, 0.4, 0.35]) == pytest.approx(
        _brute_force_permutation_p([0.1, 0.5, 0.3], [0.2, 0.4, 0.35]))


def test_the_permutation_p_counts_the_observed_split_at_any_scale_and_samples_past_a_million_splits():
    # large values: the observed split's own difference, summed in another order, once fell
    # below the observed one and p came out 0 (an outside read found it)
    b, s = [5931.8, 3936.0, 1703.5], [25022.4, 29820.8, 27705.2, 25396.2, 28602.9]
    assert permutation_p(b, s) == pytest.approx(1 / 56) == _brute_force_permutation_p(b, s)
    rng = random.Random(1)
    for _ in range(30):
        scale = rng.choice([1.0, 1e4, 1e6])
        b = [round(rng.random() * scale, 1) for _ in range(rng.randint(2, 5))]
        s = [round(rng.random() * scale, 1) for _ in range(rng.randint(2, 5))]
        assert permutation_p(b, s) == pytest.approx(_brute_force_permutation_p(b, s))
    many = permutation_p([0.1 * i for i in range(13)], [0.1 * i + 5 for i in range(13)])  # C(26, 13) = 10.4 M
    assert 0 < many <= 2 / 100_001  # sampled: never 0, the observed split counted once


def _brute_force_permutation_p(baseline, system):
    pooled, k = [*baseline, *system], len(system)
    observed = abs(sum(system) / k - sum(baseline) / len(baseline))
    splits = list(itertools.combinations(range(len(pooled)), k))
    extreme = sum(abs(sum(pooled[i] for i in s) / k - sum(v for i, v in enumerate(pooled) if i not in s)
                      / (len(pooled) - k)) >= observed - 1e-12 for s in splits)
    return extreme / len(splits)


def test_an_ensemble_row_shows_its_weakest_test_the_smallest_gain_where_p_values_tie():
    from seq2seq.significance import Comparison
    from seq2seq.study.aggregate import least_significant

    def test(delta, p):
        return Comparison(delta, (delta - 1, delta + 1), p, 1, "paired")

    floor = [test(3.73, 1e-4), test(4.29, 1e-4), test(3.46, 1e-4)]
    assert least_significant(floor).delta == 3.46
    assert least_significant([test(5.0, 0.02), test(1.0, 1e-4)]).delta == 5.0  # the largest p first
