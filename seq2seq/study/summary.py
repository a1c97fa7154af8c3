"""A study's summary: per run, the mean ± sd over its finished seeds of every metric beside
what it cost, the paired test against the baseline, what trained it; per seed the same in
``summary_seeds.csv``; the plots the study asks for; one W&B run in the study's group.

Only finished runs (at the study's budget, with the study's options) give figures: the
others show their state and no numbers."""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import time
from pathlib import Path
from typing import Any

from PIL import Image

from seq2seq.files import atomic_write
from seq2seq.study.aggregate import PairTest, RunSummary, collect, compare, compare_pairs, differing_provenance
from seq2seq.study.plots import PLOTTERS
from seq2seq.study.spec import BUDGETS, RunSpec, Study
from seq2seq.tracking import make_tracker

DEFAULT_METRICS = {
    "translation": ["test_bleu_beam", "test_bleu_greedy", "test_chrf_beam", "valid_bleu_best"],
    "captioning": ["test_bleu4", "test_bleu4_greedy", "test_bleu4_nearest_neighbour", "test_bleu4_unseen_base"],
    "long_dependency": ["test_accuracy", "test_cross_entropy", "test_baseline_cross_entropy", "test_mse",
                        "test_mse_to_baseline", "solved"],
    "decode": ["test_bleu", "brevity_penalty", "mean_output_words", "sentences_per_second"],
}
COST = {  # what a run cost, beside its scores
    "translation": ["train_steps", "train_minutes", "total_minutes", "train_tokens_per_second", "parameters"],
    "captioning": ["train_steps", "train_minutes", "total_minutes", "images_per_second", "parameters"],
    "long_dependency": ["train_steps", "train_minutes", "train_steps_per_second", "clipped_fraction", "parameters"],
    "decode": [],
}
SIGNIFICANCE = ["tested_metric", "delta", "ci95_low", "ci95_high", "p_value", "p_holm", "significant", "p_exact"]
PAIR_COLUMNS = ["run", "against", *SIGNIFICANCE, "test"]  # summary_pairs.csv: the further pairs
PROVENANCE = ["precision", "processes", "device_name", "git_commit", "git_dirty", "torch_version"]
CI_KEY = "test_bleu_beam_ci95"  # sacreBLEU's bootstrap interval of a run's test BLEU (BLEU-4 for captioning)


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:,.3f}" if abs(value) < 10 else f"{value:,.2f}" if abs(value) < 1000 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _signed(value: float) -> str:
    """A difference with its sign, to two decimals, or two significant digits where smaller (MSE)."""
    return f"{value:+.2f}" if abs(value) >= 0.1 or value == 0 else f"{value:+.2g}"


def _mean_sd(run: RunSummary, metric: str) -> str:
    mean, sd = run.mean(metric), run.sd(metric)
    if mean is None:
        return "–"
    return _cell(mean) if sd is None else f"{_cell(mean)} ± {_cell(sd)}"


def _ci_halfwidth(run: RunSummary) -> float | None:
    """The mean half-width of the runs' bootstrap intervals (what test-set sampling alone moves a score by)."""
    widths = [(r.results[CI_KEY][1] - r.results[CI_KEY][0]) / 2 for r in run.finished if r.results.get(CI_KEY)]
    return sum(widths) / len(widths) if widths else None


def _significance(run: RunSummary | PairTest) -> list[Any]:
    c = run.comparison
    if c is None:
        return [None] * len(SIGNIFICANCE)
    return [run.metric, c.delta, c.ci95[0], c.ci95[1], c.p_value, run.adjusted_p, run.significant, c.p_exact]


def _pairs_markdown(pairs: list[PairTest], family: int) -> list[str]:
    """The further pairs' table (``summary.pairs``)."""
    lines = ["", f"Further paired tests (the study file's `summary.pairs`, tested as the rows above are against the "
                 f"baseline; one output against seeded runs: the weakest of its tests against each seed; Holm's "
                 f"correction for these {family} comparison(s), a family of their own):", "",
             "| run | tested against | Δ [95 % CI] | p (Holm) | significant |", "|---|---|---|---|---|"]
    for pair in pairs:
        c = pair.comparison
        cells = ([f"{pair.metric} {_signed(c.delta)} [{_signed(c.ci95[0])}, {_signed(c.ci95[1])}]",
                  f"{_cell(c.p_value)} ({_cell(pair.adjusted_p)})", "**yes**" if pair.significant else "no"]
                 if c else ["–", "–", pair.note or "–"])
        lines.append(f"| `{pair.run}` | `{pair.against}` | " + " | ".join(cells) + " |")
    return lines


def budget_line(study: Study, runs: list[RunSummary]) -> str:
    """What the finished runs recorded of their budget and schedule horizon, in words."""
    if study.task == "decode":
        return study.budget_line()
    done = [r.results for run in runs for r in run.finished  # runs trained to the study's budget
            if r.spec.stage is None and run.name not in study.run_budgets]
    if not done:
        return f"{study.budget_line()}; no run has finished yet"
    budgets = {tuple(sorted((r.get("budget") or {}).items())) for r in done}
    horizons = sorted({r.get("schedule_horizon") for r in done if r.get("schedule_horizon")})
    steps = sorted({r.get("train_steps") for r in done if r.get("train_steps") is not None})
    if len(budgets) != 1:
        listed = "; ".join(str(dict(b)) for b in budgets)
        return f"the finished runs recorded different budgets ({listed}): not comparable"
    budget = dict(next(iter(budgets)))
    words = _budget_words(budget) or "no recorded budget"
    trained = "an unrecorded number of steps" if not steps else f"{steps[0]:,} steps" if len(steps) == 1 else \
        f"{steps[0]:,}–{steps[-1]:,} steps (not equal steps)"
    horizon = f"; schedule horizon {horizons[0]:,} steps" if len(horizons) == 1 else (  # a constant rate has one too
        f"; schedule horizons {horizons[0]:,}–{horizons[-1]:,} steps" if horizons else "")
    return f"every finished run recorded a budget of {words} and trained {trained}{horizon} ({len(done)} runs)"


def _budget_words(budget: dict[str, float]) -> str:
    return ", ".join(f"{v:g} {BUDGETS.get(k, k)}" for k, v in budget.items())


def machine_line(runs: list[RunSummary]) -> str:
    """The machines, torch versions and precisions the finished runs recorded."""
    counts: dict[str, int] = {}
    for run in runs:
        for r in run.finished:
            key = (f"{r.results.get('device_name', 'not recorded')}, {r.results.get('precision', '?')}, "
                   f"torch {r.results.get('torch_version', '?')}, {r.results.get('processes', 1)} process(es)")
            counts[key] = counts.get(key, 0) + 1
    return "; ".join(f"{k} ({n} run{'s' * (n > 1)})" for k, n in counts.items()) or "no run has finished yet"


def write_summary(study: Study, folder: Path, specs: list[RunSpec], states: list[str],
                  track: bool = True) -> dict[str, Path]:
    """Write ``summary.md``, ``summary.csv``, ``summary_seeds.csv`` and the plots into ``folder``;
    log to W&B unless ``track`` is False (a rebuild that only checks the tables)."""
    metrics = study.metrics or DEFAULT_METRICS[study.task]
    cost = [c for c in COST[study.task] if c not in metrics]
    runs = collect(study, folder, specs, states)
    family = compare(study, runs, metrics)
    pairs, pair_family = compare_pairs(study, runs, metrics)
    has_ci = any(r.results.get(CI_KEY) for run in runs for r in run.finished)

    columns = ["run", "state", "seeds", *(f"{m}_{s}" for m in metrics for s in ("mean", "sd")),
               *(f"{c}_mean" for c in cost), *(["bootstrap_ci95_halfwidth"] if has_ci else []),
               *SIGNIFICANCE, *PROVENANCE]
    rows = [[run.name, run.state, len(run.finished), *(x for m in metrics for x in (run.mean(m), run.sd(m))),
             *(run.mean(c) for c in cost), *([_ci_halfwidth(run)] if has_ci else []), *_significance(run),
             *(run.provenance(k) for k in PROVENANCE)] for run in runs]
    seed_columns = ["run", "seed", "state", *metrics, *cost, *([f"{CI_KEY}_low", f"{CI_KEY}_high"] if has_ci else []),
                    "delta", "ci95_low", "ci95_high", "p_value", *PROVENANCE]
    seed_rows = []
    for run in runs:
        for r in run.replicates:  # an ensemble (no seed of its own): one row per seed it was tested against
            for seed, c in ([(r.spec.seed, run.per_seed.get(r.spec.seed))] if r.spec.seed is not None or not
                            run.per_seed else [(f"all vs {s}", c) for s, c in run.per_seed.items()]):
                ci = r.results.get(CI_KEY) or [None, None]
                seed_rows.append([run.name, seed, r.state, *(r.results.get(k) for k in [*metrics, *cost]),
                                  *(ci if has_ci else []), *([c.delta, c.ci95[0], c.ci95[1], c.p_value] if c else
                                                             [None] * 4), *(r.results.get(k) for k in PROVENANCE)])
    written = {"csv": folder / "summary.csv", "seeds_csv": folder / "summary_seeds.csv", "md": folder / "summary.md"}
    tables = [(written["csv"], columns, rows), (written["seeds_csv"], seed_columns, seed_rows)]
    (folder / "summary_pairs.csv").unlink(missing_ok=True)  # written again below if the study still has pairs
    if pairs:
        written["pairs_csv"] = folder / "summary_pairs.csv"
        tables.append((written["pairs_csv"], PAIR_COLUMNS, [[p.run, p.against, *_significance(p),
                                                             p.comparison.test if p.comparison else None]
                                                            for p in pairs]))
    for path, head, body in tables:
        table = io.StringIO(newline="")
        csv.writer(table).writerows([head, *body])
        atomic_write(path, table.getvalue())
    plots = {kind: folder / f"{kind}.png" for kind in study.plots}
    for kind, path in list(plots.items()):
        picture = PLOTTERS[kind](study, runs, metrics)
        if picture is None:
            del plots[kind]
        else:
            atomic_write(path, lambda f, picture=picture: picture.save(f, format="PNG"))
    lines = _markdown(study, runs, metrics, cost, has_ci, family)
    lines += _pairs_markdown(pairs, pair_family) if pairs else []
    lines += [""] + [f"![{kind}]({path.name})" for kind, path in plots.items()]
    atomic_write(written["md"], "\n".join(lines) + "\n")
    if track:
        _log_to_wandb(study, folder, specs, columns, rows, plots)
    return {**written, **plots}


def _markdown(study: Study, runs: list[RunSummary], metrics: list[str], cost: list[str], has_ci: bool,
              family: int) -> list[str]:
    seeds = (f"seeds {', '.join(map(str, study.seeds))} (each run once per seed; cells are mean ± sample sd over "
             f"the finished seeds)" if study.seeds else "one seeded run per row (its config's train.seed)")
    lines = [f"# Study `{study.name}`", "", study.description, "",
             f"- Comparison: {budget_line(study, runs)}.", f"- Replicates: {seeds}.",
             f"- Trained on: {machine_line(runs)}.",
             f"- Command: `python experiments/study.py {study.path.stem}`; written {time.strftime('%Y-%m-%d %H:%M')}."]
    tested = [r for r in runs if r.comparison is not None]
    measured = list(dict.fromkeys(r.metric for r in tested)) or metrics[:1]
    if study.baseline:
        grid = "" if study.baseline in study.runs else " at the same grid point"
        tests = "; ".join(dict.fromkeys(r.comparison.test for r in tested))
        lines.append(f"- Baseline: `{study.baseline}`; {' or '.join(measured)} of every other run against it{grid}"
                     + (f" ({tests}); significant: p < 0.05 after Holm's correction for {family} comparison(s), "
                        f"a row not tested yet counting as p = 1" if tested else " (no finished pair yet)") + "."
                     + (" Δ of a paired test is the difference of the pooled corpus scores (every seed's outputs "
                        "joined), which can differ from the difference of the per-seed means beside it."
                        if any(r.comparison.seeds > 1 and "pooled" in r.comparison.test for r in tested) else "")
                     + (" Beside a test over seeds, \"exact\" is the exact permutation test's p before Holm's "
                        "correction (no normality "
                        "assumed; with n seeds a side it cannot fall below 2 / C(2n, n): 0.1 for 3, 0.008 for 5): "
                        "where only Welch's p is small, the finding rests on the seeds' spread being normal."
                        if any(r.comparison.p_exact is not None and "Welch" in r.comparison.test for r in tested)
                        else ""))
    head = ["run", "state", "seeds", *metrics, *cost, *(["BLEU bootstrap ±95 %"] if has_ci else []),
            *([f"Δ{f' {measured[0]}' if len(measured) == 1 else ''} [95 % CI]", "p (Holm)", "significant"]
              if study.baseline else [])]
    lines += ["", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for run in runs:
        is_base = study.baseline is not None and run.name.partition(",")[0] == study.baseline
        cells = [f"`{run.name}`" + (" (baseline)" if is_base else ""), run.state,
                 str(len(run.finished)), *(_mean_sd(run, m) for m in [*metrics, *cost])]
        if has_ci:
            cells.append(_cell(_ci_halfwidth(run)))
        if study.baseline:
            c = run.comparison
            which = f"{run.metric}: " if len(measured) > 1 else ""
            shown = c is not None and c.p_exact is not None and c.p_exact != c.p_value
            exact = f"; exact {_cell(c.p_exact)} before Holm" if shown else ""
            cells += ([f"{which}{_signed(c.delta)} [{_signed(c.ci95[0])}, {_signed(c.ci95[1])}]", f"{_cell(c.p_value)} "
                       f"({_cell(run.adjusted_p)}){exact}", "**yes**" if run.significant else "no"] if c else
                      ["–", "–", run.note or "–"] if not is_base else ["–", "–", "–"])
        lines.append("| " + " | ".join(cells) + " |")
    differ = differing_provenance(runs)
    for key, seen in differ.items():
        lines.append(f"\n**Provenance differs: {key}.** " + "; ".join(
            f"`{v}`: {', '.join(who[:6])}{' …' if len(who) > 6 else ''}" for v, who in seen.items()))
    lines += ["", "Runs:"] + [f"- `{run.name}`: " + (" ".join(
        ([run.spec.stage.describe()] if run.spec.stage else [])
        + ([f"config `{run.spec.config_file.name}`"] if run.spec.config_file and not run.spec.stage else [])
        + [f"`{o}`" for o in run.spec.overrides]
        + ([f"(its own budget: {_budget_words(study.run_budgets[run.name])})"] if run.name in study.run_budgets
           else []))
        or "the base config") for run in runs]
    return lines


def _log_to_wandb(study: Study, folder: Path, specs: list[RunSpec], columns: list[str], rows: list[list[Any]],
                  plots: dict[str, Path]) -> None:
    """One summary run per study in the study's W&B group: the table and the plots."""
    tracking = dataclasses.replace(specs[0].config.tracking, name=f"{study.folder}/summary")
    (folder / "wandb_id.txt").unlink(missing_ok=True)  # each summary is a new W&B run
    tracker = make_tracker(tracking, folder, {"study": study.name, "runs": {s.folder: s.overrides for s in specs}},
                           job_type="study-summary")
    tracker.table("study/summary", columns, [[_cell(v) for v in row] for row in rows], step=0)
    if plots:
        tracker.images("study/plots", [(Image.open(p).convert("RGB"), kind) for kind, p in plots.items()], step=0)
    tracker.finish()
