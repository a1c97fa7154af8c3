"""Where a run's numbers came from: the code version, torch, the processor, the precision it
resolved to and how many processes trained it.

A checkpoint keeps one record per training session (a resumed run adds one when anything
changed), so ``results.json`` describes the machines that trained, not the one that wrote it.
"""

from __future__ import annotations

import functools
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch

FIELDS = ("git_commit", "git_dirty", "torch_version", "device_name", "precision", "processes")


@functools.cache
def git_state() -> tuple[str | None, bool | None]:
    """The commit of the package's checkout and whether it has uncommitted changes (None, None
    outside a git checkout, e.g. an installed wheel)."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10)
        if commit.returncode != 0:
            return None, None
        status = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no", "--",
                                 "seq2seq", "experiments", "pyproject.toml"], capture_output=True, text=True,
                                timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None, None
    return commit.stdout.strip(), bool(status.stdout.strip())


def cpu_name() -> str:
    """The CPU model as /proc/cpuinfo names it (else what Python knows)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: torch.device) -> str:
    """The GPU's name on a GPU, else the CPU model."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_name()


def session(device: torch.device, precision: str, processes: int) -> dict[str, Any]:
    """This training session's record."""
    commit, dirty = git_state()
    return {"git_commit": commit, "git_dirty": dirty, "torch_version": str(torch.__version__),
            "device_name": device_name(device), "precision": precision, "processes": processes}


def add_session(sessions: list[dict[str, Any]], record: dict[str, Any]) -> list[dict[str, Any]]:
    """``sessions`` with ``record`` appended unless it repeats the last one."""
    return sessions if sessions and sessions[-1] == record else [*sessions, record]


def summarise(sessions: list[dict[str, Any]]) -> dict[str, Any]:
    """One value per field for ``results.json``: the sessions' common value, or their distinct
    values joined by " + " in order (a run resumed on another machine or code version)."""
    out: dict[str, Any] = {}
    for key in FIELDS:
        values: list[Any] = []
        for s in sessions:
            if s.get(key) not in values:
                values.append(s.get(key))
        out[key] = values[0] if len(values) == 1 else " + ".join(str(v) for v in values) if values else None
    out["training_sessions"] = len(sessions)
    return out
