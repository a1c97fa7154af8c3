"""Benchmark the caption tool end to end: `seq2seq-caption` on a folder of realistic images.

    python tools/caption_benchmark.py                           # trains a short emoji model once
    python tools/caption_benchmark.py --run-dir runs/caption-... --images 2000 --workers 0 1

The folder (made once, cached under `$SEQ2SEQ_CACHE/scale/`) holds N images: JPEG
"photographs" from 320x240 to 1920x1080 (smooth colour fields, shapes and sensor noise, so
they decode like photos) and one in five a small RGBA PNG, like an emoji. Each measurement is
a fresh `seq2seq-caption RUN FOLDER -o captions.jsonl` process, timed from its start to its
exit, so start-up, model loading, image decoding, the CNN and the search are all in the
figure. Without --run-dir a short emoji model (--train-steps) is trained once into the cache, in
a folder named by its resolved config: its captions have realistic lengths, which is all the
speed depends on. Printed beside the fp32 matrix-multiply rate of the device the tool runs on,
measured in the same run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

from seq2seq.benchmark import matmul_rate  # noqa: E402
from seq2seq.config import load_config  # noqa: E402
from seq2seq.data.fetch import cache_dir  # noqa: E402
from seq2seq.provenance import device_name  # noqa: E402
from seq2seq.runtime import pick_device  # noqa: E402

SIZES = [(320, 240), (640, 480), (800, 600), (1024, 768), (1280, 720), (1600, 1200), (1920, 1080)]


def photo(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """A smooth colour field with a few shapes and noise: decodes and compresses like a photo."""
    small = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    image = Image.fromarray(small).resize((width, height), Image.BICUBIC)
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(3, 8))):
        x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
        r = int(rng.integers(height // 12, height // 3))
        fill = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)([x - r, y - r, x + r, y + r], fill=fill)
    noise = rng.normal(0, 8, (height, width, 3))
    return Image.fromarray(np.clip(np.asarray(image, dtype=np.float32) + noise, 0, 255).astype(np.uint8))


def icon(rng: np.random.Generator) -> Image.Image:
    """A small RGBA drawing on a transparent background, like an emoji."""
    image = Image.new("RGBA", (136, 128), (0, 0, 0, 0))
    draw = ImageDraw.Draw(image)
    for _ in range(3):
        box = sorted(int(v) for v in rng.integers(8, 120, 2))
        draw.ellipse([box[0], box[0], box[1] + 8, box[1] + 8], fill=tuple(int(c) for c in rng.integers(0, 256, 4)))
    return image


def image_folder(count: int) -> Path:
    """``count`` generated images, written once (a folder finished by a marker file)."""
    folder = cache_dir() / "scale" / f"caption-folder-{count}"
    if (folder / ".complete").exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        if i % 5 == 4:
            icon(rng).save(folder / f"icon-{i:05d}.png")
        else:
            width, height = SIZES[int(rng.integers(len(SIZES)))]
            if rng.random() < 0.3:
                width, height = height, width  # portrait
            photo(rng, width, height).save(folder / f"photo-{i:05d}.jpg", quality=90)
    (folder / ".complete").write_text("")
    return folder


def short_model(steps: int, device: torch.device) -> Path:
    """A default emoji captioning run trained for ``steps`` steps on ``device``, once (its
    precision, which the tool serves it at, is the one that device resolves to). The cache folder
    is named by the resolved config, so a change to the defaults trains a new model."""
    overrides = [f"train.max_steps={steps}", "train.time_budget=null", "tracking.enabled=false",
                 f"train.device={device}"]
    run_dir = cache_dir() / "scale" / f"caption-model-{config_key(overrides)}"
    if not (run_dir / "results.json").exists():
        cmd = [sys.executable, str(ROOT / "experiments" / "caption.py"), "--run-dir", str(run_dir), *overrides]
        print(f"training a {steps}-step emoji model once: {run_dir}", flush=True)
        subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return run_dir


def config_key(overrides: list[str]) -> str:
    """A short name for the caption experiment's resolved config under ``overrides``."""
    cfg = load_config(ROOT / "experiments" / "configs" / "caption_emoji.yaml", overrides)
    return hashlib.sha256(json.dumps(cfg.to_dict(), sort_keys=True).encode()).hexdigest()[:12]


def caption_command() -> list[str]:
    script = Path(sys.executable).with_name("seq2seq-caption")
    return [str(script)] if script.exists() else [sys.executable, "-m", "seq2seq.cli.caption"]


def time_tool(run_dir: Path, folder: Path, options: list[str]) -> dict[str, float]:
    """One process of the caption tool: wall seconds from its start, images captioned, its own loop time."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "captions.jsonl"
        start = time.perf_counter()
        proc = subprocess.run([*caption_command(), str(run_dir), str(folder), "-o", str(out), *options],
                              capture_output=True, text=True)
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            sys.exit(f"seq2seq-caption failed:\n{proc.stderr[-2000:]}")
        lines = len(out.read_text(encoding="utf-8").splitlines())
    loop = re.search(r"captioned (\d+) images? in ([\d.]+) s", proc.stderr)
    return {"wall": wall, "images": lines, "loop": float(loop.group(2)) if loop else float("nan")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", type=Path, help="a trained captioning run (default: a short emoji model)")
    parser.add_argument("--train-steps", type=int, default=300, help="steps of the short model, without --run-dir")
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--workers", type=int, nargs="+", default=[-1],
                        help="the tool's --workers values to time (-1: its default)")
    parser.add_argument("--beam", type=int, default=None, help="the tool's --beam (default: the model's)")
    parser.add_argument("--repeat", type=int, default=1, help="processes timed per setting (the best is kept)")
    parser.add_argument("--device", default="auto", help="the tool's --device (auto, cpu, cuda or cuda:N)")
    args = parser.parse_args()
    for name in ("images", "repeat", "train_steps"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    try:
        device = pick_device(args.device)
    except (RuntimeError, ValueError):
        parser.error(f"--device {args.device}: not a device this machine has (auto, cpu, cuda or cuda:N)")
    started = time.monotonic()
    folder = image_folder(args.images)
    jpegs = sum(1 for p in folder.iterdir() if p.suffix == ".jpg")
    size = sum(p.stat().st_size for p in folder.iterdir()) / 2**20
    print(f"folder: {folder}: {jpegs} JPEGs (320x240 to 1920x1080), {args.images - jpegs} PNGs, "
          f"{size:,.0f} MiB (ready in {time.monotonic() - started:.0f} s)", flush=True)
    run_dir = args.run_dir or short_model(args.train_steps, device)
    for path in folder.iterdir():  # warm the page cache: the figure is the tool's, not the disk's
        path.read_bytes()
    rate = matmul_rate(device)  # the device the tool computes on
    print(f"machine: {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, "
          f"{device_name(device)} fp32 matmul {rate / 1e9:,.1f} GFLOP/s (in this run)")
    for workers in args.workers:
        options = ["--device", str(device)] + ([] if workers < 0 else ["--workers", str(workers)])
        if args.beam:
            options += ["--beam", str(args.beam)]
        best = min((time_tool(run_dir, folder, options) for _ in range(args.repeat)), key=lambda r: r["wall"])
        label = "default" if workers < 0 else str(workers)
        print(f"workers {label:>7}: {best['images']} images in {best['wall']:.1f} s wall = "
              f"{best['images'] / best['wall']:.1f} images/s end to end (process start included); "
              f"{best['images'] / best['loop']:.1f} images/s after loading", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
