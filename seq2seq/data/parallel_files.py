"""The user's parallel files, of any size: memory-mapped and read line by line, never whole.

``data.train=pairs.tsv`` (source<TAB>target) or ``data.train=train.en,train.fr`` (aligned lines).
A file's lines are found by a vectorised scan for newlines; :class:`LinePairs` then reads the
pairs of chosen lines on demand. :func:`split_pairs` makes the project's hash split in one
streaming pass (deduplicated and grouped exactly as :func:`~seq2seq.data.corpora.split_corpus`
does) and keeps only the line numbers of the training pairs, so a corpus of tens of millions
of pairs costs a few bytes per pair in memory, not Python strings; :func:`split_files` caches
that split.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from seq2seq.data.corpora import CorpusError, Example, normalise
from seq2seq.data.fetch import cache_dir, cache_lock
from seq2seq.files import atomic_write

SCAN_BYTES = 1 << 26  # newlines are searched 64 MiB at a time


class LineFile:
    """A UTF-8 text file, memory-mapped, with the byte span of every line ('\\n'-separated;
    a final newline starts no line, a '\\r' before it belongs to no line)."""

    def __init__(self, path: Path):
        self.path = path
        self.data = self._map(path)
        self.identity = _identity(path)  # device, inode, size, modification time of the file mapped
        size = len(self.data)
        raw = np.frombuffer(self.data, dtype=np.uint8) if size else np.zeros(0, np.uint8)
        newlines = np.concatenate([np.zeros(0, np.int64)] + [
            np.flatnonzero(raw[a:a + SCAN_BYTES] == ord("\n")) + a for a in range(0, size, SCAN_BYTES)])
        self.starts = np.concatenate([[0], newlines + 1]).astype(np.int64)
        self.ends = np.concatenate([newlines, [size]]).astype(np.int64)
        if size == 0 or newlines.size and newlines[-1] == size - 1:
            self.starts, self.ends = self.starts[:-1], self.ends[:-1]

    @staticmethod
    def _map(path: Path) -> mmap.mmap | bytes:
        try:
            with open(path, "rb") as f:
                return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if f.seek(0, 2) else b""
        except OSError as err:
            raise CorpusError(f"cannot read {path}: {err.strerror or err}") from None

    def subset(self, lines: np.ndarray) -> "LineFile":
        """The file with only ``lines`` (renumbered from 0), sharing its map."""
        part = object.__new__(LineFile)
        part.path, part.data, part.identity = self.path, self.data, self.identity
        part.starts, part.ends = self.starts[lines], self.ends[lines]
        return part

    def __getstate__(self) -> dict:  # a worker process maps the file again: only the spans travel
        return {"path": self.path, "identity": self.identity, "starts": self.starts, "ends": self.ends}

    def __setstate__(self, state: dict) -> None:
        data = self._map(state["path"])
        if _identity(state["path"]) != state["identity"]:
            raise CorpusError(f"{state['path']} changed while it was being read; run again on a file left alone")
        self.__dict__.update(state, data=data)

    def __len__(self) -> int:
        return len(self.starts)

    def line(self, i: int) -> str:
        """Line ``i`` (0-based) decoded; a line that is not UTF-8 raises UnicodeDecodeError. The
        byte-order mark some editors write ("CSV UTF-8") is not part of the first line."""
        text = self.data[self.starts[i]:self.ends[i]].decode("utf-8").removesuffix("\r")
        return text.removeprefix("\ufeff") if i == 0 else text

    def bad_line(self, i: int, err: UnicodeDecodeError) -> CorpusError:
        raw = self.data[self.starts[i]:self.ends[i]]
        return CorpusError(f"{self.path}:{i + 1}: not UTF-8 (byte 0x{raw[err.start]:02x} at column {err.start + 1}); "
                           f"re-encode the file as UTF-8, or set data.skip_bad_lines=true to skip such lines")


class LinePairs:
    """(source, target) pairs read on demand from chosen lines of one TSV file or of two aligned
    files; ``lines`` holds their (0-based) line numbers, in the corpus's order."""

    def __init__(self, files: list[LineFile], lines: np.ndarray, normalised: bool = False):
        self.files, self.lines, self.normalised = files, lines, normalised

    def __len__(self) -> int:
        return len(self.lines)

    def pair(self, line: int) -> tuple[str, str]:
        if len(self.files) == 2:
            src, tgt = self.files[0].line(line), self.files[1].line(line)
        else:
            src, tgt = self.files[0].line(line).split("\t")[:2]
        return (normalise(src), normalise(tgt)) if self.normalised else (src, tgt)

    def __getitem__(self, i: int) -> tuple[str, str]:
        return self.pair(int(self.lines[i]))

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return (self.pair(line) for line in self.lines.tolist())

    def take(self, indices: list[int] | np.ndarray) -> "LinePairs":
        """The pairs at ``indices``, still read on demand."""
        return LinePairs(self.files, self.lines[np.asarray(indices, dtype=np.int64)], self.normalised)

    def chunk(self, lo: int, hi: int) -> "LinePairs":
        """Pairs ``lo`` to ``hi`` on their own: small to send to a worker process, which pickles
        them as the files' paths and the spans of these lines only."""
        lines = self.lines[lo:hi]
        return LinePairs([f.subset(lines) for f in self.files], np.arange(len(lines)), self.normalised)

    def fingerprint(self) -> str:
        """What the pairs depend on: the files (path, size, modification time) and the lines."""
        digest = hashlib.sha256(repr([(str(f.path), f.path.stat().st_size, f.path.stat().st_mtime_ns)
                                      for f in self.files]).encode())
        digest.update(np.ascontiguousarray(self.lines).tobytes())
        digest.update(b"normalised" if self.normalised else b"raw")
        return digest.hexdigest()


def _identity(path: Path) -> tuple[int, int, int, int]:
    st = path.stat()
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def open_files(spec: str) -> list[LineFile]:
    """The one TSV file or two aligned files of ``spec`` ("data.tsv" or "train.en,train.fr")."""
    paths = [Path(p.strip()) for p in spec.split(",")]
    for p in paths:
        if not p.is_file():
            raise CorpusError(f"data file {p} does not exist")
    if len(paths) > 2:
        raise CorpusError(f"{spec!r}: give one TSV file or two aligned files separated by a comma")
    files = [LineFile(p) for p in paths]
    if len(files) == 2 and len(files[0]) != len(files[1]):
        raise CorpusError(f"{paths[0]} has {len(files[0])} lines but {paths[1]} has {len(files[1])}: not aligned")
    return files


def read_pairs(spec: str, skip_bad: bool = False) -> LinePairs:
    """Pairs from ``"data.tsv"`` (source<TAB>target; blank lines ignored) or ``"train.en,train.fr"``
    (aligned lines). A line that is not UTF-8, or a TSV line without a tab, is a one-line
    CorpusError naming the file and line or, with ``skip_bad``, drops its pair (reported)."""
    files = open_files(spec)
    keep = np.ones(len(files[0]), dtype=bool)
    for f in files:
        skipped, no_tab = [], []
        for i in range(len(f)):
            try:
                text = f.line(i)
            except UnicodeDecodeError as err:
                if not skip_bad:
                    raise f.bad_line(i, err) from None
                skipped.append(i)
                continue
            if len(files) == 1:
                if not text.strip():
                    keep[i] = False
                elif "\t" not in text:
                    if not skip_bad:
                        raise CorpusError(f"{f.path}:{i + 1}: expected source<TAB>target, found one column; fix the "
                                          f"line, or set data.skip_bad_lines=true to skip such lines")
                    no_tab.append(i)
        keep[skipped + no_tab] = False
        _report_skipped(f.path, skipped, "not UTF-8")
        _report_skipped(f.path, no_tab, "without source<TAB>target")
    return LinePairs(files, np.flatnonzero(keep))


def nonempty_pairs(pairs: LinePairs) -> LinePairs:
    """The pairs normalised, in file order, without those with an empty side."""
    keep = [i for i, (src, tgt) in enumerate(pairs) if normalise(src) and normalise(tgt)]
    return LinePairs(pairs.files, pairs.lines[keep], normalised=True)


def split_pairs(pairs: LinePairs) -> tuple[LinePairs, list[Example], list[Example]]:
    """The project's hash split in one pass: normalised pairs with both sides non-empty; valid and
    test sources with all their references; training pairs without repeats, grouped by source in
    first-seen order (each pair and source is known by 64 bits of a hash)."""
    n = len(pairs)
    lines = np.zeros(n, dtype=np.int64)
    src_keys, pair_keys = np.zeros(n, dtype=np.uint64), np.zeros(n, dtype=np.uint64)
    held: dict[str, dict[str, list[str]]] = {"valid": {}, "test": {}}
    count = 0
    for line in pairs.lines.tolist():
        src, tgt = map(normalise, pairs.pair(line))
        if not (src and tgt):
            continue
        sha = hashlib.sha1(src.encode("utf-8")).digest()
        bucket = int.from_bytes(sha, "big") % 100  # as corpora.split_bucket
        if bucket > 1:
            lines[count], src_keys[count] = line, int.from_bytes(sha[:8], "big")
            pair_keys[count] = int.from_bytes(hashlib.blake2b(f"{src}\t{tgt}".encode(), digest_size=8).digest(), "big")
            count += 1
        else:
            refs = held["test" if bucket == 0 else "valid"].setdefault(src, [])
            if tgt not in refs:
                refs.append(tgt)
    lines, src_keys, pair_keys = lines[:count], src_keys[:count], pair_keys[:count]
    _, first = np.unique(pair_keys, return_index=True)
    kept = np.sort(first)  # the first occurrence of every pair, in file order
    _, group_start, group = np.unique(src_keys[kept], return_index=True, return_inverse=True)
    order = kept[np.argsort(group_start[group], kind="stable")]  # grouped by source, first seen first
    examples = {split: [Example(src, refs) for src, refs in groups.items()] for split, groups in held.items()}
    return LinePairs(pairs.files, lines[order], normalised=True), examples["valid"], examples["test"]


def split_files(spec: str, skip_bad: bool = False) -> tuple[LinePairs, list[Example], list[Example]]:
    """:func:`split_pairs` of :func:`read_pairs`, cached per files (path, size, modification
    time): resumes, later runs and the other ranks of a data-parallel run read the split."""
    files = open_files(spec)
    key = hashlib.sha256(json.dumps({"files": [(str(f.path.resolve()), f.path.stat().st_size, f.path.stat().st_mtime_ns)
                                               for f in files], "skip_bad": skip_bad}).encode()).hexdigest()[:24]
    folder = cache_dir() / "splits" / key
    with cache_lock(str(folder)):  # a second process waits, then reads the split the first made
        return _cached_split(spec, skip_bad, files, folder)


def _cached_split(spec: str, skip_bad: bool, files: list, folder: Path) -> tuple[LinePairs, list[Example],
                                                                                  list[Example]]:
    try:
        held = json.loads((folder / "held_out.json").read_text(encoding="utf-8"))
        lines = np.load(folder / "train.npy")
        return (LinePairs(files, lines, normalised=True),
                *([Example(ex["src"], ex["refs"]) for ex in held[split]] for split in ("valid", "test")))
    except FileNotFoundError:
        pass
    except (OSError, ValueError, KeyError, TypeError) as err:
        print(f"cached split {folder} is damaged ({err}); splitting the files again", flush=True)
    train, valid, test = split_pairs(read_pairs(spec, skip_bad))
    held = {"valid": [vars(ex) for ex in valid], "test": [vars(ex) for ex in test]}
    atomic_write(folder / "held_out.json", json.dumps(held, ensure_ascii=False))
    atomic_write(folder / "train.npy", lambda f: np.save(f, train.lines))  # last: it marks the split whole
    return train, valid, test


def _report_skipped(path: Path, lines: list[int], why: str) -> None:
    if lines:
        shown = ", ".join(str(i + 1) for i in lines[:5])
        print(f"{path}: skipped {len(lines)} line(s) {why} (line {shown}{', ...' if len(lines) > 5 else ''})",
              file=sys.stderr, flush=True)
