"""Fault handling beside the trainer: one process per run folder, and no poisoned checkpoint.

A run folder is locked for the whole run with ``flock`` on ``run.lock``: a second launch on a
busy folder stops at once and names the process holding it. The operating system releases the
lock when its process dies, even by ``kill -9``, so a lock left behind by a dead process is
detected (its file names a process that no longer holds it) and taken over with a message.
"""

from __future__ import annotations

import contextlib
import fcntl
import math
import os
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any

from torch import nn

from seq2seq.files import first_line, write_error

LOCK_NAME = "run.lock"


class RunFolderBusy(RuntimeError):
    """Another process is training in this run folder (``holder``: which, as its lock says)."""

    def __init__(self, message: str, holder: str = "another process"):
        super().__init__(message)
        self.holder = holder


class CollectiveTimeout(RuntimeError):
    """A data-parallel rank waited longer than train.collective_timeout for the others."""

    @classmethod
    def at(cls, rank: int, world: int, step: int, minutes: float, cause: BaseException,
           resume: Path) -> "CollectiveTimeout":
        """The one line a rank stops with: who, after which step, and what to resume from."""
        return cls(f"rank {rank} of {world} stopped after step {step}: a collective of step {step + 1} (or of its "
                   f"validation) failed or waited longer than train.collective_timeout={minutes:g} min for the other "
                   f"ranks ({first_line(cause)}); {resume} is the state to resume from")


class ResumeRefused(RuntimeError):
    """Resuming here would change how the run computes mid-way (precision, processes)."""


def check_resumable(path: Path, ckpt: dict[str, Any], precision: str, processes: int) -> None:
    """Refuse to go on at another resolved precision (other arithmetic) or number of processes
    (another batch per step) than the checkpoint's run trained with."""
    last = (ckpt.get("sessions") or [{}])[-1]
    now = {"precision": precision, "processes": processes}
    was = {"precision": ckpt.get("precision", precision), "processes": last.get("processes", 1)}
    changed = [f"{k} {was[k]} -> {now[k]}" for k in now if was[k] != now[k]]
    if changed:
        raise ResumeRefused(f"{path} was trained with {', '.join(f'{k} {was[k]}' for k in now)}; resuming here "
                            f"would change {', '.join(changed)} mid-run: resume it where it ran, or set "
                            f"train.allow_mismatched_resume=true to go on anyway")


class RunLock:
    """An exclusive lock on a run folder, held until :meth:`release` or the process ends."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK_NAME
        self.file = None

    def acquire(self) -> str:
        """Take the lock; returns a note when it takes over one left by a dead process, else ""."""
        try:
            return self._acquire()
        except OSError as err:  # a read-only or full folder: one line, like every failed write
            raise write_error(self.path, err) from None

    def _acquire(self) -> str:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            f = open(self.path, "a+", encoding="utf-8")
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.seek(0)
                holder = f.read().strip() or "another process"
                f.close()
                raise RunFolderBusy(f"run folder {self.path.parent} is in use by {holder}; wait for it to finish, "
                                    f"stop it, or choose another --run-dir", holder) from None
            if self.path.exists() and os.stat(self.path).st_ino == os.fstat(f.fileno()).st_ino:
                break
            f.close()  # the holder released and removed the file between our open and our lock: again
        f.seek(0)
        previous = f.read().strip()
        f.seek(0)
        f.truncate()
        f.write(f"process {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        f.flush()
        self.file = f
        return f"taking over the lock of {self.path.parent} left by {previous}, which has ended" if previous else ""

    def release(self) -> None:
        if self.file is not None:
            self.path.unlink(missing_ok=True)  # while still held: no one else can have it yet
            fcntl.flock(self.file, fcntl.LOCK_UN)
            self.file.close()
            self.file = None


class StopNow(KeyboardInterrupt):
    """A second Ctrl-C: leave at once, wherever the step is, without saving."""


class StopSignals:
    """While installed, Ctrl-C or SIGTERM set :attr:`requested` (training stops after the
    current step and saves); a second Ctrl-C raises :class:`StopNow` at once, without saving
    (the last checkpoint on disk stays the resumable state)."""

    def __init__(self):
        self.requested = False
        self.previous: dict[int, Any] = {}

    def install(self) -> None:
        self.requested = False
        if threading.current_thread() is not threading.main_thread():
            return  # only the main thread may set handlers
        self.previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
        for sig in self.previous:
            signal.signal(sig, self._handler)

    def restore(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        self.previous = {}

    def _handler(self, signum: int, frame: Any) -> None:
        if self.requested and signum == signal.SIGINT:
            raise StopNow
        self.requested = True
        # os.write, not print: a handler may interrupt a print, and buffered writes are not re-entrant
        with contextlib.suppress(OSError):  # stderr may be closed
            os.write(2, b"\nstopping after this step; the run can be resumed (Ctrl-C again to stop at once, "
                        b"losing the steps since the last checkpoint)\n")


def non_finite_parameter(model: nn.Module) -> str | None:
    """The name of the first parameter holding a NaN or an infinity, or None."""
    for name, p in model.named_parameters():
        if not bool(p.detach().isfinite().all()):
            return name
    return None


def diverged(loss: float, grad_norm: float, step: int, kept: str) -> FloatingPointError:
    """The one-line error of a step whose loss or gradient norm is not finite (it was not applied);
    ``kept`` says which checkpoint the run can go on from."""
    what = f"loss became {loss}" if not math.isfinite(loss) else f"gradient norm became {grad_norm}"
    return FloatingPointError(f"training {what} at step {step} (not applied to the weights){kept}; to get past it, "
                              f"lower train.lr or train.clip_norm (0 turns clipping off) in a new run")
