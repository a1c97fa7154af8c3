"""Run a study: its runs one after another, each an ordinary run folder under
``<root>/<study>/<run>/``; finished runs are skipped and an interrupted one resumes, so running
the same command again after Ctrl-C, a crash or a closed laptop carries on where it stopped.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from seq2seq.config import Config, ConfigError
from seq2seq.experiment import (
    USER_ERRORS,
    RunFinished,
    config_yaml,
    finished_run_reason,
    open_run_dir,
    same_run_config,
    unlock_run_dir,
    write_results,
    write_text,
)
from seq2seq.runtime import precision_name
from seq2seq.study.spec import RunSpec, Study
from seq2seq.study.summary import write_summary
from seq2seq.train.distributed import current, join
from seq2seq.train.faults import RunFolderBusy

STATES = ("pending", "partial", "finished", "failed")


def run_state(study: Study, spec: RunSpec, run_dir: Path) -> str:
    """pending (never started), partial (started, resumable), finished, failed (see error.txt), or
    changed (the folder holds a run made with other options than the study now gives it)."""
    if not same_run_config(run_dir, spec.config):
        return "changed"
    if (run_dir / "error.txt").is_file():
        return "failed"
    if study.task == "decode":
        return "finished" if (run_dir / "results.json").is_file() else "pending"
    if finished_run_reason(run_dir, spec.config):
        return "finished"
    return "partial" if (run_dir / "checkpoints" / "last.pt").is_file() else "pending"


def describe_runs(study: Study, root: Path) -> list[str]:
    """One line per run: its name, state and overrides (``--list``)."""
    folder = root / study.name
    lines = [f"{study.name}: {study.description}" if study.description else study.name, f"  {study.budget_line()}"]
    for spec in study.run_specs():
        state = run_state(study, spec, folder / spec.name)
        lines.append(f"  {spec.name:<32} {state:<9} {_differences(spec)}")
    return lines


def _differences(spec: RunSpec) -> str:
    """What sets a run apart: its config file and its overrides."""
    return " ".join(([f"--config {spec.config_file.name}"] if spec.config_file else []) + spec.overrides)


def dry_run(study: Study) -> str:
    """The resolved config of every run, as YAML documents (``--dry-run``)."""
    docs = [f"# {study.name}/{spec.name}\n" + config_yaml(spec.config) for spec in study.run_specs()]
    return "---\n".join(docs)


def run_study(study: Study, root: Path, only: list[str] | None = None,
              log: Callable[[str], None] = print) -> Path:
    """Run what is not finished (or only the named runs), then write the summary; its folder."""
    specs = study.run_specs()
    names = [s.name for s in specs]
    unknown = [n for n in only or [] if n not in names]
    if unknown:
        raise ConfigError(f"study {study.name} has no run named {', '.join(unknown)} (runs: {', '.join(names)})")
    folder = root / study.name
    folder.mkdir(parents=True, exist_ok=True)
    d = join(specs[0].config.train.device)  # under torchrun every run is data-parallel; rank 0 writes
    main = d.main
    for i, spec in enumerate(specs, 1):
        if only and spec.name not in only:
            continue
        run_dir = folder / spec.name
        state = run_state(study, spec, run_dir)
        if state == "failed" and only:  # named explicitly: try again
            if main:
                (run_dir / "error.txt").unlink()
            d.barrier()
            state = run_state(study, spec, run_dir)
        if state == "changed":
            log(f"[{i}/{len(specs)}] {spec.name}: skipped: {run_dir} holds this run with other options; "
                f"move that folder away to train the run as the study now defines it")
            continue
        if state in ("finished", "failed"):
            log(f"[{i}/{len(specs)}] {spec.name}: {state}, skipped" + (
                f" ({(run_dir / 'error.txt').read_text().strip()}; --only {spec.name} retries it)"
                if state == "failed" else ""))
            continue
        log(f"[{i}/{len(specs)}] {spec.name}: {'resuming' if state == 'partial' else 'starting'} "
            f"({_differences(spec) or 'the base config'})")
        started = time.monotonic()
        try:
            results = _execute(study, spec, run_dir)
            if results.get("interrupted"):
                log(f"study {study.name} interrupted in run {spec.name}; the same command resumes it")
                raise KeyboardInterrupt
            results["study_run_minutes"] = (time.monotonic() - started) / 60
            if main:
                write_results(run_dir, results)
        except RunFinished:
            log(f"[{i}/{len(specs)}] {spec.name}: finished, skipped")
            continue
        except RunFolderBusy as err:  # another process trains it: leave it to that process
            log(f"[{i}/{len(specs)}] {spec.name}: skipped: {err}")
            continue
        except USER_ERRORS as err:  # this run diverged or its data failed: record it, go on with the others
            if main:
                write_text(run_dir / "error.txt", f"{err}\n")
            log(f"[{i}/{len(specs)}] {spec.name}: failed: {err}")
            continue
        finally:
            unlock_run_dir(run_dir)
        log(f"[{i}/{len(specs)}] {spec.name}: done in {(time.monotonic() - started) / 60:.1f} min")
    if main:
        write_summary(study, folder, specs, [run_state(study, s, folder / s.name) for s in specs])
    return folder


def _execute(study: Study, spec: RunSpec, run_dir: Path) -> dict[str, Any]:
    if study.task == "decode":
        if current().main:
            run_dir.mkdir(parents=True, exist_ok=True)
            write_text(run_dir / "config.yaml", config_yaml(spec.config))
        return decode(study, spec.config, run_dir)
    if study.task == "captioning":
        from seq2seq.tasks.captioning import run
    elif study.task == "long_dependency":
        from seq2seq.tasks.long_dependency import run
    else:
        from seq2seq.tasks.translation import run
    open_run_dir(spec.config, run_dir)  # locks the folder: run_study unlocks it
    return run(spec.config, run_dir)


def decode(study: Study, cfg: Config, run_dir: Path) -> dict[str, Any]:
    """Decode the test set of the study's trained model with the search options of ``cfg``."""
    from seq2seq.files import write_lines
    from seq2seq.tasks.translation import evaluate, load_data
    from seq2seq.tasks.translator import Translator
    from seq2seq.train.checkpoints import load_checkpoint, resolve_checkpoint

    if load_checkpoint(resolve_checkpoint(study.model)).get("task") != "translation":
        raise ConfigError(f"study {study.name}: decode studies take a translation run folder, not {study.model}")
    translator = Translator.load(study.model, device=cfg.train.device)
    translator.cfg = cfg  # the trained model's config with this run's search options
    test = load_data(cfg).test
    if not test:
        raise ConfigError(f"study {study.name}: the model's corpus has no test split to decode")
    out = evaluate(translator, test, beam=cfg.search.beam)
    if current().main:
        write_lines(run_dir / "test.hyp.txt", out["hypotheses"])
    words = sum(len(h.split()) for h in out["hypotheses"])
    return {"model": str(study.model), "beam": cfg.search.beam, "length_penalty": cfg.search.length_penalty,
            "test_bleu": out["bleu"], "brevity_penalty": out["brevity_penalty"], "test_chrf": out["chrf"],
            "mean_output_words": words / len(test), "sentences_per_second": out["sentences_per_second"],
            "sacrebleu_signature": out["bleu_signature"], "eval_precision": precision_name(translator.amp_dtype)}
