"""The plots a study's summary can show (``summary.plots`` in a study file): each takes the
study, its runs (:class:`~seq2seq.study.aggregate.RunSummary`: results of finished seeds only)
and the summary's metrics, and returns a picture or None when no run has what it draws. Seed
replicates give error bars (sd) and bands (min–max); drawings of one model (attention,
gradient flow) show each run's first finished seed, the gradient norm along training its
first seed that logged one, a failed (diverged) one too."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from seq2seq.plotting import attention_heatmap, figure_image, image_grid, plt
from seq2seq.study.aggregate import Replicate, RunSummary
from seq2seq.study.spec import Study
from seq2seq.tracking import logged_rows


def _first(run: RunSummary) -> Replicate | None:
    return run.finished[0] if run.finished else None


def _replicates(run: RunSummary, n: int) -> str:
    """How many replicates a curve averages, or what an ensemble's one output joins."""
    models = run.finished[0].results.get("models", []) if run.finished else []
    if run.spec.seed is None and len(models) > 1:
        return f"ensemble of {len(models)}"
    return f"{n} seed{'s' * (n > 1)}"


def _bleu_by_length(study: Study, runs: list[RunSummary], metrics: list[str]) -> Image.Image | None:
    """Test BLEU per source-length bucket (words), one curve per run (Bahdanau et al., Figure 2):
    the mean over seeds, with the seeds' range as a band."""
    curves = {run.name: [c for r in run.finished if (c := r.results.get("test_bleu_by_source_length"))]
              for run in runs}
    curves = {k: v for k, v in curves.items() if v}
    if not curves:
        return None
    counts = next(iter(curves.values()))[0]
    buckets = list(counts)
    fig, ax = plt.subplots(figsize=(7, 4))
    by_name = {run.name: run for run in runs}
    for name, seeds in curves.items():
        values = [[c[b]["bleu"] for c in seeds if b in c] for b in buckets]
        x = [i for i, v in enumerate(values) if v]
        mean = [float(np.mean(values[i])) for i in x]
        line, = ax.plot(x, mean, marker="o", label=f"{name} ({_replicates(by_name[name], len(seeds))})")
        if len(seeds) > 1:
            ax.fill_between(x, [min(values[i]) for i in x], [max(values[i]) for i in x], color=line.get_color(),
                            alpha=0.2, linewidth=0)
    ax.set_xticks(range(len(buckets)), [f"{b}\n({counts[b]['sentences']})" for b in buckets])
    ax.set_xlabel("source sentence length in words (test sentences)")
    ax.set_ylabel("test BLEU")
    ax.set_title(f"{study.name}: BLEU by source length")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return figure_image(fig)


def _metrics(study: Study, runs: list[RunSummary], metrics: list[str]) -> Image.Image | None:
    """The first summary metric of every run as a bar: the mean, the sd as an error bar, each seed a dot."""
    shown = [run for run in runs if run.values(metrics[0])]
    if not shown:
        return None
    fig, ax = plt.subplots(figsize=(7, max(2.0, 0.6 + 0.45 * len(shown))))
    means = [run.mean(metrics[0]) for run in shown]
    errors = [run.sd(metrics[0]) or 0.0 for run in shown]
    ax.barh(range(len(shown)), means, xerr=errors, color="#4c72b0", ecolor="black", capsize=3)
    for i, run in enumerate(shown):
        values = run.values(metrics[0])
        if len(values) > 1:
            ax.plot(values, [i] * len(values), "o", color="#dd8452", markersize=3)
        label = f" {means[i]:.1f}" + (f" ± {errors[i]:.1f} ({len(values)} seeds)" if len(values) > 1 else "")
        ax.text(max(values + [means[i] + errors[i]]), i, label, va="center", fontsize=8)
    ax.set_yticks(range(len(shown)), [run.name for run in shown], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(metrics[0])
    ax.set_title(study.name)
    return figure_image(fig)


def _search(study: Study, runs: list[RunSummary], metrics: list[str]) -> Image.Image | None:
    """Decode studies: BLEU against beam width, one curve per length penalty; validation (where a
    setting is chosen) beside test."""
    splits = {"valid_bleu": "validation BLEU", "test_bleu": "test BLEU"}
    points: dict[str, dict[float, list[tuple[int, float]]]] = {key: {} for key in splits}
    for run in runs:
        r = _first(run).results if run.finished else {}
        for key in splits:
            if key in r:
                points[key].setdefault(r["length_penalty"], []).append((r["beam"], r[key]))
    shown = [key for key in splits if points[key]]
    if not shown:
        return None
    fig, axes = plt.subplots(1, len(shown), figsize=(7 * len(shown), 4), squeeze=False)
    for ax, key in zip(axes[0], shown):
        for penalty, pts in sorted(points[key].items()):
            pts.sort()
            ax.plot([b for b, _ in pts], [v for _, v in pts], marker="o", label=f"length penalty {penalty:g}")
        ax.set_xscale("log")
        ax.minorticks_off()  # the beams are the ticks
        beams = sorted({b for pts in points[key].values() for b, _ in pts})
        ax.set_xticks(beams, [str(b) for b in beams])
        ax.set_xlabel("beam width")
        ax.set_ylabel(splits[key])
        ax.set_title(f"{study.name}: {splits[key]}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return figure_image(fig)


def _attention(study: Study, runs: list[RunSummary], metrics: list[str]) -> Image.Image | None:
    """The attention of the same two test sentences (greedy), one column per run with attention:
    its first finished seed that has its weights (a record restored from ``--restore`` has none)."""
    from seq2seq.experiment import spread
    from seq2seq.tasks.translator import Translator

    with_weights = (next((r for r in run.finished if (r.folder / "checkpoints").is_dir()), None) for run in runs)
    shown = [r for r in with_weights if r is not None and r.spec.config.model.attention != "none"
             and (r.folder / "test.src.txt").is_file()]  # an ensemble has no checkpoints of its own
    if study.task != "translation" or not shown:
        return None
    sources = (shown[0].folder / "test.src.txt").read_text(encoding="utf-8").splitlines()
    chosen = spread([s for s in sources if 6 <= len(s.split()) <= 10], 2)
    if not chosen:
        return None
    columns = []
    for r in shown:
        translator = Translator.load(r.folder, device=r.spec.config.train.device)
        column = []
        for tr in translator.translate(chosen, beam=1):
            if tr.attention is not None and tr.candidates:
                tgt = translator.tgt_tok.pieces(tr.candidates[0].tokens) + ["</s>"]
                column.append(attention_heatmap(tr.attention, tr.src_pieces, tgt, r.spec.label))
        columns.append(column)
    rows = [list(row) for row in zip(*columns)]
    return image_grid(rows) if rows and rows[0] else None


def _flow_records(run_dir: Path) -> list[dict[str, Any]]:
    """The gradient-flow curves a run logged (train.gradient_flow_every) in step order, each with
    the scalars of its probe (the sentences per bucket among them)."""
    path = run_dir / "metrics.jsonl"
    scalars = {r["step"]: r for r in logged_rows(path, "gradient_flow/seconds")}
    return [{**scalars.get(r["step"], {}), **r} for r in logged_rows(path, "gradient_flow/by_distance")]


def _gradient_flow(study: Study, runs: list[RunSummary], metrics: list[str]) -> Image.Image | None:
    """|dL/dh_t| by distance from the last input step, at initialisation and after training, one
    curve per run (log scale). Each run shows its longest length bucket measured on 10 or more
    sentences at both steps; in a long-dependency grid, only the runs at the largest T."""
    first = {run.name: r for run in runs if (r := _first(run))}
    flows = {name: _flow_records(r.folder) for name, r in first.items()}
    flows = {name: (records[0], records[-1]) for name, records in flows.items() if len(records) > 1}
    lengths = {name: first[name].results.get("length") for name in flows}
    if None not in lengths.values() and lengths:
        flows = {name: pair for name, pair in flows.items() if lengths[name] == max(lengths.values())}
    curves = {}
    for name, pair in flows.items():
        shared = set(pair[0]["gradient_flow/by_distance"]) & set(pair[1]["gradient_flow/by_distance"])
        enough = {b for b in shared if all(r.get(f"gradient_flow/{b}/sentences", 0) >= 10 for r in pair)}
        if shared:
            bucket = max(enough or shared, key=lambda label: int(label[4:].split("-")[0].rstrip("+")))
            curves[f"{name} ({bucket[4:]} steps)"] = [r["gradient_flow/by_distance"][bucket] for r in pair]
    if not curves:
        return None
    steps = [r["step"] for r in next(iter(flows.values()))]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, which in zip(axes, (0, 1)):
        for label, pair in curves.items():
            ax.plot(range(len(pair[which])), pair[which], marker=".", label=label)
        ax.set_yscale("log")
        ax.set_title(f"{'at initialisation' if which == 0 else 'after training'} (step {steps[which]})", fontsize=10)
        ax.set_xlabel("distance from the last input step")
        ax.grid(alpha=0.3, which="both")
    axes[0].set_ylabel("|dL/dh_t|, encoder top layer, forward direction")
    axes[1].legend(fontsize=7)
    fig.suptitle(f"{study.name}: gradient flow")
    return figure_image(fig)


def _by_sequence_length(study: Study, runs: list[RunSummary], metrics: list[str]) -> Image.Image | None:
    """Long-dependency studies: copy accuracy and adding MSE / baseline against T, one curve per
    named run of the grid: the mean over seeds, and every seed as a dot (a mean accuracy of 0.67
    is two seeds that solved the task and one that did not, which an sd bar hides)."""
    panels = {"copy": ("test_accuracy", "exact-match accuracy", 0.9),
              "adding": ("test_mse_to_baseline", "test MSE / baseline MSE (1/6)", 0.1)}
    def curve_of(run: RunSummary, results: dict[str, Any]) -> str:  # a grid-only study: by cell
        named = run.name.partition(",")[0]
        return named if "=" not in named else results["cell"]

    done = [(curve_of(run, r.results), r.results) for run in runs for r in run.finished
            if r.results.get("task") in panels and "length" in r.results]
    tasks = [t for t in panels if any(r["task"] == t for _, r in done)]
    if not tasks:
        return None
    fig, axes = plt.subplots(1, len(tasks), figsize=(5.5 * len(tasks), 4), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        key, label, bar = panels[task]
        curves = list(dict.fromkeys(name for name, r in done if r["task"] == task))
        for i, curve in enumerate(curves):
            by_t: dict[int, list[float]] = {}
            for name, r in done:
                if r["task"] == task and name == curve:
                    by_t.setdefault(r["length"], []).append(r[key])
            lengths = sorted(by_t)
            line, = ax.plot(lengths, [np.mean(by_t[t]) for t in lengths], marker="o", label=curve)
            shift = 1 + 0.04 * (i - (len(curves) - 1) / 2)  # the curves' dots side by side on the log axis
            for t in lengths:
                ax.scatter([t * shift] * len(by_t[t]), by_t[t], s=14, color=line.get_color(), alpha=0.5, zorder=3)
        solved = "solved (accuracy 0.9)" if task == "copy" else "solved (a tenth of the baseline)"
        ax.axhline(bar, color="grey", linestyle="--", linewidth=1, label=solved)
        ax.set_xscale("log")
        if task == "adding":
            ax.set_yscale("log")
        lengths = sorted({r["length"] for _, r in done if r["task"] == task})
        ax.set_xticks(lengths, [str(t) for t in lengths])
        ax.xaxis.set_minor_locator(plt.NullLocator())
        ax.set_xlabel("T (time steps between the information and its use)")
        ax.set_ylabel(label)
        ax.set_title(task)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(study.name)
    return figure_image(fig)


def _training_rows(folder: Path, key: str) -> list[dict[str, Any]]:
    """The training log lines of the run in ``folder`` that record ``key`` (metrics.jsonl), in step order."""
    return logged_rows(folder / "metrics.jsonl", key)


def logged_curves(runs: list[RunSummary], key: str) -> dict[str, list[dict[str, Any]]]:
    """The training log lines recording ``key`` of each run's first seed that logged it: a failed
    seed too, as a diverged run's curve up to its failure is often the point."""
    curves: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        for r in run.replicates:
            if run.name not in curves and r.state in ("finished", "failed") and (rows := _training_rows(r.folder, key)):
                curves[run.name] = rows
    return curves


def _grad_norm(study: Study, runs: list[RunSummary], metrics: list[str]) -> Image.Image | None:
    """The global gradient norm before clipping, and the loss, along training (log scale)."""
    curves = logged_curves(runs, "train/grad_norm")
    if not curves:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name, rows in curves.items():
        steps = [r["step"] for r in rows]
        axes[0].plot(steps, [r["train/grad_norm"] for r in rows], label=name)
        axes[1].plot(steps, [r["train/loss"] for r in rows], label=name)
    for ax, label in zip(axes, ("global gradient norm before clipping", "training loss")):
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3, which="both")
    axes[0].legend(fontsize=8)
    fig.suptitle(study.name)
    return figure_image(fig)


def _attention_training(study: Study, runs: list[RunSummary], metrics: list[str]) -> Image.Image | None:
    """The attention's entropy and largest |score| along training, one curve per run: the mean
    over its seeds, their range as a band. A collapse: entropy toward 0, scores growing."""
    keys = ("train/attention_entropy", "train/attention_max_score")
    curves = {run.name: seeds for run in runs
              if (seeds := [rows for r in run.finished if (rows := _training_rows(r.folder, keys[0]))])}
    if not curves:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for name, seeds in curves.items():
        n = min(len(rows) for rows in seeds)  # seeds log at the same steps
        steps = [row["step"] for row in seeds[0][:n]]
        for ax, key in zip(axes, keys):
            values = np.array([[row[key] for row in rows[:n]] for rows in seeds])  # (seeds, points)
            line, = ax.plot(steps, values.mean(axis=0), label=f"{name} ({len(seeds)} seed{'s' * (len(seeds) > 1)})")
            if len(seeds) > 1:
                ax.fill_between(steps, values.min(axis=0), values.max(axis=0), color=line.get_color(), alpha=0.15,
                                linewidth=0)
    axes[0].set_ylabel("attention entropy (nats, mean over target tokens)")
    axes[1].set_ylabel("largest |score| in the batch")
    axes[1].set_yscale("log")
    for ax in axes:
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3, which="both")
    axes[0].legend(fontsize=7)
    fig.suptitle(f"{study.name}: attention during training")
    return figure_image(fig)


PLOTTERS = {"bleu_by_length": _bleu_by_length, "metrics": _metrics, "search": _search, "attention": _attention,
            "gradient_flow": _gradient_flow, "by_sequence_length": _by_sequence_length, "grad_norm": _grad_norm,
            "attention_training": _attention_training}

