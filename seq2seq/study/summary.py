"""A study's summary: one table (Markdown and CSV) of every run's scores beside what it cost,
the plots the study asks for, and one W&B run in the study's group holding both."""

from __future__ import annotations

import csv
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

from PIL import Image

from seq2seq.plotting import attention_heatmap, figure_image, image_grid, plt
from seq2seq.runtime import machine_description
from seq2seq.study.spec import RunSpec, Study
from seq2seq.tracking import make_tracker

DEFAULT_METRICS = {
    "translation": ["test_bleu_beam", "test_bleu_greedy", "test_chrf_beam", "valid_bleu_best"],
    "captioning": ["test_bleu4", "test_bleu4_greedy", "test_bleu4_nearest_neighbour", "test_bleu4_unseen_base"],
    "decode": ["test_bleu", "brevity_penalty", "mean_output_words", "sentences_per_second"],
}
COST = {  # what a run cost, beside its scores
    "translation": ["train_steps", "train_minutes", "total_minutes", "train_tokens_per_second", "parameters"],
    "captioning": ["train_steps", "train_minutes", "total_minutes", "images_per_second", "parameters"],
    "decode": [],
}


def _results(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "results.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _cell(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:,.3f}" if abs(value) < 10 else f"{value:,.2f}" if abs(value) < 1000 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def write_summary(study: Study, folder: Path, specs: list[RunSpec], states: list[str]) -> dict[str, Path]:
    """Write ``summary.md``, ``summary.csv`` and the plots into ``folder``; log them to W&B."""
    metrics = study.metrics or DEFAULT_METRICS[study.task]
    columns = ["run", "state", *metrics, *COST[study.task]]
    results = {s.name: _results(folder / s.name) for s in specs}
    rows = [[s.name, state, *(results[s.name].get(k) for k in columns[2:])] for s, state in zip(specs, states)]
    written = {"csv": folder / "summary.csv", "md": folder / "summary.md"}
    with open(written["csv"], "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        writer.writerows(rows)
    plots = {kind: folder / f"{kind}.png" for kind in study.plots}
    for kind, path in list(plots.items()):
        picture = PLOTTERS[kind](study, folder, specs, results, metrics)
        if picture is None:
            del plots[kind]
        else:
            picture.save(path)
    lines = [f"# Study `{study.name}`", "", study.description, "",
             f"- Comparison: {study.budget_line()}.",
             f"- Machine: {machine_description()}.",
             f"- Command: `python experiments/study.py {study.path.stem}`; written {time.strftime('%Y-%m-%d %H:%M')}.",
             "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    lines += ["", "Runs:"] + [f"- `{s.name}`: " + " ".join(
        ([f"config `{s.config_file.name}`"] if s.config_file else []) + [f"`{o}`" for o in s.overrides]
    ) if s.config_file or s.overrides else f"- `{s.name}`: the base config" for s in specs]
    lines += [""] + [f"![{kind}]({path.name})" for kind, path in plots.items()]
    written["md"].write_text("\n".join(lines) + "\n", encoding="utf-8")
    _log_to_wandb(study, folder, specs, columns, rows, plots)
    return {**written, **plots}


def _log_to_wandb(study: Study, folder: Path, specs: list[RunSpec], columns: list[str], rows: list[list[Any]],
                  plots: dict[str, Path]) -> None:
    """One summary run per study in the study's W&B group: the table and the plots."""
    tracking = dataclasses.replace(specs[0].config.tracking, name=f"{study.name}/summary")
    (folder / "wandb_id.txt").unlink(missing_ok=True)  # each summary is a new W&B run
    tracker = make_tracker(tracking, folder, {"study": study.name, "runs": {s.name: s.overrides for s in specs}},
                           job_type="study-summary")
    tracker.table("study/summary", columns, [[_cell(v) for v in row] for row in rows], step=0)
    if plots:
        tracker.images("study/plots", [(Image.open(p).convert("RGB"), kind) for kind, p in plots.items()], step=0)
    tracker.finish()


def _bleu_by_length(study: Study, folder: Path, specs: list[RunSpec], results: dict[str, dict],
                    metrics: list[str]) -> Image.Image | None:
    """Test BLEU per source-length bucket (words), one curve per run (Bahdanau et al., Figure 2)."""
    curves = {s.name: results[s.name].get("test_bleu_by_source_length") for s in specs}
    curves = {k: v for k, v in curves.items() if v}
    if not curves:
        return None
    buckets = list(next(iter(curves.values())))
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, curve in curves.items():
        ax.plot(range(len(buckets)), [curve[b]["bleu"] if b in curve else None for b in buckets], marker="o",
                label=name)
    counts = next(iter(curves.values()))
    ax.set_xticks(range(len(buckets)), [f"{b}\n({counts[b]['sentences']})" for b in buckets])
    ax.set_xlabel("source sentence length in words (test sentences)")
    ax.set_ylabel("test BLEU")
    ax.set_title(f"{study.name}: BLEU by source length")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return figure_image(fig)


def _metrics(study: Study, folder: Path, specs: list[RunSpec], results: dict[str, dict],
             metrics: list[str]) -> Image.Image | None:
    """The first summary metric of every run as a bar."""
    names = [s.name for s in specs if results[s.name].get(metrics[0]) is not None]
    if not names:
        return None
    fig, ax = plt.subplots(figsize=(7, 0.5 + 0.45 * len(names)))
    values = [results[n][metrics[0]] for n in names]
    ax.barh(range(len(names)), values, color="#4c72b0")
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.invert_yaxis()
    for i, v in enumerate(values):
        ax.text(v, i, f" {v:.1f}", va="center", fontsize=8)
    ax.set_xlabel(metrics[0])
    ax.set_title(study.name)
    return figure_image(fig)


def _search(study: Study, folder: Path, specs: list[RunSpec], results: dict[str, dict],
            metrics: list[str]) -> Image.Image | None:
    """Decode studies: BLEU against beam width, one curve per length penalty."""
    points: dict[float, list[tuple[int, float]]] = {}
    for s in specs:
        r = results[s.name]
        if "test_bleu" in r:
            points.setdefault(r["length_penalty"], []).append((r["beam"], r["test_bleu"]))
    if not points:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    for penalty, pts in sorted(points.items()):
        pts.sort()
        ax.plot([b for b, _ in pts], [v for _, v in pts], marker="o", label=f"length penalty {penalty:g}")
    ax.set_xscale("log")
    beams = sorted({b for pts in points.values() for b, _ in pts})
    ax.set_xticks(beams, [str(b) for b in beams])
    ax.set_xlabel("beam width")
    ax.set_ylabel("test BLEU")
    ax.set_title(study.name)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return figure_image(fig)


def _attention(study: Study, folder: Path, specs: list[RunSpec], results: dict[str, dict],
               metrics: list[str]) -> Image.Image | None:
    """The attention of the same two test sentences (greedy), one column per run with attention."""
    from seq2seq.experiment import spread
    from seq2seq.translator import Translator

    runs = [s for s in specs if s.config.model.attention != "none" and results[s.name]
            and (folder / s.name / "test.src.txt").is_file()]
    if study.task != "translation" or not runs:
        return None
    sources = (folder / runs[0].name / "test.src.txt").read_text(encoding="utf-8").splitlines()
    chosen = spread([s for s in sources if 6 <= len(s.split()) <= 10], 2)
    if not chosen:
        return None
    columns = []
    for spec in runs:
        translator = Translator.load(folder / spec.name, device=spec.config.train.device)
        column = []
        for tr in translator.translate(chosen, beam=1):
            if tr.attention is not None and tr.candidates:
                tgt = translator.tgt_tok.pieces(tr.candidates[0].tokens) + ["</s>"]
                column.append(attention_heatmap(tr.attention, tr.src_pieces, tgt, spec.name))
        columns.append(column)
    rows = [list(row) for row in zip(*columns)]
    return image_grid(rows) if rows and rows[0] else None


def _flow_records(run_dir: Path) -> list[dict[str, Any]]:
    """The gradient-flow curves a run logged (train.gradient_flow_every) in step order, each with
    the scalars of its probe (the sentences per bucket among them)."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if "gradient_flow/" in line]
    scalars = {r["step"]: r for r in records if "gradient_flow/seconds" in r}
    return [{**scalars.get(r["step"], {}), **r} for r in records if "gradient_flow/by_distance" in r]


def _gradient_flow(study: Study, folder: Path, specs: list[RunSpec], results: dict[str, dict],
                   metrics: list[str]) -> Image.Image | None:
    """|dL/dh_t| by distance from the last source token, at initialisation and after training,
    one curve per run, in the longest length bucket every run measured with 10 or more sentences
    (log scale)."""
    flows = {s.name: _flow_records(folder / s.name) for s in specs}
    flows = {name: (records[0], records[-1]) for name, records in flows.items() if len(records) > 1}
    if not flows:
        return None
    shared = set.intersection(*(set(r["gradient_flow/by_distance"]) for pair in flows.values() for r in pair))
    if not shared:
        return None
    enough = {b for b in shared if all(r.get(f"gradient_flow/{b}/sentences", 0) >= 10
                                       for pair in flows.values() for r in pair)}
    bucket = max(enough or shared, key=lambda label: int(label[4:].split("-")[0].rstrip("+")))
    sentences = next(iter(flows.values()))[1].get(f"gradient_flow/{bucket}/sentences")
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, which in zip(axes, (0, 1)):
        for name, pair in flows.items():
            norms = pair[which]["gradient_flow/by_distance"][bucket]
            ax.plot(range(len(norms)), norms, marker=".", label=name)
        ax.set_yscale("log")
        ax.set_title(f"{'at initialisation' if which == 0 else 'after training'} "
                     f"(step {next(iter(flows.values()))[which]['step']})", fontsize=10)
        ax.set_xlabel(f"distance from the last source token ({sentences} sentences of {bucket[4:]} tokens)")
        ax.grid(alpha=0.3, which="both")
    axes[0].set_ylabel("|dL/dh_t|, encoder top layer, forward direction")
    axes[1].legend(fontsize=8)
    fig.suptitle(f"{study.name}: gradient flow")
    return figure_image(fig)


PLOTTERS = {"bleu_by_length": _bleu_by_length, "metrics": _metrics, "search": _search, "attention": _attention,
            "gradient_flow": _gradient_flow}

