"""Caption corpora: the formats researchers bring and generated shapes (the emoji set is in
:mod:`seq2seq.data.emoji`).

Every corpus is a list of images with all of their captions, split into train, valid and
test. Where a format carries no split, the image key is hashed as for the emoji set:
``int(sha1(key)) % 10`` is 0 for test, 1 for valid, the rest train.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import random
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageDraw

from seq2seq.data.corpora import CorpusError, normalise, read_text
from seq2seq.files import atomic_write


@dataclass
class CaptionExample:
    image: Path
    captions: list[str]
    key: str = ""  # what the split hashes (and, for emoji, the English name)


@dataclass
class CaptionCorpus:
    name: str
    train: list[CaptionExample] = field(default_factory=list)
    valid: list[CaptionExample] = field(default_factory=list)
    test: list[CaptionExample] = field(default_factory=list)

    def describe(self) -> str:
        return (f"{self.name}: {len(self.train):,} training images ({sum(len(e.captions) for e in self.train):,} "
                f"captions), {len(self.valid):,} valid and {len(self.test):,} test images")


def hash_split(key: str) -> str:
    bucket = int(hashlib.sha1(key.encode("utf-8")).hexdigest(), 16) % 10
    return "test" if bucket == 0 else "valid" if bucket == 1 else "train"


def split_examples(name: str, examples: list[CaptionExample]) -> CaptionCorpus:
    corpus = CaptionCorpus(name)
    for ex in examples:
        getattr(corpus, hash_split(ex.key or ex.image.name)).append(ex)
    return corpus


def _group(rows: list[tuple[Path, str]]) -> list[CaptionExample]:
    """Rows of (image, caption) -> one example per image, captions in order, empty ones dropped;
    runs of whitespace (a quoted caption's line breaks among them) become one space."""
    grouped: dict[Path, list[str]] = {}
    for image, caption in rows:
        caption = " ".join(normalise(caption).split())
        if caption:
            grouped.setdefault(image, []).append(caption)
    return [CaptionExample(image, caps, image.name) for image, caps in grouped.items()]


def _read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as err:
        raise CorpusError(f"cannot read {path}: {err.strerror}") from None
    except ValueError as err:
        raise CorpusError(f"{path} is not valid JSON: {err}") from None


# --- formats researchers bring -----------------------------------------------------------

def karpathy_json(path: str | Path, image_root: str | Path) -> CaptionCorpus:
    """Karpathy's split files (dataset_coco.json, dataset_flickr8k.json, ...); restval joins train."""
    data, root = _read_json(Path(path)), Path(image_root)
    corpus = CaptionCorpus(Path(path).stem)
    where = "the top level"
    try:
        for i, img in enumerate(data["images"]):
            where = f"images[{i}]"
            image = root / img.get("filepath", "") / img["filename"]
            captions = [normalise(s["raw"]) for s in img["sentences"] if normalise(s["raw"])]
            split = {"train": "train", "restval": "train", "val": "valid", "test": "test"}[img["split"]]
            getattr(corpus, split).append(CaptionExample(image, captions, img["filename"]))
    except (KeyError, TypeError) as err:
        raise CorpusError(f"{path}: not a Karpathy split file: {where} has no or a bad {err}") from None
    return corpus


def coco_json(path: str | Path, image_root: str | Path) -> list[CaptionExample]:
    """COCO captions (captions_*.json): images with id/file_name, annotations with image_id/caption."""
    data, root = _read_json(Path(path)), Path(image_root)
    where = "the top level"
    try:
        files = {}
        for i, img in enumerate(data["images"]):
            where = f"images[{i}]"
            files[img["id"]] = root / img["file_name"]
        rows = []
        for i, a in enumerate(data["annotations"]):
            where = f"annotations[{i}]"
            rows.append((files[a["image_id"]], a["caption"]))
    except (KeyError, TypeError) as err:
        raise CorpusError(f"{path}: not a COCO captions file: {where} has no or a bad {err}") from None
    return _group(rows)


def captions_table(path: str | Path, root: str | Path | None = None) -> list[CaptionExample]:
    """A captions.tsv or .csv: image path (relative to ``root``, by default the table's folder),
    caption (several rows per image allowed).

    A first row whose image cell is ``image``, ``file`` or ``filename`` is taken as a header.
    """
    path = Path(path)
    if not path.is_file():
        raise CorpusError(f"captions file {path} does not exist")
    folder = path.parent if root is None else Path(root)
    delimiter = "\t" if path.suffix.lower() in (".tsv", ".txt") else ","
    rows = []
    reader = csv.reader(io.StringIO(read_text(path), newline=""), delimiter=delimiter)  # quoted captions may span lines
    for row in reader:
        if not row or not "".join(row).strip():
            continue
        if len(row) < 2:
            raise CorpusError(f"{path}:{reader.line_num}: expected image{delimiter!r}caption")
        if reader.line_num == 1 and row[0].strip().lower() in ("image", "file", "filename", "path"):
            continue
        rows.append((folder / row[0].strip(), row[1]))
    return _group(rows)


# --- generated shapes ----------------------------------------------------------------------

COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (230, 200, 30)}
SHAPES = ("circle", "square", "triangle")
RELATIONS = {"above": (0, -1), "left of": (-1, 0)}  # the upper or left shape is named first: one caption per image


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, box: tuple[float, float, float, float], rgb: tuple) -> None:
    x0, y0, x1, y1 = box
    if shape == "circle":
        draw.ellipse(box, fill=rgb)
    elif shape == "square":
        draw.rectangle(box, fill=rgb)
    else:
        draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=rgb)


def _write_if_changed(path: Path, image: Image.Image) -> None:
    """Save ``image`` as PNG unless ``path`` already holds exactly these bytes: unchanged files keep
    their modification time, so the feature cache (keyed by it) still finds their features."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    data = buffer.getvalue()
    if path.is_file() and path.read_bytes() == data:
        return
    atomic_write(path, data)  # a unique temporary file: two runs may render at once


def shapes_corpus(root: str | Path, n: int = 1000, seed: int = 0, size: int = 64) -> CaptionCorpus:
    """``n`` images of one or two coloured shapes on a 3x3 layout with captions such as
    "a red circle above a blue square" (the upper or left shape first, so each image has one
    true caption); deterministic for ``seed``, written under ``root``. There are 1,404 layouts,
    so larger sets repeat some: the split hashes the layout, so a picture drawn twice lies in one
    split and every test picture is one the model never trained on."""
    rng = random.Random(seed)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    examples = []
    cell = size / 3
    for i in range(n):
        image = Image.new("RGB", (size, size), "white")
        draw = ImageDraw.Draw(image)
        colour, shape = rng.choice(list(COLOURS)), rng.choice(SHAPES)
        if rng.random() < 0.25:
            cx, cy = rng.randint(0, 2), rng.randint(0, 2)
            caption = f"a {colour} {shape}"
            placed = [(cx, cy, colour, shape)]
        else:
            relation = rng.choice(list(RELATIONS))
            dx, dy = RELATIONS[relation]
            cx, cy = rng.randint(max(0, dx), 2 - max(0, -dx)), rng.randint(max(0, dy), 2 - max(0, -dy))  # partner fits
            other_colour = rng.choice([c for c in COLOURS if c != colour])
            other_shape = rng.choice(SHAPES)
            caption = f"a {colour} {shape} {relation} a {other_colour} {other_shape}"
            placed = [(cx, cy, colour, shape), (cx - dx, cy - dy, other_colour, other_shape)]
        for x, y, c, s in placed:
            pad = cell * 0.15
            _draw_shape(draw, s, (x * cell + pad, y * cell + pad, (x + 1) * cell - pad, (y + 1) * cell - pad),
                        COLOURS[c])
        path = root / f"shape_{i:05d}.png"
        _write_if_changed(path, image)
        layout = "; ".join(f"{c} {s} at {x},{y}" for x, y, c, s in placed)  # e.g. "red circle at 0,1"
        examples.append(CaptionExample(path, [caption], layout))
    return split_examples(f"shapes-{n}", examples)
