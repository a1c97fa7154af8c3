"""The emoji caption set and its Twemoji twin, fetched from Debian and npm on first use (cached)."""

from pathlib import Path

import pytest
from PIL import Image

from seq2seq.data.emoji import EMOJI_COUNT, emoji_corpus, twemoji_examples

pytestmark = pytest.mark.network


def test_emoji_are_rendered_captioned_and_split_by_name():
    corpus = emoji_corpus("en")
    images = corpus.train + corpus.valid + corpus.test
    assert abs(len(images) - EMOJI_COUNT) <= 200 and 300 < len(corpus.test) < 500
    assert Image.open(images[0].image).size == (136, 128)
    german = emoji_corpus("de")
    assert [ex.image for ex in german.test] == [ex.image for ex in corpus.test]  # the split hashes English names
    assert {ex.captions[0] for ex in german.test} != {ex.captions[0] for ex in corpus.test}


def test_twemoji_draw_the_same_test_emoji():
    test = emoji_corpus("en").test
    drawn = twemoji_examples(test)
    assert len(drawn) >= 0.95 * len(test)
    by_key = {ex.key: ex for ex in test}
    for ex in drawn[:20]:
        assert ex.captions == by_key[ex.key].captions and ex.image != by_key[ex.key].image
        assert Image.open(ex.image).size == (136, 128)


def test_a_short_emoji_run_scores_the_twemoji_test_set(tmp_path):
    from seq2seq.config import load_config
    from seq2seq.tasks.captioning import run

    cfg = load_config(Path(__file__).resolve().parent.parent / "experiments/configs/caption_emoji.yaml", [
        "captions.twemoji_test=true", "model.emb_dim=32", "model.dec_hidden=64", "model.attention_dim=32",
        "model.readout_dim=32", "train.time_budget=null", "train.max_steps=20", "train.valid_every=20",
        "search.beam=1", "captions.max_len=12", "tracking.attention_plots=0", "tracking.samples=0",
        "tracking.enabled=false"])
    results = run(cfg, tmp_path)
    assert results["test_twemoji_images"] >= 0.95 * results["test_images"]
    assert 0 <= results["test_bleu4_twemoji"] <= 100 and 0 <= results["test_bleu4_noto_same_images"] <= 100
