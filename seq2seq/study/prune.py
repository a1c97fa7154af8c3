"""Pruning a study: the checkpoints of its finished runs deleted, their record kept.

A study of 90 runs holds 90 sets of checkpoints, and its summary reads none of them: it reads
each run's config, ``results.json``, ``metrics.jsonl`` and test outputs. ``--prune`` deletes the
``checkpoints/`` folder of every finished run and writes the run's final progress beside its
results (``progress.json``), so the run stays *finished*: the same study command skips it and
the summary, paired tests included, is built as before (less the attention plot, which decodes
with the models). What a pruned run cannot do is train further or be decoded again. A run that
another run of the study reads (the source of an average, a fine-tune or an ensemble) keeps its
checkpoints.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

from seq2seq.experiment import PRUNED_PROGRESS, run_progress, write_text
from seq2seq.study.runner import run_state
from seq2seq.study.spec import Study
from seq2seq.study.stages import sources


def prune(study: Study, root: Path) -> tuple[list[str], int]:
    """Prune every finished run of ``study`` under ``root`` that no other run reads; returns the
    runs pruned and the bytes freed."""
    study = dataclasses.replace(study, root=root)  # fine-tuning runs name their sources under it
    folder = root / study.folder
    specs = study.run_specs()
    read = {source.folder for spec in specs for source in sources(study, spec)}
    pruned, freed = [], 0
    for spec in specs:
        run_dir = folder / spec.folder
        checkpoints = run_dir / "checkpoints"
        if spec.folder in read or not checkpoints.is_dir() or run_state(study, spec, run_dir) != "finished":
            continue
        progress = run_progress(run_dir)
        if progress is None:  # a rung scored from its sources: nothing of its own to keep
            continue
        write_text(run_dir / PRUNED_PROGRESS, json.dumps(dataclasses.asdict(progress), indent=2) + "\n")
        freed += sum(p.stat().st_size for p in checkpoints.rglob("*") if p.is_file())
        shutil.rmtree(checkpoints)
        pruned.append(spec.folder)
    return pruned, freed
