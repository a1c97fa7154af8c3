"""Captioning that can be compared: features cached at the precision they are used at, the same
numbers from a live CNN and from the cache, capped and streamed validation, n-best for files.
Everything here runs offline on a CNN with random weights."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from seq2seq.data.captions import shapes_corpus
from seq2seq.data.images import ImageTransform, load_image

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def frozen_run(tmp_path_factory):
    """A tiny captioning run over a frozen random ResNet-18 (features cached): its folder and config."""
    from seq2seq.experiment import experiment_parser, prepare_run, write_results
    from seq2seq.tasks.captioning import run

    root = tmp_path_factory.mktemp("frozen")
    args = experiment_parser("frozen").parse_args(["--run-dir", str(root / "run"), *[
        "captions.corpus=shapes", "captions.shapes=300", "captions.shapes_size=32", "captions.batch_tokens=300",
        "image.backbone=resnet18", "image.weights=none", "image.resize=32", "image.crop=32",
        "model.emb_dim=16", "model.dec_hidden=32", "model.attention=bahdanau", "train.time_budget=null",
        "train.max_steps=30", "train.valid_every=15", "train.precision=bf16", "tracking.enabled=false",
        "search.beam=2"]])
    cfg, run_dir = prepare_run(args, "frozen")
    write_results(run_dir, run(cfg, run_dir))
    return run_dir, cfg


def test_shapes_are_not_rewritten(tmp_path):
    first = shapes_corpus(tmp_path, n=6, size=32)
    stamps = {ex.image: ex.image.stat().st_mtime_ns for ex in first.train + first.valid + first.test}
    again = shapes_corpus(tmp_path, n=6, size=32)
    assert stamps == {ex.image: ex.image.stat().st_mtime_ns for ex in again.train + again.valid + again.test}


def test_feature_cache_keys_and_keeps_the_precision(tmp_path, monkeypatch):
    from seq2seq.models.encoders import ImageEncoder
    from seq2seq.tasks.features import cached_grids

    monkeypatch.setenv("SEQ2SEQ_CACHE", str(tmp_path / "cache"))
    corpus = shapes_corpus(tmp_path / "shapes", n=6, size=32)
    paths = [ex.image for ex in corpus.train + corpus.valid + corpus.test]
    torch.manual_seed(0)
    encoder = ImageEncoder("resnet18", weights="none").eval()
    transform, cpu = ImageTransform(32, 32), torch.device("cpu")
    fp32 = cached_grids(encoder, paths, transform, cpu, None)
    bf16 = cached_grids(encoder, paths, transform, cpu, torch.bfloat16)
    assert fp32.dtype == torch.float32 and bf16.dtype == torch.bfloat16  # stored as the CNN made them
    assert len(list((tmp_path / "cache" / "features").glob("*.pt"))) == 2  # one entry per precision
    assert torch.equal(cached_grids(encoder, paths, transform, cpu, torch.bfloat16), bf16)

    pixels = torch.stack([transform(load_image(p)) for p in paths])
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        live, cached = encoder(pixels), encoder(bf16)  # what the caption tool computes, what training reads
    assert torch.equal(live.states, cached.states) and torch.equal(live.summary, cached.summary)


def test_validation_is_capped_and_streamed(frozen_run, monkeypatch):
    from seq2seq.tasks.captioner import Captioner
    from seq2seq.tasks.captioning import CaptionData, Validator, load_captions
    from seq2seq.tracking import Tracker

    run_dir, cfg = frozen_run
    corpus = load_captions(cfg)
    assert len(corpus.valid) > 5
    cfg.train.valid_sentences = 5
    built = []
    real = CaptionData.batch
    monkeypatch.setattr(CaptionData, "batch", lambda self, idx: built.append(len(idx)) or real(self, idx))
    captioner = Captioner.load(run_dir, device="cpu")
    validator = Validator(cfg, captioner, corpus.valid, None, Tracker())
    assert len(validator.examples) == 5 and built == []  # nothing is built up front

    class Stub:
        model, device, autocast = captioner.model, captioner.device, captioner.autocast
        progress = type("P", (), {"step": 0})()

    metrics = validator(Stub())
    assert sum(built) == sum(len(ex.captions) for ex in validator.examples) and 0 <= metrics["bleu4"] <= 100

    class Keeping(Tracker):  # W&B's part: the samples and attention overlays are drawn for it alone
        keeps_images, logged = True, []

        def images(self, name, images, step):
            self.logged.append((name, len(images)))

    Validator(cfg, captioner, corpus.valid, None, Keeping())(Stub())
    assert Keeping.logged == [("valid/samples", 5), ("valid/attention", 3)]  # 3: tracking.attention_plots


def test_files_get_their_nbest(frozen_run, tmp_path):
    from seq2seq.tasks.captioner import Captioner

    run_dir, cfg = frozen_run
    captioner = Captioner.load(run_dir, device="cpu")
    assert captioner.amp_dtype == torch.bfloat16  # served at the precision it was trained and scored at
    paths = [ex.image for ex in shapes_corpus(tmp_path / "shapes", n=4, size=32).train][:2]
    for caption in captioner.caption_inputs(paths, beam=3, nbest=3):
        assert len(caption.alternatives) == 3 and caption.alternatives[0][0] == caption.text

    folder = tmp_path / "shapes"
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "caption.py"), str(run_dir), str(folder),
                           "--beam", "1", "--nbest", "3"], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "beam 1 cannot give 3 alternatives: running beam 3" in proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(rows) == 4 and all(len(r["nbest"]) == 3 and r["nbest"][0]["caption"] == r["caption"] for r in rows)
