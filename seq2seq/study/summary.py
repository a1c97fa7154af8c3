"""A study's summary: one table (Markdown and CSV) of every run's scores beside what it cost,
the plots the study asks for, and one W&B run in the study's group holding both."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import time
from pathlib import Path
from typing import Any

from PIL import Image

from seq2seq.files import atomic_write
from seq2seq.runtime import machine_description
from seq2seq.study.plots import PLOTTERS
from seq2seq.study.spec import RunSpec, Study
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
    columns = ["run", "state", *metrics, *(c for c in COST[study.task] if c not in metrics)]
    results = {s.name: _results(folder / s.name) for s in specs}
    rows = [[s.name, state, *(results[s.name].get(k) for k in columns[2:])] for s, state in zip(specs, states)]
    written = {"csv": folder / "summary.csv", "md": folder / "summary.md"}
    table = io.StringIO(newline="")
    writer = csv.writer(table)
    writer.writerow(columns)
    writer.writerows(rows)
    atomic_write(written["csv"], table.getvalue())
    plots = {kind: folder / f"{kind}.png" for kind in study.plots}
    for kind, path in list(plots.items()):
        picture = PLOTTERS[kind](study, folder, specs, results, metrics)
        if picture is None:
            del plots[kind]
        else:
            atomic_write(path, lambda f, picture=picture: picture.save(f, format="PNG"))
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
    atomic_write(written["md"], "\n".join(lines) + "\n")
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
