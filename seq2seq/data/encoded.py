"""Encoded training pairs: the ids of every sentence side by side in one flat array, plus offsets.

Encoding streams the pairs through the tokenizers in chunks (in a worker process per core,
each reading its chunk itself when the pairs come from files) into files in the cache, one
folder per (pairs, tokenizers, ``max_len``). The folder is written once, renamed into place
when complete, and memory-mapped by every later run, resume and rank, so memory does not grow
with the corpus beyond the map.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import itertools
import json
import os
import shutil
import signal
import sys
import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from seq2seq.data.fetch import cache_dir, cache_lock
from seq2seq.tokenizers import SubwordTokenizer, Tokenizer, load_tokenizer_file

CHUNK = 100_000  # pairs encoded at a time
SIDES = ("src", "tgt")


class TokenArray:
    """Id sequences stored flat: sequence ``i`` is ``ids[offsets[i]:offsets[i + 1]]``."""

    def __init__(self, ids: np.ndarray, offsets: np.ndarray):
        self.ids, self.offsets = ids, offsets  # (tokens,) and (sequences + 1,), memory-mapped or not

    @classmethod
    def from_lists(cls, seqs: Sequence[Sequence[int]]) -> "TokenArray":
        lengths = np.fromiter(map(len, seqs), dtype=np.int64, count=len(seqs))
        ids = np.fromiter(itertools.chain.from_iterable(seqs), dtype=np.int32, count=int(lengths.sum()))
        return cls(ids, np.concatenate([[0], np.cumsum(lengths)]))

    @classmethod
    def open(cls, folder: Path, side: str, dtype: str, tokens: int) -> "TokenArray":
        ids = (np.memmap(folder / f"{side}.ids", dtype=dtype, mode="r", shape=(tokens,)) if tokens
               else np.zeros(0, dtype=dtype))
        return cls(ids, np.load(folder / f"{side}.offsets.npy", mmap_mode="r"))

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> list[int]:
        return self.ids[self.offsets[i]:self.offsets[i + 1]].tolist()

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)  # (sequences,)


@dataclass
class EncodedPairs:
    src: TokenArray
    tgt: TokenArray
    folder: Path  # where they are cached
    meta: dict  # pairs, dropped, seconds (of encoding), and each side's dtype and tokens
    fresh: bool  # encoded now (else read from the cache)

    def describe(self) -> str:
        m = self.meta
        if not self.fresh:
            return f"{m['pairs']:,} training pairs read from the cache: {self.folder}"
        total = m["pairs"] + m["dropped"]
        rate = total / max(m["seconds"], 1e-9)
        return (f"{m['pairs']:,} training pairs encoded in {m['seconds']:.0f} s ({rate:,.0f} pairs/s; "
                f"{m['dropped']:,} of {total:,} dropped for length): {self.folder}")


def encode_corpus(pairs: Sequence[tuple[str, str]], src_tok: Tokenizer, tgt_tok: Tokenizer,
                  max_len: int) -> EncodedPairs:
    """Ids of both sides of ``pairs``, dropping pairs with an empty side or a side longer than
    ``max_len``: read from the cache, or encoded into it first."""
    key = hashlib.sha256(json.dumps({"pairs": _fingerprint(pairs), "src": src_tok.sha256(), "tgt": tgt_tok.sha256(),
                                     "max_len": max_len}).encode()).hexdigest()[:24]
    folder = cache_dir() / "encoded" / key
    with cache_lock(str(folder)):  # a second process waits, then reads what the first encoded
        fresh = _read_meta(folder) is None
        if fresh:
            _encode(pairs, {"src": src_tok, "tgt": tgt_tok}, max_len, folder)
    return open_encoded(folder, fresh)


def open_encoded(folder: Path, fresh: bool = False) -> EncodedPairs:
    """Memory-map an encoded corpus's folder."""
    meta = _read_meta(folder)
    if meta is None:
        raise FileNotFoundError(f"{folder} holds no encoded corpus")
    src, tgt = (TokenArray.open(folder, side, meta[side]["dtype"], meta[side]["tokens"]) for side in SIDES)
    return EncodedPairs(src, tgt, folder, meta, fresh)


def _fingerprint(pairs: Sequence[tuple[str, str]]) -> str:
    """Lazily read pairs say what they depend on; pairs in memory are hashed."""
    if hasattr(pairs, "fingerprint"):
        return pairs.fingerprint()
    digest = hashlib.sha256()
    for chunk in _chunks(pairs, CHUNK):
        digest.update("".join(f"{s}\t{t}\n" for s, t in chunk).encode("utf-8"))
    return digest.hexdigest()


def _chunks(pairs: Sequence[tuple[str, str]], size: int) -> Iterator[Sequence[tuple[str, str]]]:
    """Consecutive pieces of ``pairs``; pairs read on demand give pieces that read on demand too."""
    for lo in range(0, len(pairs), size):
        yield pairs.chunk(lo, lo + size) if hasattr(pairs, "chunk") else pairs[lo:lo + size]


def _read_meta(folder: Path) -> dict | None:
    """The folder's description, or None when it is missing or does not match its files (then
    the folder is removed, to be written again: a folder is renamed into place whole, meta.json
    included, so one without meta.json or a file it names was damaged afterwards)."""
    if not folder.is_dir():
        return None
    try:
        meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
        for side in SIDES:
            size = (folder / f"{side}.ids").stat().st_size
            if size != meta[side]["tokens"] * np.dtype(meta[side]["dtype"]).itemsize:
                raise ValueError(f"{side}.ids holds {size} bytes")
            (folder / f"{side}.offsets.npy").stat()
        return meta
    except (OSError, ValueError, KeyError, TypeError) as err:
        print(f"encoded corpus {folder} is damaged ({err}); encoding it again", flush=True)
        shutil.rmtree(folder, ignore_errors=True)
        return None


def _encode(pairs: Sequence[tuple[str, str]], toks: dict[str, Tokenizer], max_len: int, folder: Path) -> None:
    """Stream ``pairs`` through the tokenizers into ``folder`` (written aside, then renamed)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    for stale in folder.parent.glob(f".{folder.name}.*.tmp"):  # left by an encoding that was killed
        if not _alive(int(stale.name.split(".")[2])):
            shutil.rmtree(stale, ignore_errors=True)
    tmp = folder.with_name(f".{folder.name}.{os.getpid()}.tmp")
    tmp.mkdir()
    dtypes = {side: np.dtype(np.uint16 if len(tok) <= 1 << 16 else np.int32) for side, tok in toks.items()}
    lengths: dict[str, list[np.ndarray]] = {side: [] for side in SIDES}
    start, done, dropped = time.monotonic(), 0, 0
    files = {side: open(tmp / f"{side}.ids", "wb") for side in SIDES}
    try:
        with contextlib.closing(_encoded_chunks(pairs, toks, max_len, dtypes)) as chunks:  # closed: the pool stops
            for chunk in chunks:
                for side in SIDES:
                    chunk.ids[side].tofile(files[side])
                    lengths[side].append(chunk.lengths[side])
                done, dropped = done + chunk.pairs, dropped + chunk.pairs - chunk.kept
                if done % (10 * CHUNK) == 0:
                    print(f"encoded {done:,} of {len(pairs):,} pairs "
                          f"({done / (time.monotonic() - start):,.0f} pairs/s)", flush=True)
    finally:
        for f in files.values():
            f.close()
    meta: dict = {"pairs": done - dropped, "dropped": dropped, "seconds": time.monotonic() - start}
    for side in SIDES:
        offsets = np.concatenate([[0], np.cumsum(np.concatenate(lengths[side] or [np.zeros(0, np.int64)]))])
        np.save(tmp / f"{side}.offsets.npy", offsets.astype(np.int64))
        meta[side] = {"dtype": dtypes[side].name, "tokens": int(offsets[-1])}
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")  # last: it marks the folder whole
    try:
        os.replace(tmp, folder)
    except OSError:  # another process finished the same encoding first
        shutil.rmtree(tmp, ignore_errors=True)


@dataclass
class _EncodedChunk:
    pairs: int  # pairs the chunk held, kept or not
    lengths: dict[str, np.ndarray]  # per side: (kept,) ids per kept sentence
    ids: dict[str, np.ndarray]  # per side: (tokens,) the kept sentences' ids, flat

    @property
    def kept(self) -> int:
        return len(self.lengths["src"])


def _encoded_chunks(pairs: Sequence[tuple[str, str]], toks: dict[str, Tokenizer], max_len: int,
                    dtypes: dict[str, np.dtype]) -> Iterator[_EncodedChunk]:
    """:func:`_encode_chunk` of every chunk of ``pairs``, in order: in worker processes (one per
    core, each reading and encoding whole chunks on one thread; the platform's start method,
    fork on Linux) when there are several chunks and cores, else here."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    workers = min(cores, -(-len(pairs) // CHUNK))
    if workers < 2:
        for chunk in _chunks(pairs, CHUNK):
            yield _encode_chunk(chunk, toks, max_len, dtypes)
        return
    paths = {side: str(tok.path) for side, tok in toks.items()}
    pool = ProcessPoolExecutor(workers, initializer=_start_worker, initargs=(paths, os.getpid()))
    try:
        pending: deque[Future] = deque()  # at most 2 * workers + 1 chunks in flight bound the memory
        for chunk in _chunks(pairs, CHUNK):
            pending.append(pool.submit(_encode_in_worker, chunk, max_len, dtypes))
            if len(pending) > 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        pool.shutdown(cancel_futures=True)


def _encode_chunk(chunk: Sequence[tuple[str, str]], toks: dict[str, Tokenizer], max_len: int,
                  dtypes: dict[str, np.dtype]) -> _EncodedChunk:
    """The pairs of ``chunk`` with both sides non-empty and at most ``max_len`` ids, encoded."""
    ids = {side: toks[side].encode([pair[k] for pair in chunk]) for k, side in enumerate(SIDES)}
    keep = [i for i in range(len(chunk)) if 0 < len(ids["src"][i]) <= max_len and 0 < len(ids["tgt"][i]) <= max_len]
    out = _EncodedChunk(len(chunk), {}, {})
    for side in SIDES:
        kept = [ids[side][i] for i in keep]
        out.lengths[side] = lens = np.fromiter(map(len, kept), dtype=np.int64, count=len(kept))
        out.ids[side] = np.fromiter(itertools.chain.from_iterable(kept), dtype=dtypes[side], count=int(lens.sum()))
    return out


_worker_toks: dict[str, Tokenizer] = {}  # a worker process's tokenizers


def _start_worker(paths: dict[str, str], parent: int) -> None:
    """A worker's set-up: its tokenizers on one thread each; Ctrl-C is the parent's to handle
    (it stops the pool), and on Linux the worker ends with its parent, however that ends."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform == "linux":
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent was gone before the line above
            os._exit(1)
    for side, path in paths.items():
        _worker_toks[side] = tok = load_tokenizer_file(path)
        if isinstance(tok, SubwordTokenizer):
            tok.threads = 1  # the workers are the parallelism


def _encode_in_worker(chunk: Sequence[tuple[str, str]], max_len: int, dtypes: dict[str, np.dtype]) -> _EncodedChunk:
    """A chunk encoded in a worker, with the tokenizers :func:`_start_worker` loaded."""
    return _encode_chunk(chunk, _worker_toks, max_len, dtypes)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
