"""Every file the project writes goes through :func:`atomic_write`: a temporary file in the same
folder, flushed to disk, renamed over the target. A crash, a kill or a full disk mid-write
leaves the old file (or none), never half of one, and a failed write is a one-line
:class:`WriteError` naming the path and the cause. The file gets the permissions a plain
``open`` would give it (the umask's for a new file, the old file's for a replaced one), not the
owner-only ones of a temporary file."""

from __future__ import annotations

import contextlib
import json
import os
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


class WriteError(OSError):
    """A file could not be written (full disk, read-only folder, no permission)."""


def first_line(err: BaseException, limit: int = 200) -> str:
    """An exception's message as one line for an error naming a file (its type when it has no message)."""
    text = str(err).strip()
    return text.splitlines()[0][:limit] if text else type(err).__name__


def write_error(path: Path, err: OSError) -> WriteError:
    cause = err.strerror or str(err) or type(err).__name__
    return WriteError(f"cannot write {path}: {cause}")


def atomic_write(path: str | Path, data: bytes | memoryview | str | Callable[[BinaryIO], None]) -> Path:
    """Write bytes, UTF-8 text, or whatever ``data(file)`` writes, to ``path`` atomically."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        mode = _mode(path)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            with contextlib.suppress(OSError):  # permission bits are a courtesy: some mounts refuse chmod
                os.fchmod(f.fileno(), mode)
            if callable(data):
                data(f)
            else:
                f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise write_error(path, err) from None
    except BaseException:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _umask_at_import() -> int:
    """The umask where /proc cannot tell it: reading it means setting it, so this runs once, at
    import, before any thread could create a file in between."""
    umask = os.umask(0o077)
    os.umask(umask)
    return umask


_UMASK = _umask_at_import()


def _umask() -> int:
    """The process's umask now (Linux's /proc/self/status), else as it was at import."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return _UMASK


def _mode(path: Path) -> int:
    """The permissions ``open(path, "w")`` would leave: the file's own, else 0o666 less the umask."""
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except OSError:
        return 0o666 & ~_umask()


def write_lines(path: str | Path, lines: list[str]) -> Path:
    """One line per item, each ending in a newline."""
    return atomic_write(path, "".join(line + "\n" for line in lines))


REFERENCES = "test.refs.jsonl"  # every scored run folder: each test item's references, one JSON list a line


def write_references(run_dir: Path, refs: list[list[str]]) -> Path:
    """The test references beside a run's hypotheses, so that runs can be compared (paired tests)
    without the corpus."""
    return write_lines(Path(run_dir) / REFERENCES, [json.dumps(r, ensure_ascii=False) for r in refs])


def read_lines(path: str | Path) -> list[str]:
    """The lines :func:`write_lines` wrote."""
    return Path(path).read_text(encoding="utf-8").split("\n")[:-1]


def read_references(run_dir: Path) -> list[list[str]]:
    return [json.loads(line) for line in read_lines(Path(run_dir) / REFERENCES)]
