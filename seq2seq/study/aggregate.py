"""A study's runs as the summary sees them: each run's seed replicates with their state, the
figures of the finished ones only (mean, sd, range), what trained them, and the paired test of
the first metric both recorded against the baseline (see :mod:`seq2seq.significance`)."""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from sacrebleu.metrics import BLEU, CHRF
from sacrebleu.metrics.base import Metric

from seq2seq.files import REFERENCES, read_lines, read_references
from seq2seq.metrics import CIDErD
from seq2seq.provenance import FIELDS
from seq2seq.significance import Comparison, holm, paired_test, welch_test
from seq2seq.study.spec import RunSpec, Study


@dataclass
class Replicate:
    """One seed of a run: its folder, state, and results (empty unless finished)."""

    spec: RunSpec
    folder: Path
    state: str
    results: dict[str, Any]


@dataclass
class RunSummary:
    name: str
    replicates: list[Replicate]
    comparison: Comparison | None = None  # ``metric`` against the baseline, pooled over seeds
    metric: str = ""  # the study's first metric that this run and its baseline both recorded
    adjusted_p: float = math.nan  # Holm-corrected
    significant: bool = False
    per_seed: dict[int | None, Comparison] = field(default_factory=dict)
    note: str = ""  # why there is no comparison

    @property
    def spec(self) -> RunSpec:
        return self.replicates[0].spec

    @property
    def finished(self) -> list[Replicate]:
        return [r for r in self.replicates if r.state == "finished"]

    @property
    def complete(self) -> bool:
        """Every seed finished: the row the study asked for, ready for its test."""
        return all(r.state == "finished" for r in self.replicates)

    @property
    def state(self) -> str:
        states = [r.state for r in self.replicates]
        if len(set(states)) == 1:
            return states[0]
        counts = {s: states.count(s) for s in dict.fromkeys(states)}
        return ", ".join(f"{n}/{len(states)} {s}" for s, n in counts.items())

    def values(self, metric: str) -> list[float]:
        """The metric of every finished seed that has a finite value of it (booleans count as 0/1)."""
        out = []
        for r in self.finished:
            v = r.results.get(metric)
            if isinstance(v, (int, float)) and math.isfinite(v):
                out.append(float(v))
        return out

    def recorded(self, metric: str) -> bool:
        """Every seed finished with a finite value of the metric: a test of this row uses all
        its seeds, never the ones that happened to record it (a diverged seed is the one missing)."""
        return self.complete and len(self.values(metric)) == len(self.replicates)

    def mean(self, metric: str) -> float | None:
        v = self.values(metric)
        return statistics.fmean(v) if v else None

    def sd(self, metric: str) -> float | None:
        v = self.values(metric)
        return statistics.stdev(v) if len(v) > 1 else None

    def provenance(self, key: str) -> Any:
        """A provenance field of the finished seeds: their common value, or the distinct ones joined."""
        values = list(dict.fromkeys(str(r.results.get(key)) for r in self.finished if key in r.results))
        return values[0] if len(values) == 1 else " + ".join(values) if values else None


def collect(study: Study, folder: Path, specs: list[RunSpec], states: list[str]) -> list[RunSummary]:
    """Group the runs' seeds; read results of finished seeds only (a changed, partial or failed
    folder may hold figures of another config or an earlier horizon)."""
    runs: dict[str, RunSummary] = {}
    for spec, state in zip(specs, states):
        run_dir = folder / spec.folder
        results = _read(run_dir / "results.json") if state == "finished" else {}
        run = runs.setdefault(spec.name, RunSummary(spec.name, []))
        run.replicates.append(Replicate(spec, run_dir, state, results))
    return list(runs.values())


def _read(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except ValueError:
        return {}


def scored_outputs(task: str, metric: str, results: dict[str, Any]) -> tuple[str, Callable[[], Metric]] | None:
    """The hypotheses file a metric was computed from and its sacreBLEU metric, where a paired
    test of outputs applies; None for per-run figures (accuracy, MSE, validation scores)."""
    beam = f"test.beam{results.get('beam')}.txt"
    table: dict[str, dict[str, tuple[str, Callable[[], Metric]]]] = {
        "translation": {"test_bleu_beam": (beam, BLEU), "test_chrf_beam": (beam, CHRF),
                        "test_bleu_greedy": ("test.greedy.txt", BLEU)},
        "captioning": {"test_bleu4": (beam, lambda: BLEU(lowercase=True)), "test_cider_d": (beam, CIDErD),
                       "test_bleu4_greedy": ("test.greedy.txt", lambda: BLEU(lowercase=True))},
        "decode": {"test_bleu": ("test.hyp.txt", BLEU), "test_chrf": ("test.hyp.txt", CHRF)},
    }
    return table.get(task, {}).get(metric)


def compare(study: Study, runs: list[RunSummary], metrics: list[str]) -> int:
    """Test every run against the study's baseline on the first of ``metrics`` both recorded
    (a grid over tasks has accuracy at one point, MSE at another): paired over the outputs on
    the test set where the metric comes from outputs, else Welch's t-test over seeds; per
    seed too; then Holm's correction over every row that has a baseline. Only rows whose every
    seed finished, and whose baseline's did, are tested: the others show their means, untested,
    and count in Holm's family with p = 1, so an interim summary never claims more than the
    final one will. Returns the family's size."""
    by_name = {r.name: r for r in runs}
    family = []
    for run in runs:
        base = by_name.get(study.baseline_of(run.name) or "")
        if base is None:
            continue
        family.append(run)
        run.adjusted_p, run.significant = math.nan, False
        run.comparison, run.per_seed, run.metric, run.note = paired_against(study, metrics, base, run, "the baseline")
    return _holm(family)


@dataclass
class PairTest:
    """One of a study file's further pairs (``summary.pairs``): ``run`` tested against ``against``."""

    run: str
    against: str
    comparison: Comparison | None = None
    metric: str = ""
    note: str = ""  # why there is no comparison
    adjusted_p: float = math.nan  # Holm-corrected over the pairs
    significant: bool = False


def compare_pairs(study: Study, runs: list[RunSummary], metrics: list[str]) -> tuple[list[PairTest], int]:
    """The study file's further pairs, each tested as a run is against the baseline; Holm's
    correction over the pairs, a family of their own; and that family's size."""
    by_name = {r.name: r for r in runs}
    pairs = [PairTest(run, against) for run, against in study.pairs]
    for pair in pairs:
        pair.comparison, _, pair.metric, pair.note = paired_against(
            study, metrics, by_name[pair.against], by_name[pair.run], f"`{pair.against}`")
    return pairs, _holm(pairs)


def paired_against(study: Study, metrics: list[str], base: RunSummary, run: RunSummary,
                 base_words: str) -> tuple[Comparison | None, dict, str, str]:
    """``run`` tested against ``base``: the pooled comparison, the per-seed ones, the metric and
    a note saying why there is none (``base_words`` names ``base`` in it)."""
    waiting = next((r for r in (run, base) if not r.complete), None)
    if waiting is not None:  # a test on the seeds done so far would join Holm's family with less
        # evidence than the study asked for, and its p value would move as seeds arrive
        return None, {}, "", (f"not tested: {len(waiting.finished)}/{len(waiting.replicates)} seeds of "
                              f"{base_words if waiting is base else 'this run'} finished")
    metric = next((m for m in metrics if run.recorded(m) and base.recorded(m)), "")
    if not metric:
        return None, {}, "", f"no metric recorded by every seed of both this run and {base_words}"
    try:
        comparison, per_seed = _compare(study.task, metric, base, run)
    except (OSError, ValueError) as err:  # missing or mismatched outputs: say so, never guess
        return None, {}, metric, f"no paired test: {err}"
    return comparison, per_seed, metric, ""


def _holm(tested: list[Any]) -> int:
    """Holm's correction over ``tested`` (each with ``comparison``, ``adjusted_p``, ``significant``;
    one not tested counts as p = 1); the family's size."""
    untested = [t.comparison is None for t in tested]
    p_values = [1.0 if skip else t.comparison.p_value for t, skip in zip(tested, untested)]
    for t, skip, (p, significant) in zip(tested, untested, holm(p_values)):
        if not skip:
            t.adjusted_p, t.significant = p, significant
    return sum(not math.isnan(p) for p in p_values)  # holm leaves NaN (no test possible) out


def _compare(task: str, metric: str, base: RunSummary, run: RunSummary) -> tuple[Comparison, dict]:
    scored = scored_outputs(task, metric, base.finished[0].results)
    if scored is None:
        return welch_test(base.values(metric), run.values(metric)), {}
    # records from before a run kept these outputs (captioning's greedy captions) have none to pair
    files = [r.folder / scored_outputs(task, metric, r.results)[0] for r in [*base.finished, *run.finished]]
    missing = next((f for f in files if not f.is_file()), None)
    if missing is not None:
        welch = welch_test(base.values(metric), run.values(metric))
        return replace(welch, test=f"{welch.test}; no paired test: {missing.name} was not kept"), {}
    pairs = {r.spec.seed: r for r in base.finished}
    matched = [(pairs[r.spec.seed], r) for r in run.finished if r.spec.seed in pairs]
    ensemble = run.spec.seed is None and bool(run.finished) and None not in pairs
    if ensemble:  # one output against every seed's model
        matched = [(b, run.finished[0]) for b in base.finished]
    against_one = None in pairs and run.spec.seed is not None  # every seed's model against one output
    if against_one:
        matched = [(pairs[None], r) for r in run.finished]
        ensemble = True  # likewise: one output, tested once per seed of the other side
    if not matched:
        raise ValueError("no seed finished for both runs")
    refs = read_references(matched[0][0].folder)
    hyps: list[tuple[list[str], list[str]]] = []
    for b, s in matched:
        if read_references(s.folder) != refs:
            raise ValueError(f"{s.folder / REFERENCES} is another test set than {b.folder / REFERENCES}")
        files = [scored_outputs(task, metric, x.results)[0] for x in (b, s)]  # type: ignore[index]
        hyps.append((read_lines(b.folder / files[0]), read_lines(s.folder / files[1])))
    per_seed = {(s if against_one else b).spec.seed: paired_test([h[0]], [h[1]], refs, scored[1])
                for (b, s), h in zip(matched, hyps)}
    if ensemble and len(hyps) > 1:  # its copies pooled would count each sentence as seeds-many: p too small
        least = least_significant(list(per_seed.values()))
        return replace(least, test=f"the least significant of its paired tests against each of the "
                                   f"{len(hyps)} seeds' models ({least.test})"), per_seed
    pooled = paired_test([h[0] for h in hyps], [h[1] for h in hyps], refs, scored[1]) if len(hyps) > 1 \
        else next(iter(per_seed.values()))
    return pooled, per_seed


def least_significant(comparisons: list[Comparison]) -> Comparison:
    """The weakest of several tests of one output: the largest p; where p values tie (every
    test at the randomisation's floor), the difference nearest zero."""
    return max(comparisons, key=lambda c: (c.p_value, -abs(c.delta)))


def differing_provenance(runs: list[RunSummary]) -> dict[str, dict[str, list[str]]]:
    """Provenance fields whose value is not the same for every finished seed of every run:
    field -> value -> the runs (seeds) with it."""
    out: dict[str, dict[str, list[str]]] = {}
    for key in FIELDS:
        seen: dict[str, list[str]] = {}
        for run in runs:
            for r in run.finished:
                seen.setdefault(str(r.results.get(key)), []).append(r.spec.label)
        if len(seen) > 1:
            out[key] = seen
    return out
