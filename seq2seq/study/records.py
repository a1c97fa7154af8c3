"""A study's record: what its summary reads, kept without the weights or the corpus.

A study's summary, paired tests included, reads each run's config, ``results.json``,
``metrics.jsonl``, test outputs and test references, and none of its checkpoints. So:

- ``--prune`` deletes the ``checkpoints/`` of every finished run that no other run reads and
  writes the run's final progress beside its results (``progress.json``): the run stays
  *finished*, the same study command skips it, and the summary is built as before (less the
  attention plot, which decodes with the models). A pruned run cannot train further.
- ``--export DIR`` copies the record of every finished run to ``DIR/<study>/``: the files above
  and the final progress, with the sha256 of the test references in place of the references
  and no test sources (corpus text stays in the cache, under its licence). A record is small
  enough to commit or mail. A failed run (a diverged one is a result too) is exported as its
  config, ``error.txt`` and training log.
- ``--verify DIR`` restores the records of ``DIR/<study>/`` into a scratch folder, builds the
  summary there with today's code and compares it cell by cell with the ``summary.csv``
  beside them: that a committed table follows from its records, and which cells do not.
- ``--restore DIR`` copies records back into the study's folder, never over a run already
  there, with each run's test references written again from this machine's data and checked
  against the sha256. Restored runs are finished: the study trains only what is missing and
  compares every run, restored or trained here, in one summary; restored failed runs stay
  failed (``--only`` retries them). This is how a study outlives a machine. A run with no
  record of its own takes another study's record of the same config: a follow-up study reuses
  the baseline it shares with an earlier one.

Runs that other runs read (the sources of averages, fine-tunes, ensembles, and models that a
decode study file names) keep their checkpoints. A ladder (a study's runs joined by reading
one another) is exported whole once every run in it has finished or failed, each record
sealed with the same export, and restored whole or not at all (records of one export, none
of its runs there yet): restored, its runs are finished (or failed) without weights, a rung as
the export found it while the study defines it alike; a source trained again on the other
machine makes the rungs that read it changed. An unfinished ladder, and the ladder of a model
a decode study reads, are not exported: on another machine they train again.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import shutil
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path

import yaml

from seq2seq.config import Config, ConfigError, config_from_dict
from seq2seq.experiment import PRUNED_PROGRESS, comparable, stored_progress, write_text
from seq2seq.files import REFERENCES, write_references
from seq2seq.options import load_yaml
from seq2seq.study.runner import run_state
from seq2seq.study.spec import Study, load_study
from seq2seq.study.stages import SEAL, file_sha256, read_seal, sources
from seq2seq.study.summary import write_summary

REFERENCES_SHA256 = "test.refs.sha256"  # in an exported record, instead of the references
EXPORTED = ("config.yaml", "results.json", "metrics.jsonl", PRUNED_PROGRESS, "error.txt")  # and test.*.txt outputs
BORROWED = "restored_from.txt"  # in a run restored from another study's record: that record (not exported again)


def prune(study: Study, root: Path) -> tuple[list[str], int]:
    """Prune every finished run of ``study`` under ``root`` that nothing reads; returns the runs
    pruned and the bytes freed."""
    study = dataclasses.replace(study, root=root)  # fine-tuning runs name their sources under it
    read = _read_by_others(study, root)
    pruned, freed = [], 0
    for spec in study.run_specs():
        run_dir = root / study.folder / spec.folder
        checkpoints = run_dir / "checkpoints"
        if _is_read(spec.folder, read) or not checkpoints.is_dir() or run_state(study, spec, run_dir) != "finished":
            continue
        if not _keep_progress(run_dir, run_dir):  # a rung scored from its sources: nothing of its own to keep
            continue
        freed += sum(p.stat().st_size for p in checkpoints.rglob("*") if p.is_file())
        shutil.rmtree(checkpoints)
        pruned.append(spec.folder)
    return pruned, freed


def export_records(study: Study, root: Path, dest: Path) -> list[str]:
    """Copy the record of every finished or failed run of ``study`` under ``root`` that was not
    restored from another study's record to ``dest/<study>/``; returns the runs exported. A
    ladder (runs joined by reading one another) goes whole, once every run in it has finished
    or failed, its records sealed together: restored together, without weights, they stand as
    exported (a source trained again there makes its rungs changed)."""
    study = dataclasses.replace(study, root=root)
    folder = root / study.folder
    specs = {spec.folder: spec for spec in study.run_specs()}
    states = {name: run_state(study, spec, folder / name) for name, spec in specs.items()}
    ladders = _ladders(study)
    decoded = _decoded(study, root)  # a model a decode study reads keeps its weights: its ladder stays
    sealable = {name for ladder in ladders if all(states[n] in ("finished", "failed") for n in ladder)
                and not any(_is_read(n, decoded) for n in ladder) for name in ladder}
    in_ladders = {name for ladder in ladders for name in ladder}
    seal = uuid.uuid4().hex  # one per export
    exported = []
    for name, spec in specs.items():
        run_dir = folder / name
        wanted = name in sealable if name in in_ladders else not _is_read(name, decoded)  # rungs' sources: ladders
        if not wanted or (run_dir / BORROWED).is_file() or states[name] not in ("finished", "failed"):
            continue
        out = dest / study.folder / name
        out.mkdir(parents=True, exist_ok=True)
        for path in run_dir.iterdir():
            if path.name in EXPORTED or path.name.startswith("test.") and path.suffix == ".txt" \
                    and path.name != "test.src.txt":
                shutil.copy2(path, out / path.name)
        if not (run_dir / "error.txt").is_file():  # a failed run retried (--only) starts again, so none
            _keep_progress(run_dir, out)
        if (run_dir / REFERENCES).is_file():
            write_text(out / REFERENCES_SHA256, file_sha256(run_dir / REFERENCES) + "\n")
        if name in in_ladders:
            write_text(out / SEAL, seal + "\n")
        exported.append(name)
    return exported


def _ladders(study: Study) -> list[set[str]]:
    """The study's ladders: its runs joined by reading one another (rungs and what they read,
    in turn), each as a set of run folders."""
    linked: dict[str, set[str]] = {}
    for spec in study.run_specs():
        for source in sources(study, spec):
            linked.setdefault(source.folder, set()).add(spec.folder)
            linked.setdefault(spec.folder, set()).add(source.folder)
    ladders: list[set[str]] = []
    for start in linked:
        if any(start in ladder for ladder in ladders):
            continue
        ladder, todo = set(), [start]
        while todo:  # every run joined to start
            name = todo.pop()
            if name not in ladder:
                ladder.add(name)
                todo += linked[name]
        ladders.append(ladder)
    return ladders


def restore_records(study: Study, src: Path, root: Path, log: Callable[[str], None] = print) -> list[str]:
    """Copy the records in ``src/<study>/`` into the study's folder under ``root`` where the run
    is not there yet, their references written from the data and checked; returns the runs
    restored. A run with no record of its own takes another study's record of exactly its
    config (limits included, tracking aside): a follow-up study reuses the baseline it shares
    with an earlier one instead of training it again. A record is checked in a scratch folder
    and moved into place only when whole."""
    study = dataclasses.replace(study, root=root)
    restored: list[str] = []
    references: dict[str, list[list[str]]] = {}  # per data options: the corpus is read once
    elsewhere: dict[str | None, Path] | None = None  # other studies' records by config, read once if needed
    read = _read_by_others(study, root)  # these keep their weights: never a borrowed record
    partial = set()  # ladders restored whole or not at all: records of one export, none of it here yet
    for ladder in _ladders(study):
        seals = {read_seal(src / study.folder / name) for name in ladder}
        if len(seals) != 1 or None in seals or any((root / study.folder / name).exists() for name in ladder):
            partial |= ladder
    for spec in study.run_specs():
        record, run_dir = src / study.folder / spec.folder, root / study.folder / spec.folder
        if run_dir.exists() or spec.folder in partial:
            continue
        if not ((record / "results.json").is_file() or (record / "error.txt").is_file()):
            if spec.stage is not None or _is_read(spec.folder, read):  # built from, or read by, this study's runs
                continue
            if elsewhere is None:  # trained runs only (they keep their progress), not rungs or decodings
                found = sorted(src.glob("*/**/" + PRUNED_PROGRESS), reverse=True)  # reversed: the first wins
                elsewhere = {_record_identity(p.parent): p.parent for p in found
                             if (p.parent / "results.json").is_file()
                             and not p.parent.is_relative_to(src / study.folder)}
            record = elsewhere.get(_identity(spec.config))
            if record is None:
                continue
            log(f"{spec.label}: restored from {record.relative_to(src).as_posix()} (the same config)")
        scratch = run_dir.with_name(f".{run_dir.name}.restoring")
        shutil.rmtree(scratch, ignore_errors=True)
        shutil.copytree(record, scratch)
        if record != src / study.folder / spec.folder:  # exported with the study it belongs to, not again here
            write_text(scratch / BORROWED, record.relative_to(src).as_posix() + "\n")
        if spec.stage is not None and spec.config.train.init_from:  # fine-tuned, or scored with such a config
            _rebase_init_from(scratch / "config.yaml", spec.config.train.init_from, root)
        digest = scratch / REFERENCES_SHA256
        if digest.is_file():
            key = json.dumps([dataclasses.asdict(spec.config.data), dataclasses.asdict(spec.config.captions)],
                             default=str)
            if key not in references:
                references[key] = reference_lists(study.task, spec.config)
            write_references(scratch, references[key])
            if file_sha256(scratch / REFERENCES) != digest.read_text(encoding="utf-8").strip():
                shutil.rmtree(scratch)
                raise ConfigError(f"record {record} was scored on other test references than the data here gives "
                                  f"(another corpus version or split?); not restored")
        scratch.rename(run_dir)
        recorded = "failed" if (run_dir / "error.txt").is_file() else "finished"
        if run_state(study, spec, run_dir) != recorded:  # other options, or (finished) another budget, than now
            shutil.rmtree(run_dir)
            log(f"{spec.label}: record not restored: it is not a {recorded} run of the study as it is now")
            continue
        restored.append(spec.folder)
    return restored


def verify_records(study: Study, src: Path) -> list[str]:
    """Rebuild the summary of ``study`` from the records in ``src/<study>/`` in a scratch folder
    and compare its tables with the ``summary.csv``, ``summary_seeds.csv`` and
    ``summary_pairs.csv`` there; one line per row or cell that differs (none: the committed
    tables follow from the records)."""
    committed = src / study.folder
    if not (committed / "summary.csv").is_file():
        raise ConfigError(f"{committed / 'summary.csv'} does not exist: no table to verify {study.name}'s records by")
    with tempfile.TemporaryDirectory(prefix="seq2seq-verify-") as scratch:
        root = Path(scratch)
        study = dataclasses.replace(study, root=root)
        restore_records(study, src, root, log=lambda _: None)
        folder, specs = root / study.folder, study.run_specs()
        write_summary(study, folder, specs, [run_state(study, s, folder / s.folder) for s in specs], track=False)
        differences = _compare(committed / "summary.csv", folder / "summary.csv", ("run",))
        for table, key in (("summary_seeds.csv", ("run", "seed")), ("summary_pairs.csv", ("run", "against"))):
            if (committed / table).is_file():  # what is committed is checked
                differences += _compare(committed / table, folder / table, key)
    return differences


def _compare(committed: Path, rebuilt: Path, key: tuple[str, ...]) -> list[str]:
    """The rows (by ``key``) and cells in which two summary tables differ, one line each (a
    table the rebuild does not write: all its rows)."""
    old, new = _rows(committed, key), _rows(rebuilt, key) if rebuilt.is_file() else {}
    differences = []
    for row in {**old, **new}:
        name = f"{committed.name} {' '.join(row)}"
        if row not in new or row not in old:
            differences.append(f"{name}: only in the {'committed' if row in old else 'rebuilt'} table")
        elif old[row].get("state") != new[row].get("state"):  # e.g. a rung built from other runs: not exported
            was, now = old[row].get("state"), new[row].get("state")
            why = (" (its record is missing or was made otherwise)" if was == "finished" else
                   " (the committed table is older than the records)" if now == "finished" else "")
            differences.append(f"{name}: committed {was}, rebuilt {now}{why}")
        else:
            differences += [f"{name} {column}: committed {old[row].get(column)!r}, rebuilt {new[row].get(column)!r}"
                            for column in {**old[row], **new[row]}
                            if not _same_cell(old[row].get(column), new[row].get(column))]
    return differences


def _rows(path: Path, key: tuple[str, ...]) -> dict[tuple[str, ...], dict[str, str]]:
    """A summary table's rows by ``key``; a table that cannot be one is a ConfigError naming it."""
    rows: dict[tuple[str, ...], dict[str, str]] = {}
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        if not set(key) <= set(reader.fieldnames or []):
            raise ConfigError(f"{path} is not a study summary: it has no {' and '.join(key)} column")
        for row in reader:
            name = tuple(row[k] for k in key)
            if None in row or name in rows:
                raise ConfigError(f"{path} line {reader.line_num}: "
                                  + ("more cells than columns" if None in row else f"a second row for {name}"))
            rows[name] = row
    return rows


def _same_cell(a: str | None, b: str | None) -> bool:
    """Equal text, or numbers equal to 1e-9 of their size (CSV round trips; NaN equals NaN). A
    column one table lacks (added since it was written) reads as empty."""
    a, b = a or "", b or ""
    try:
        x, y = float(a), float(b)
    except ValueError:
        return a == b
    return math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-12) or (math.isnan(x) and math.isnan(y))


def _rebase_init_from(config: Path, init_from: str, root: Path) -> None:
    """Point a restored fine-tuning record's ``train.init_from`` at its source under this root:
    it named the same study folder and run under the root it was made in."""
    if not Path(init_from).is_relative_to(root):  # a checkpoint of the user's, not a run of the study
        return
    values = load_yaml(config.read_text(encoding="utf-8")) or {}
    made_from = (values.get("train") or {}).get("init_from")
    tail = Path(init_from).relative_to(root).parts  # <study>/<source run>/seed-<n>
    if made_from and Path(made_from).parts[-len(tail):] == tail:
        values["train"]["init_from"] = init_from
        write_text(config, yaml.safe_dump(values, sort_keys=False))


def _identity(cfg: Config) -> str:
    """What a record must share with a run to stand for it: the config, limits included
    (tracking, device and logging aside)."""
    train = cfg.train
    return json.dumps([comparable(cfg.to_dict()), [train.time_budget, train.max_steps, train.max_epochs,
                                                  train.patience]], sort_keys=True, default=str)


def _record_identity(record: Path) -> str | None:
    """:func:`_identity` of the config a record ran (read through today's defaults), None if unreadable."""
    try:
        return _identity(config_from_dict(load_yaml((record / "config.yaml").read_text(encoding="utf-8")) or {}))
    except (OSError, ConfigError, yaml.YAMLError):
        return None


def reference_lists(task: str, cfg: Config) -> list[list[str]]:
    """The test references a run of ``task`` with ``cfg`` is scored against, read from the data."""
    if task == "captioning":
        from seq2seq.tasks.captioning import load_captions

        return [ex.captions for ex in load_captions(cfg).test]
    from seq2seq.tasks.translation import load_data

    return [ex.refs for ex in load_data(cfg).test]


def _read_by_others(study: Study, root: Path) -> set[str]:
    """The runs of ``study`` that another run reads: a source of a rung, or the model of a
    decode study file beside this one."""
    return {source.folder for spec in study.run_specs() for source in sources(study, spec)} | _decoded(study, root)


def _decoded(study: Study, root: Path) -> set[str]:
    """The models of ``study`` that a decode study file beside it names (relative to its folder)."""
    folder, read = (root / study.folder).resolve(), set()
    for path in sorted(study.path.parent.glob("*.yaml")) if study.path else []:
        try:
            model = load_study(path).model
        except ConfigError:
            continue
        if model is not None and model.resolve().is_relative_to(folder):
            read.add(model.resolve().relative_to(folder).as_posix())
    return read


def _is_read(folder: str, read: set[str]) -> bool:
    """Whether a run folder is one that is read, or lies in or holds one."""
    return any(folder == r or folder.startswith(f"{r}/") or r.startswith(f"{folder}/") for r in read)


def _keep_progress(run_dir: Path, out: Path) -> bool:
    """Write the final progress of the run in ``run_dir`` to ``out``; False when it has none (a
    rung scored from its sources, a decoded run)."""
    progress = stored_progress(run_dir)
    if progress is not None:
        write_text(out / PRUNED_PROGRESS, json.dumps(progress, indent=2) + "\n")
    return progress is not None
