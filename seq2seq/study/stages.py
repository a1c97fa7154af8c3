"""Runs made from other runs of a study: the rungs of a ladder such as single model → averaged
→ fine-tuned → ensemble (``experiments/studies/sequence_level.yaml``).

- ``average``: per seed, the mean of the source's newest step checkpoints
  (``train.keep_checkpoints``), written to ``checkpoints/averaged.pt`` and scored on the test set;
- ``ensemble``: once, every seed of the source decoding together (the mean of their
  probabilities, :mod:`seq2seq.ensemble`), scored;
- ``from``: per seed, an ordinary training run that starts from the source's weights
  (``train.init_from``, set by the study), so it trains, resumes and is summarised like any run.

Every rung records the sha256 of the checkpoints it read: if a source is trained again, the
rung is ``changed`` rather than silently stale. A ladder exported whole
(:mod:`seq2seq.study.records`) has no weights to hash: its records carry one seal per export,
and a restored rung whose sources are records of the same seal stands as it was exported (the
export found it current). Its provenance is that of the runs that trained what it read. Its
outputs are written as a training run's are, so the summary's paired tests read them; an
ensemble is tested against every seed of the baseline.
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path
from typing import Any

from seq2seq.config import ConfigError
from seq2seq.data.fetch import sha256_of
from seq2seq.experiment import write_text
from seq2seq.provenance import summarise
from seq2seq.study.spec import RunSpec, Study
from seq2seq.train.checkpoints import (
    CheckpointError,
    average_checkpoints,
    resolve_checkpoint,
    save_checkpoint,
    step_checkpoints,
    take_init_tokenizers,
)
from seq2seq.train.distributed import current

STARTED_FROM = "started_from.sha256"  # in a fine-tuning run's folder: the digest of the weights it started from
SEAL = "export.seal"  # in an exported record of a ladder's run: the export it belongs to (one per export)


def study_folder(spec: RunSpec, run_dir: Path) -> Path:
    """The study's folder, from a run's folder in it (``<study>/<run>[/seed-<n>]``)."""
    return run_dir.parents[len(Path(spec.folder).parts) - 1]


def sources(study: Study, spec: RunSpec) -> list[RunSpec]:
    """The runs that ``spec`` reads: the source's run of the same seed, or (an ensemble) all of its seeds."""
    if spec.stage is None:
        return []
    same = [s for s in study.run_specs() if s.name == spec.stage.source]
    return same if spec.stage.kind == "ensemble" else [s for s in same if s.seed == spec.seed]


def inputs(study: Study, spec: RunSpec, folder: Path) -> list[Path]:
    """The checkpoint files a rung reads (ConfigError or CheckpointError when a source lacks them)."""
    found = sources(study, spec)
    if spec.stage.kind != "average":
        return [resolve_checkpoint(folder / s.folder) for s in found]
    source = folder / found[0].folder
    kept = step_checkpoints(source / "checkpoints")[-spec.stage.last:]
    if len(kept) < spec.stage.last:
        raise ConfigError(f"run {spec.label} averages the last {spec.stage.last} step checkpoints of {source}, "
                          f"which keeps {len(kept)}: train it with train.keep_checkpoints={spec.stage.last} or more")
    return kept


def inputs_sha256(paths: list[Path]) -> str:
    """One digest of the files a rung read, in order."""
    return hashlib.sha256(" ".join(file_sha256(p) for p in paths).encode()).hexdigest()


def record_start(run_dir: Path, read: list[Path]) -> str:
    """The digest of what a fine-tuning run starts from, written when it first starts: a resume
    goes on from its own last.pt, whatever its source holds by then, so that is what it trained
    from. Without a last.pt of its own (it died before its first) it starts afresh from the source."""
    path = run_dir / STARTED_FROM
    if path.is_file() and (run_dir / "checkpoints" / "last.pt").is_file():
        return path.read_text(encoding="utf-8").strip()
    digest = inputs_sha256(read)
    if current().main:
        write_text(path, digest + "\n")
    return digest


def started_from(run_dir: Path) -> dict[str, str]:
    """A fine-tuning run's record of its start, in the form of its results (empty when none)."""
    path = run_dir / STARTED_FROM
    return {"inputs_sha256": path.read_text(encoding="utf-8").strip()} if path.is_file() else {}


def file_sha256(path: Path) -> str:
    """A file's sha256, computed once per state of the file (its size and modification time)."""
    stat = path.stat()
    return _cached_sha256(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=256)
def _cached_sha256(path: str, size: int, mtime_ns: int) -> str:
    return sha256_of(Path(path))


def score_stage(study: Study, spec: RunSpec, run_dir: Path) -> dict[str, Any]:
    """Average or ensemble the sources of ``spec`` and score the result on the test set into ``run_dir``."""
    from seq2seq.tasks import captioning, translation

    folder = study_folder(spec, run_dir)
    try:
        read = inputs(study, spec, folder)
        models = read
        if spec.stage.kind == "average":  # a model of its own, beside the tokenizers it reads text with
            take_init_tokenizers(read[-1], run_dir)
            models = [save_checkpoint(run_dir / "checkpoints" / "averaged.pt", average_checkpoints(read))]
        scorer = {"translation": translation.score, "captioning": captioning.score}[study.task]
        results = scorer(models, run_dir)
    except CheckpointError as err:  # members that cannot be averaged or ensembled: this run's failure
        raise ConfigError(str(err)) from None
    trained = [read_results(folder / s.folder) for s in sources(study, spec)]  # what trained the models it scored
    return {**results, **summarise(trained), "stage": spec.stage.kind, "source": spec.stage.source,
            "read": [str(p) for p in read], "inputs_sha256": inputs_sha256(read)}


def stale(study: Study, spec: RunSpec, run_dir: Path, results: dict[str, Any]) -> bool:
    """Whether the checkpoints a finished rung read have changed (or gone) since it read them
    (a rung restored with its sources from one export: whether the study still defines it so)."""
    folder = study_folder(spec, run_dir)
    if sealed_with(run_dir, [folder / s.folder for s in sources(study, spec)]):
        return not _defined_as(study, spec, results)
    try:
        return results.get("inputs_sha256") != inputs_sha256(inputs(study, spec, folder))
    except (ConfigError, CheckpointError, OSError):
        return True


def read_seal(folder: Path) -> str | None:
    """The export a record of a ladder's run belongs to, or None."""
    path = folder / SEAL
    return path.read_text(encoding="utf-8").strip() if path.is_file() else None


def sealed_with(run_dir: Path, source_dirs: list[Path]) -> bool:
    """Whether ``run_dir`` and every source folder are restored records of one export: the same
    seal, and no checkpoints (a source trained here again has some, and is hashed instead)."""
    mine = read_seal(run_dir)
    return mine is not None and all(read_seal(d) == mine and not (d / "checkpoints").exists()
                                    for d in [run_dir, *source_dirs])


def _defined_as(study: Study, spec: RunSpec, results: dict[str, Any]) -> bool:
    """Whether a scored rung's results come from the rung as the study defines it now: its kind,
    its source's runs (every seed, for an ensemble) and, averaged, how many checkpoints. (A
    fine-tuned rung's config, ``train.init_from`` included, is compared as any run's.)"""
    if spec.stage.kind == "from":
        return True
    read = [Path(p).as_posix() for p in results.get("read", [])]
    runs = [f"/{study.folder}/{s.folder}/" for s in sources(study, spec)]
    count = spec.stage.last if spec.stage.kind == "average" else len(runs)
    return (results.get("stage") == spec.stage.kind and results.get("source") == spec.stage.source
            and len(read) == count and all(any(r in p for p in read) for r in runs)
            and all(any(r in p for r in runs) for p in read))


def read_results(run_dir: Path) -> dict[str, Any]:
    """A run folder's results.json, or {} when it has none or a damaged one."""
    try:
        return json.loads((run_dir / "results.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
