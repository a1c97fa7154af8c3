"""What every experiment script shares: options, the run folder, results, and clean errors."""

from __future__ import annotations

import argparse
import atexit
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import yaml

from seq2seq.config import Config, ConfigError, config_from_dict, load_config
from seq2seq.data.corpora import CorpusError
from seq2seq.data.fetch import FetchError
from seq2seq.data.images import ImageError
from seq2seq.files import WriteError, atomic_write
from seq2seq.models.backbones import BackboneError
from seq2seq.options import load_yaml
from seq2seq.tokenizers import TokenizerError
from seq2seq.train.checkpoints import CheckpointError, load_checkpoint
from seq2seq.train.distributed import current, end_rank, join
from seq2seq.train.faults import CollectiveTimeout, ResumeRefused, RunFolderBusy, RunLock
from seq2seq.train.progress import Progress, finish_reason

T = TypeVar("T")
PRUNED_PROGRESS = "progress.json"  # a finished run's progress, kept when its checkpoints are pruned
USER_ERRORS = (ConfigError, CorpusError, FetchError, CheckpointError, TokenizerError, BackboneError, ImageError,
               FloatingPointError, WriteError, RunFolderBusy, ResumeRefused, CollectiveTimeout)


class RunFinished(Exception):
    """The run folder holds a finished run and nothing asks for more: leave its results alone."""


def log(message: str) -> None:
    """A timestamped line on stdout (from rank 0 alone in a data-parallel run)."""
    if current().main:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def spread(items: Sequence[T], n: int | None) -> Sequence[T]:
    """At most ``n`` items evenly spaced over ``items`` (corpora are often sorted by length), in a
    list; pairs read on demand from files (a sequence with a ``take`` method) stay on demand."""
    lazy = hasattr(items, "take")
    if n is None or n >= len(items):
        return items if lazy else list(items)
    if lazy:
        return items.take((np.arange(max(n, 0)) * len(items) / n).astype(np.int64))
    return [items[int(i * len(items) / n)] for i in range(n)] if n > 0 else []


def experiment_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", type=Path, help="YAML config (sections data, model, train, search, tracking)")
    parser.add_argument("--time-budget", type=float, metavar="MINUTES",
                        help="stop training after this many minutes (validation included), then evaluate")
    parser.add_argument("--run-dir", type=Path, help="run folder; an unfinished run there is resumed")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="e.g. model.attention=bahdanau train.lr=1e-3")
    return parser


def comparable(cfg: dict[str, Any]) -> dict[str, Any]:
    """A config without the options that may change when a run is resumed."""
    out = json.loads(json.dumps(cfg))
    for key in ("time_budget", "max_steps", "max_epochs", "patience", "device", "checkpoint_minutes",
                "gradient_flow_every", "log_every", "allow_mismatched_resume", "collective_timeout",
                "keep_checkpoints"):
        out["train"].pop(key, None)
    out.pop("tracking", None)
    return out


def prepare_run(args: argparse.Namespace, name: str, default_config: Path | None = None) -> tuple[Config, Path]:
    """Resolve the config (``--config``, else the script's default file) and the run folder;
    refuse to resume a run made with another config."""
    cfg = load_config(args.config or default_config, args.overrides)
    if args.time_budget is not None:
        if not 0 < args.time_budget < float("inf"):  # nan and inf too
            raise ConfigError(f"--time-budget must be a positive number of minutes, got {args.time_budget}")
        cfg.train.time_budget = args.time_budget
    d = join(cfg.train.device, cfg.train.collective_timeout)  # torchrun's process group, if launched by it
    run_dir = d.from_main(args.run_dir or Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}")
    open_run_dir(cfg, run_dir)
    return cfg, run_dir


def open_run_dir(cfg: Config, run_dir: Path) -> None:
    """Make ``run_dir`` ready for ``cfg`` and write the resolved config there. Refuse a folder
    holding a run with another config; raise RunFinished for a finished one, leaving it untouched.
    In a data-parallel run rank 0 does this, and the other ranks raise what it raised."""
    d = current()
    if not d.active:
        _open_run_dir(cfg, run_dir)
        return
    failure: Exception | None = None
    if d.main:
        try:
            _open_run_dir(cfg, run_dir)
        except (ConfigError, RunFinished, RunFolderBusy, WriteError) as err:
            failure = err
    failure = d.from_main(failure)
    if failure is not None:
        raise failure


def _open_run_dir(cfg: Config, run_dir: Path) -> None:
    saved = run_dir / "config.yaml"
    if saved.exists():
        if not same_run_config(run_dir, cfg):
            raise ConfigError(f"run folder {run_dir} holds a run with a different config; "
                              f"choose another --run-dir or the same config to resume it")
        _raise_if_finished(run_dir, cfg)  # before locking: a finished folder is not even locked
    lock_run_dir(run_dir)
    if saved.exists():
        try:  # again, under the lock: another process may have finished it meanwhile
            _raise_if_finished(run_dir, cfg)
        except RunFinished:
            unlock_run_dir(run_dir)
            raise
    write_text(saved, config_yaml(cfg))


def _raise_if_finished(run_dir: Path, cfg: Config) -> None:
    reason = finished_run_reason(run_dir, cfg)
    if reason:
        raise RunFinished(f"run folder {run_dir} holds a finished run ({reason}); its results are in "
                          f"{run_dir / 'results.json'}. To train it further, raise {_limit_option(reason)}")
    if pruned(run_dir):
        raise ConfigError(f"run folder {run_dir} holds a finished run whose checkpoints were pruned: it cannot "
                          f"train further; choose another --run-dir")


_locks: dict[Path, RunLock] = {}


def lock_run_dir(run_dir: Path) -> None:
    """Hold ``run_dir``'s lock until :func:`unlock_run_dir` or the end of the process."""
    key = Path(run_dir).resolve()
    if key not in _locks:
        lock = RunLock(run_dir)
        note = lock.acquire()
        if note:
            log(note)
        _locks[key] = lock
        for folder in (run_dir, run_dir / "checkpoints", run_dir / "tokenizers"):
            for partial in Path(folder).glob(".*.tmp"):  # what a killed process's atomic writes left
                partial.unlink(missing_ok=True)


def unlock_run_dir(run_dir: Path) -> None:
    lock = _locks.pop(Path(run_dir).resolve(), None)
    if lock is not None:
        lock.release()


@atexit.register
def _unlock_all() -> None:
    for lock in _locks.values():
        lock.release()
    _locks.clear()


def config_yaml(cfg: Config) -> str:
    """The resolved config as the YAML a run folder keeps."""
    return yaml.safe_dump(json.loads(json.dumps(cfg.to_dict())), sort_keys=False)


def same_run_config(run_dir: Path, cfg: Config) -> bool:
    """Whether ``run_dir`` (if it holds a config) was made with ``cfg``, limits and tracking aside."""
    saved = run_dir / "config.yaml"
    if not saved.exists():
        return True
    try:  # through the current defaults: options added since the run was made take their defaults
        old = config_from_dict(load_yaml(saved.read_text(encoding="utf-8")) or {})
    except ConfigError:  # an option the run used no longer exists
        return False
    return comparable(old.to_dict()) == comparable(cfg.to_dict())


def stored_progress(run_dir: Path) -> dict[str, Any] | None:
    """The progress of the run in ``run_dir`` as it was saved (its last checkpoint's, or the one
    a finished run kept when its checkpoints were pruned), or None before one. Fields added to
    :class:`Progress` since are absent, not filled with defaults the run never had."""
    last = run_dir / "checkpoints" / "last.pt"
    if last.is_file():
        return load_checkpoint(last, mmap=True)["progress"]
    pruned = run_dir / PRUNED_PROGRESS
    return json.loads(pruned.read_text(encoding="utf-8")) if pruned.is_file() else None


def run_progress(run_dir: Path) -> Progress | None:
    """Where the run in ``run_dir`` stands (see :func:`stored_progress`), or None before one."""
    stored = stored_progress(run_dir)
    return Progress(**stored) if stored is not None else None


def pruned(run_dir: Path) -> bool:
    """Whether the run in ``run_dir`` is known only by the progress it kept when its checkpoints were pruned."""
    return (run_dir / PRUNED_PROGRESS).is_file() and not (run_dir / "checkpoints" / "last.pt").is_file()


def finished_run_reason(run_dir: Path, cfg: Config, progress: Progress | None = None) -> str:
    """Why the run in ``run_dir`` is finished under ``cfg`` (its limits reached, its results
    written for its last step), or "" when it is new, unfinished, or asked to go further."""
    results = run_dir / "results.json"
    if not results.is_file():
        return ""
    progress = progress or run_progress(run_dir)
    if progress is None or progress.last_validation != progress.step:
        return ""
    try:
        scored_step = json.loads(results.read_text(encoding="utf-8")).get("train_steps")
    except ValueError:
        return ""
    if scored_step != progress.step:  # trained further since those results: evaluate again
        return ""
    return finish_reason(cfg.train, progress)


def _limit_option(reason: str) -> str:
    """The option that lifts the limit a finish reason names."""
    for words, option in (("time budget", "--time-budget"), ("max_steps", "train.max_steps"),
                          ("max_epochs", "train.max_epochs"), ("no better", "train.patience")):
        if reason.startswith(words):
            return option
    return "the limit it reached"


def write_text(path: Path, text: str) -> None:
    atomic_write(path, text)


def write_results(run_dir: Path, results: dict[str, Any]) -> Path:
    path = run_dir / "results.json"
    write_text(path, json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    return path


def run_cli(main: Callable[[], int]) -> int:
    """Run ``main``; a user error prints one line naming what is wrong, never a traceback.
    A rank of a data-parallel run ends through :func:`~seq2seq.train.distributed.end_rank`."""
    try:
        code = main()
    except RunFinished as done:
        log(str(done))
        code = 0
    except USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        code = 130
    if current().active:
        end_rank(code)
    return code


def report(run_dir: Path, results: dict[str, Any], headline: str | None, tool: str) -> int:
    """Write results.json and print the results, the headline and where the model is (rank 0)."""
    if not current().main:
        return 130 if results.get("interrupted") else 0
    if results.get("interrupted"):
        log(f"interrupted; run the same command with --run-dir {run_dir} to resume")
        return 130
    path = write_results(run_dir, results)
    print(json.dumps({k: v for k, v in results.items() if not isinstance(v, dict)}, indent=2))
    if headline:
        print(f"\n{headline}")
    print(f"results: {path}\nmodel:   {run_dir}/checkpoints/best.pt\n{tool}")
    return 0
