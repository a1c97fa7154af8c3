import hashlib

import pytest

from seq2seq.data.corpora import (
    CorpusError,
    _ParagraphParser,
    group_references,
    load_corpus,
    split_bucket,
    split_corpus,
)
from seq2seq.data.parallel_files import read_pairs


def test_split_bucket_follows_the_sha1_rule():
    for s in ["Go.", "Hi.", "I see.", "Tom is here.", "Où est-il ?"]:
        b = int(hashlib.sha1(s.encode("utf-8")).hexdigest(), 16) % 100
        assert split_bucket(s) == ("test" if b == 0 else "valid" if b == 1 else "train")


def test_references_are_grouped_and_normalised():
    pairs = [("Hi.", "Salut."), (" Hi. ", "Salut !"), ("Hi.", "Salut."), ("Go.", ""), ("e\u0301", "é")]
    groups = group_references(pairs)
    assert [(g.src, g.refs) for g in groups] == [("Hi.", ["Salut.", "Salut !"]), ("\u00e9", ["\u00e9"])]


def test_split_keeps_all_references_together():
    pairs = [(f"sentence {i}", f"phrase {i} {j}") for i in range(3000) for j in range(2)]
    corpus = split_corpus("toy", pairs)
    assert len(corpus.train) + 2 * (len(corpus.valid) + len(corpus.test)) == 6000
    assert all(len(ex.refs) == 2 for ex in corpus.test + corpus.valid)
    train_src = {s for s, _ in corpus.train}
    assert not train_src & {ex.src for ex in corpus.test + corpus.valid}
    assert 10 < len(corpus.test) < 60 and 10 < len(corpus.valid) < 60


def _read(spec: str) -> list[tuple[str, str]]:
    return list(read_pairs(spec))


def test_user_files(tmp_path):
    (tmp_path / "a.tsv").write_text("hello\tbonjour\n\nyes\toui\n", encoding="utf-8")
    assert _read(str(tmp_path / "a.tsv")) == [("hello", "bonjour"), ("yes", "oui")]
    (tmp_path / "bom.tsv").write_text("\ufeffhello\tbonjour\n", encoding="utf-8")  # an editor's byte-order mark
    assert _read(str(tmp_path / "bom.tsv")) == [("hello", "bonjour")]
    (tmp_path / "x.en").write_text("a\nb\n")
    (tmp_path / "x.fr").write_text("c\nd\n")
    assert _read(f"{tmp_path / 'x.en'},{tmp_path / 'x.fr'}") == [("a", "c"), ("b", "d")]
    (tmp_path / "y.fr").write_text("c\n")
    with pytest.raises(CorpusError, match="not aligned"):
        _read(f"{tmp_path / 'x.en'},{tmp_path / 'y.fr'}")
    (tmp_path / "bad.tsv").write_text("only one column\n")
    with pytest.raises(CorpusError, match="bad.tsv:1: expected source<TAB>target"):
        _read(str(tmp_path / "bad.tsv"))
    with pytest.raises(CorpusError, match="does not exist"):
        _read(str(tmp_path / "missing.tsv"))


def test_files_corpus_with_explicit_splits(tmp_path, capsys):
    (tmp_path / "t.tsv").write_text("a b\tc d\n")
    (tmp_path / "v.tsv").write_text("x\ty\nx\tz\nx\ty\n")
    corpus = load_corpus("files", train=str(tmp_path / "t.tsv"), valid=str(tmp_path / "v.tsv"))
    assert list(corpus.train) == [("a b", "c d")] and corpus.valid[0].refs == ["y", "z"] and corpus.test == []
    note = capsys.readouterr().out  # the user's file is not scored line by line: said in one line
    assert f"data.valid={tmp_path / 'v.tsv'}: 3 pairs are scored as 1 sources (1 translations" in note
    assert "1 exact repeats and 0 pairs with an empty side" in note
    assert note.count("\n") == 1


def test_help_paragraph_parser_skips_hidden_text():
    parser = _ParagraphParser()
    parser.feed('<p id="par_id1">Press <span class="keycode">Enter</span> now.</p>'
                '<p id="par_id2">Use <span hidden="true" class="MAC">Command</span><span>Ctrl</span>+F</p>'
                '<h2 id="hd_id3">Find <img src="x.svg"> Text</h2><p id="other">skip</p>')
    assert parser.paragraphs == {"par_id1": "Press Enter now.", "par_id2": "Use Ctrl+F", "hd_id3": "Find Text"}


def _write_mo(path, catalog: dict[str, str]) -> None:
    """A gettext .mo file (the GNU layout: header, two offset tables, NUL-terminated strings)."""
    import struct

    keys = sorted(catalog)
    ids, strs = [k.encode() for k in keys], [catalog[k].encode() for k in keys]
    n, start = len(keys), 28 + 16 * len(keys)
    table, blob = [], b""
    for s in ids + strs:
        table.append((len(s), start + len(blob)))
        blob += s + b"\0"
    header = struct.pack("<7I", 0x950412DE, 0, n, 28, 28 + 8 * n, 0, 0)
    path.write_bytes(header + b"".join(struct.pack("<2I", *t) for t in table) + blob)


def test_libreoffice_strings_read_at_first_are_the_ones_read_from_the_cache(tmp_path, monkeypatch):
    from seq2seq.data import corpora

    folder = tmp_path / "deb" / "usr/lib/libreoffice/program/resource/de/LC_MESSAGES"
    folder.mkdir(parents=True)
    catalog = {f"Message {i}": f"Nachricht {i}" for i in range(10_000)}
    catalog |= {"Open  the\nfile": "Datei\n öffnen", "ctx\x04~Cancel": "~Abbrechen",
                "": "Content-Type: text/plain; charset=UTF-8\n"}  # the header entry names the charset
    _write_mo(folder / "a.mo", catalog)
    monkeypatch.setenv("SEQ2SEQ_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(corpora, "fetch_deb", lambda name: tmp_path / "deb")
    first = corpora.libreoffice_pairs("de", help_pages=False)
    again = corpora.libreoffice_pairs("de", help_pages=False)  # from the cache written by the first
    assert first == again and ("Open the file", "Datei öffnen") in first and ("Cancel", "Abbrechen") in first


def test_a_long_sentence_is_cut_at_word_starts_within_the_limit():
    from seq2seq.data.segments import within_limit

    ids = list(range(1, 1_001))
    pieces = within_limit(ids, 80, lambda i: i % 7 == 0)  # a word starts at every multiple of 7
    assert [i for p in pieces for i in p] == ids and all(0 < len(p) <= 80 for p in pieces)
    assert all(p[0] % 7 == 0 for p in pieces[1:])  # every cut falls before a word start
    assert within_limit(ids, 80, lambda i: False)[1][0] == 81  # no word start: cut at the limit
    assert within_limit([], 80, lambda i: True) == [] and within_limit(ids[:80], 80, lambda i: True) == [ids[:80]]
