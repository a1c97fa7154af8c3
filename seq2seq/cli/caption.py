"""seq2seq-caption: caption every image in a folder, writing JSON lines (path, caption, score).

    seq2seq-caption runs/caption-20261122-101500 photos/ > captions.jsonl
    seq2seq-caption RUN_DIR photos/ --recursive --beam 3 -o captions.jsonl --sidecar --overlays attention/
    seq2seq-caption RUN_A RUN_B photos/                       # an ensemble: the mean of their probabilities

Files are recognised as images by their content. Unreadable files are skipped with one line
on stderr each and counted in a summary; the exit status is 0 when at least one image was
captioned.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path
from typing import TextIO

from seq2seq.cli import add_model_options
from seq2seq.data.images import list_files
from seq2seq.experiment import run_cli
from seq2seq.files import atomic_write
from seq2seq.search import beam_for_nbest
from seq2seq.tasks.captioner import Captioner

OVERLAID_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}  # what an overlay's name shows


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="seq2seq-caption", description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, nargs="+", metavar="RUN_DIR_OR_CHECKPOINT",
                        help="a trained run or checkpoint; several: an ensemble (they must see images alike)")
    parser.add_argument("folder", type=Path)
    parser.add_argument("--recursive", action="store_true", help="descend into sub-folders")
    parser.add_argument("--beam", type=int, default=None, help="beam size (default: the model's; 1 = greedy)")
    parser.add_argument("--nbest", type=int, default=1,
                        help="alternative captions per image, in the JSON lines (raises the beam to at least this)")
    parser.add_argument("--batch-size", type=int, default=16, help="images captioned together")
    parser.add_argument("--workers", type=int, default=0, help="processes reading images (0: the main one)")
    parser.add_argument("-o", "--output", type=Path, help="write JSON lines here instead of stdout")
    parser.add_argument("--sidecar", action="store_true",
                        help="also write IMAGE.txt beside each image (an existing one is kept unless --overwrite)")
    parser.add_argument("--overlays", type=Path, metavar="DIR",
                        help="save attention overlays (PNG) here, in the folder's own layout")
    parser.add_argument("--overwrite", action="store_true", help="replace existing sidecar captions")
    add_model_options(parser)
    args = parser.parse_args(argv)
    for name in ("batch_size", "beam", "nbest"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.workers < 0:
        parser.error("--workers must be 0 or more")
    return args


def candidates(folder: Path, recursive: bool, output: Path | None, overlays: Path | None = None) -> list[Path]:
    """Every file to try, minus our own outputs (sidecar captions, the JSON-lines file and its
    partial copy, overlays saved inside the folder: of its images, and of images since deleted)."""
    files = list(list_files(folder, recursive))
    names = {str(p) for p in files}
    own = {str(output.resolve()), str(_partial(output.resolve()))} if output else set()
    if overlays is not None:  # DIR/<image's path in the folder>.png, whichever folder DIR is
        root = overlays.resolve()
        own |= {str(root / p.relative_to(folder)) + ".png" for p in files}
        own |= {str(p.resolve()) for p in files if _is_overlay_name(p) and p.resolve().is_relative_to(root)}
    return [p for p in files
            if not (p.suffix == ".txt" and str(p.with_suffix("")) in names) and str(p.resolve()) not in own]


def _is_overlay_name(path: Path) -> bool:
    """Whether ``path`` is named as an overlay is (``cat.jpg.png``: an image's name and .png)."""
    return path.suffix.lower() == ".png" and Path(path.stem).suffix.lower() in OVERLAID_SUFFIXES


def _partial(output: Path) -> Path:
    """Where the JSON lines go until the folder is done (then they replace ``output`` at once)."""
    return output.with_name(output.name + ".partial")


def _json_line(row: dict) -> str:
    """One JSON line; a file name that is not UTF-8 (its bytes kept as surrogates) is escaped."""
    try:
        row["path"].encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(row)
    return json.dumps(row, ensure_ascii=False)


def caption_folder(captioner: Captioner, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    files = candidates(args.folder, args.recursive, args.output, args.overlays)
    beam, note = beam_for_nbest(args.beam or captioner.cfg.search.beam, args.nbest)
    if note:
        print(note, file=err)
    if args.overlays:
        args.overlays.mkdir(parents=True, exist_ok=True)
    done, skipped, kept, reasons = 0, 0, 0, Counter()
    start, last_report = time.monotonic(), 0.0
    for path, caption, reason in captioner.caption_files(files, beam, args.batch_size, args.workers, args.nbest):
        if caption is None:
            skipped += 1
            reasons[reason.split(" (")[0]] += 1
            print(f"skipped {path}: {reason}", file=err, flush=True)
            continue
        done += 1
        row = {"path": str(path), "caption": caption.text, "score": round(caption.score, 4) + 0.0}
        if args.nbest > 1:
            row["nbest"] = [{"caption": text, "score": round(score, 4) + 0.0} for text, score in caption.alternatives]
        out.write(_json_line(row) + "\n")
        out.flush()
        sidecar = path.with_name(path.name + ".txt")
        if args.sidecar and sidecar.exists() and not args.overwrite:
            kept += 1
        elif args.sidecar:
            atomic_write(sidecar, caption.text + "\n")
        if args.overlays:
            picture = captioner.overlay(path, caption)
            if picture is not None:
                saved = args.overlays / path.relative_to(args.folder)  # mirrored: no two images share a name
                saved = saved.with_name(saved.name + ".png")
                saved.parent.mkdir(parents=True, exist_ok=True)
                atomic_write(saved, lambda f, picture=picture: picture.save(f, format="PNG"))
        now = time.monotonic()
        if now - last_report > 2.0:
            print(f"[{done + skipped}/{len(files)}] {done} captioned, {skipped} skipped", file=err, flush=True)
            last_report = now
    elapsed = time.monotonic() - start
    summary = ", ".join(f"{n} {r}" for r, n in reasons.most_common())
    print(f"captioned {done} image{'s' if done != 1 else ''} in {elapsed:.1f} s; skipped {skipped} file"
          f"{'s' if skipped != 1 else ''}{f' ({summary})' if summary else ''}", file=err, flush=True)
    if kept:
        print(f"kept {kept} existing sidecar caption{'s' if kept != 1 else ''} (IMAGE.txt); --overwrite replaces "
              f"them", file=err, flush=True)
    if done == 0:
        print(f"error: no image in {args.folder} could be captioned", file=err)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def run() -> int:
        if not args.folder.is_dir():
            print(f"error: {args.folder} is not a folder", file=sys.stderr)
            return 2
        if args.output and (args.output.is_dir() or not args.output.parent.is_dir()):
            print(f"error: -o {args.output}: {'is a folder' if args.output.is_dir() else 'its folder does not exist'}",
                  file=sys.stderr)
            return 2
        captioner = Captioner.load(args.model, device=args.device, precision=args.precision)
        if args.output and args.output.exists() and not args.output.resolve().is_file():  # a pipe, /dev/stdout
            with open(args.output, "w", encoding="utf-8") as out:
                return caption_folder(captioner, args, out, sys.stderr)
        if args.output:  # a file: written beside it, replacing it once the folder is done (a crash keeps it)
            target = args.output.resolve()  # through a link: the file it names is replaced, not the link
            with open(_partial(target), "w", encoding="utf-8") as out:
                code = caption_folder(captioner, args, out, sys.stderr)
            if code == 0:
                os.replace(_partial(target), target)
            else:  # nothing captioned: the old file stays
                _partial(target).unlink()
            return code
        sys.stdout.reconfigure(encoding="utf-8")
        return caption_folder(captioner, args, sys.stdout, sys.stderr)

    return run_cli(run)


if __name__ == "__main__":
    sys.exit(main())
