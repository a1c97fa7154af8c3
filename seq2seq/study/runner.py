"""Run a study: each run (each seed of it) an ordinary run folder under
``<root>/<study>/<run>[/seed-<n>]/``. Finished runs are skipped and an interrupted one resumes,
so the same command after Ctrl-C, a crash or a closed laptop carries on where it stopped.

A run is claimed through its folder's lock, so several processes (``--workers``, a second
terminal, other machines sharing the folder) can work on one study: each takes the next run
nobody holds, and a dead process's run is taken over on the next pass.

What stops what: a run that diverges or whose options are wrong is that run's failure
(``error.txt``; the study goes on). A full disk, a failed fetch or a refused resume is not the
run's fault: the study stops with the one-line error and the run stays pending or partial.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from seq2seq.config import Config, ConfigError, config_from_dict
from seq2seq.experiment import (
    RunFinished,
    config_yaml,
    finished_run_reason,
    open_run_dir,
    pruned,
    run_progress,
    same_run_config,
    stored_progress,
    unlock_run_dir,
    write_results,
    write_text,
)
from seq2seq.options import load_yaml
from seq2seq.runtime import precision_name
from seq2seq.study.spec import RunSpec, Study
from seq2seq.study.stages import (
    file_sha256,
    inputs,
    read_results,
    record_start,
    score_stage,
    sources,
    stale,
    started_from,
    study_folder,
)
from seq2seq.study.summary import write_summary
from seq2seq.tracking import logged_rows
from seq2seq.train.checkpoints import CheckpointError
from seq2seq.train.distributed import current, join
from seq2seq.train.faults import RunFolderBusy
from seq2seq.train.progress import Progress, longest_stall, outran_patience
from seq2seq.train.schedules import budget_of

STATES = ("pending", "partial", "finished", "failed", "changed", "waiting")
RUN_FAILURES = (FloatingPointError, ConfigError)  # the run's own fault: recorded, the study goes on


def run_state(study: Study, spec: RunSpec, run_dir: Path) -> str:
    """pending (never started), partial (started, resumable), finished (at exactly the study's
    budget, or decoded with the model as it is now), failed (see error.txt), changed (the
    folder holds this run made with other options, another budget, a patience that let it train
    past the study's, or an older model or code, or a pruned run the study now asks more of),
    or waiting (built from a run of the study that has not finished)."""
    if not same_run_config(run_dir, spec.config):
        return "changed"
    if (run_dir / "error.txt").is_file():
        return "failed"
    folder = study_folder(spec, run_dir)
    if any(run_state(study, s, folder / s.folder) != "finished" for s in sources(study, spec)):
        return "waiting"
    if spec.stage is not None and spec.stage.kind != "from":
        done = read_results(run_dir)
        return "pending" if not done else "changed" if stale(study, spec, run_dir, done) else "finished"
    if study.task == "decode":
        done = read_results(run_dir)
        if not done:
            return "pending"
        current = done.get("checkpoint_sha256") == model_sha256(study.model) and "valid_bleu" in done
        return "finished" if current else "changed"  # (decoded before validation was scored beside the test)
    want = budget_of(spec.config.train)
    if _saved_budget(run_dir) not in (None, want):
        return "changed"
    try:
        stored = stored_progress(run_dir)
    except CheckpointError:  # a damaged last.pt: training again from the start rebuilds it
        return "partial"
    if stored is None:
        return "pending"
    progress = Progress(**stored)
    if "longest_bad_streak" not in stored:  # saved before Progress kept it: rebuilt from its logged validations
        scores = {r["step"]: r["valid/score"] for r in logged_rows(run_dir / "metrics.jsonl", "valid/score")}
        progress.longest_bad_streak = longest_stall([v for k, v in sorted(scores.items()) if k <= progress.step])
    if progress.budget and progress.budget != want or outran_patience(spec.config.train, progress):
        return "changed"  # planned for another budget, or trained past the study's early stopping
    if not finished_run_reason(run_dir, spec.config, progress):
        if pruned(run_dir):  # its checkpoints are gone: it cannot go on
            return "changed"
        begun = started_from(run_dir) if spec.stage is not None else {}
        return "changed" if begun and stale(study, spec, run_dir, begun) else "partial"
    return "changed" if spec.stage is not None and stale(study, spec, run_dir, read_results(run_dir)) else "finished"


def _saved_budget(run_dir: Path) -> dict[str, float] | None:
    """The budget in a run folder's config.yaml (None when it has none yet)."""
    saved = run_dir / "config.yaml"
    if not saved.is_file():
        return None
    try:
        return budget_of(config_from_dict(load_yaml(saved.read_text(encoding="utf-8")) or {}).train)
    except (ConfigError, yaml.YAMLError):
        return None


def model_sha256(model: Path) -> str:
    """The sha256 of the checkpoint a decode study decodes with (cached per file state)."""
    from seq2seq.train.checkpoints import resolve_checkpoint

    return file_sha256(resolve_checkpoint(model))


def describe_runs(study: Study, root: Path) -> list[str]:
    """One line per run (per seed): its name, state and overrides (``--list``)."""
    study = dataclasses.replace(study, root=root)
    folder = root / study.folder
    lines = [f"{study.name}: {study.description}" if study.description else study.name, f"  {study.budget_line()}"]
    for spec in study.run_specs():
        state = run_state(study, spec, folder / spec.folder)
        lines.append(f"  {spec.folder:<32} {state:<9} {_stands(folder / spec.folder):<22} {_differences(spec)}")
    return lines


def _stands(run_dir: Path) -> str:
    """How far a started run has trained and for how long (all its sessions), from its last
    checkpoint: what a study's owner reads to know when it will end; "-" before one."""
    try:
        progress = run_progress(run_dir)
    except (CheckpointError, ValueError, TypeError, KeyError):  # a damaged checkpoint or progress.json
        return "progress unreadable"
    return f"step {progress.step:,} {progress.elapsed / 60:.1f} min" if progress else "-"


def _differences(spec: RunSpec) -> str:
    """What sets a run apart: its config file and its overrides."""
    return " ".join(([f"--config {spec.config_file.name}"] if spec.config_file else []) + spec.overrides)


def dry_run(study: Study) -> str:
    """The resolved config of every run, as YAML documents (``--dry-run``)."""
    docs = [f"# {study.name}/{spec.folder}\n" + config_yaml(spec.config) for spec in study.run_specs()]
    return "---\n".join(docs)


def select(study: Study, only: list[str] | None) -> list[RunSpec]:
    """The study's runs, or those named (a run name takes all its seeds; ``run/seed-<n>`` one)."""
    specs = study.run_specs()
    if not only:
        return specs
    known = {s.name for s in specs} | {s.folder for s in specs}
    unknown = [n for n in only if n not in known]
    if unknown:
        raise ConfigError(f"study {study.name} has no run named {', '.join(unknown)} "
                          f"(runs: {', '.join(dict.fromkeys(s.name for s in specs))})")
    return [s for s in specs if s.name in only or s.folder in only]


def run_study(study: Study, root: Path, only: list[str] | None = None, log: Callable[[str], None] = print,
              summary: bool = True) -> Path:
    """Train (or decode) what is not finished, or only the named runs, then write the summary;
    returns the study's folder. Passes over the runs until one trains nothing: runs that other
    processes held on the first pass, and were left unfinished, are taken over."""
    study = dataclasses.replace(study, root=root)  # fine-tuning runs name their sources under it
    chosen = select(study, only)
    folder = root / study.folder
    folder.mkdir(parents=True, exist_ok=True)
    train = chosen[0].config.train
    d = join(train.device, train.collective_timeout)  # under torchrun every run is data-parallel; rank 0 writes
    if only:  # runs named explicitly are tried again even if they failed
        for spec in chosen:
            if d.main:
                (folder / spec.folder / "error.txt").unlink(missing_ok=True)
        d.barrier()
    first = True
    while True:
        outcomes = [_run_one(study, spec, folder, f"[{i}/{len(chosen)}] {spec.label}", log if first else None)
                    for i, spec in enumerate(chosen, 1)]
        first = False
        if "trained" not in outcomes:
            break
    if d.main and summary:
        specs = study.run_specs()
        write_summary(study, folder, specs, [run_state(study, s, folder / s.folder) for s in specs])
    return folder


def _run_one(study: Study, spec: RunSpec, folder: Path, label: str, log: Callable[[str], None] | None) -> str:
    """Claim and train one run if it needs it: "trained", or why not ("finished", "busy", ...).
    ``log`` None: report only what is done (a later pass)."""
    d = current()
    say = log or (lambda _: None)
    run_dir = folder / spec.folder
    state = d.from_main(run_state(study, spec, run_dir) if d.main else None)
    if state == "changed":
        say(f"{label}: skipped: {run_dir} holds this run with other options, another budget or a larger "
            f"train.patience (or, decoded, an older model or without a validation score); move that folder "
            f"away to run it as the study now defines it")
        return state
    if state == "waiting":
        say(f"{label}: waiting for {spec.stage.source} to finish")
        return state
    if state in ("finished", "failed"):
        say(f"{label}: {state}, skipped" + (
            f" ({(run_dir / 'error.txt').read_text().strip()}; --only {spec.folder} retries it)"
            if state == "failed" else ""))
        return state
    started = time.monotonic()
    try:
        results = _execute(study, spec, run_dir, lambda: (log or print)(
            f"{label}: {'resuming' if state == 'partial' else 'starting'} ({_differences(spec) or 'the base config'})"))
        if results.get("interrupted"):
            (log or print)(f"study {study.name} interrupted in run {spec.label}; the same command resumes it")
            raise KeyboardInterrupt
        results["study_run_minutes"] = (time.monotonic() - started) / 60
        if d.main:
            write_results(run_dir, results)
    except RunFinished:  # another process finished it since the state was read
        return "finished"
    except RunFolderBusy as err:  # another worker or terminal trains it: leave it to that process
        say(f"{label}: held by {err.holder}; left to it")
        return "busy"
    except RUN_FAILURES as err:  # this run diverged or its options are wrong: record it, go on with the others
        if d.main:
            write_text(run_dir / "error.txt", f"{err}\n")
        (log or print)(f"{label}: failed: {err}")
        return "failed"
    except Exception as err:  # not the run's fault (disk, fetch, resume): stop the study, keep the run
        (log or print)(f"{label}: the study stops here; the run stays resumable and the same command goes on "
                       f"once the cause is fixed")
        raise err from None
    finally:
        unlock_run_dir(run_dir)
    (log or print)(f"{label}: done in {(time.monotonic() - started) / 60:.1f} min")
    return "trained"


def _execute(study: Study, spec: RunSpec, run_dir: Path, claimed: Callable[[], None]) -> dict[str, Any]:
    """Lock the run folder (run_study unlocks it), say so, and train or decode the run."""
    open_run_dir(spec.config, run_dir)  # RunFolderBusy when another process holds it
    scored_only = study.task == "decode" or spec.stage is not None and spec.stage.kind != "from"
    if scored_only and run_state(study, spec, run_dir) == "finished":  # scored by another process meanwhile
        raise RunFinished(f"{run_dir} was scored by another process")  # (a trained run's lock checks this itself)
    claimed()
    if study.task == "decode":
        return decode(study, spec.config, run_dir)
    if spec.stage is not None and spec.stage.kind != "from":
        return score_stage(study, spec, run_dir)
    if study.task == "captioning":
        from seq2seq.tasks.captioning import run
    elif study.task == "long_dependency":
        from seq2seq.tasks.long_dependency import run
    else:
        from seq2seq.tasks.translation import run
    if spec.stage is None:
        return run(spec.config, run_dir)
    start = record_start(run_dir, inputs(study, spec, study_folder(spec, run_dir)))  # a fine-tuning run's start
    return {**run(spec.config, run_dir), "inputs_sha256": start}


def decode(study: Study, cfg: Config, run_dir: Path) -> dict[str, Any]:
    """Decode the validation and test sets of the study's trained model with the search options
    of ``cfg``: a setting is chosen on ``valid_bleu`` and reported with its ``test_bleu``."""
    from seq2seq.files import write_lines, write_references
    from seq2seq.tasks.translation import evaluate, load_data
    from seq2seq.tasks.translator import Translator
    from seq2seq.train.checkpoints import load_checkpoint, resolve_checkpoint

    if load_checkpoint(resolve_checkpoint(study.model)).get("task") != "translation":
        raise ConfigError(f"study {study.name}: decode studies take a translation run folder, not {study.model}")
    sha = model_sha256(study.model)
    translator = Translator.load(study.model, device=cfg.train.device)
    translator.cfg = cfg  # the trained model's config with this run's search options
    data = load_data(cfg)
    test = data.test
    if not test or not data.valid:
        raise ConfigError(f"study {study.name}: the model's corpus needs a validation and a test split to decode")
    valid = evaluate(translator, data.valid, beam=cfg.search.beam)
    out = evaluate(translator, test, beam=cfg.search.beam)
    if current().main:
        write_lines(run_dir / "test.hyp.txt", out["hypotheses"])
        write_references(run_dir, [ex.refs for ex in test])
    words = sum(len(h.split()) for h in out["hypotheses"])
    return {"model": str(study.model), "checkpoint_sha256": sha, "beam": cfg.search.beam,
            "length_penalty": cfg.search.length_penalty,
            "valid_bleu": valid["bleu"], "valid_brevity_penalty": valid["brevity_penalty"],
            "test_bleu": out["bleu"], "brevity_penalty": out["brevity_penalty"], "test_chrf": out["chrf"],
            "mean_output_words": words / len(test), "sentences_per_second": out["sentences_per_second"],
            "sacrebleu_signature": out["bleu_signature"], "eval_precision": precision_name(translator.amp_dtype)}
