"""Reading images as they come in real folders, and the one transform every stage shares.

:func:`load_image` turns whatever Pillow can read into an RGB image: transparency is
composited on white, palette, greyscale, CMYK and 16-bit images are converted, EXIF
orientation is applied, animated images give their first frame, and large JPEGs are
decoded at reduced size. Anything unreadable raises :class:`ImageError` with a short reason.
"""

from __future__ import annotations

import os
import stat
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ImageError(ValueError):
    """An image file cannot be used; the message is the reason."""


@dataclass(frozen=True)
class ImageTransform:
    """Resize the shorter side, centre-crop, scale to [0, 1] and normalise (stored with the model)."""

    resize: int = 256
    crop: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __call__(self, image: Image.Image) -> Tensor:
        from torchvision.transforms import functional as TF  # here, so translation never imports torchvision

        image = TF.resize(image, self.resize, interpolation=TF.InterpolationMode.BILINEAR, antialias=True)
        image = TF.center_crop(image, self.crop)
        return TF.normalize(TF.pil_to_tensor(image).float().div_(255), self.mean, self.std)  # (3, crop, crop)

    def read(self, path: str | Path) -> Tensor:
        """An image file's pixels (3, crop, crop): a large JPEG is decoded at the reduced scale
        nearest above ``resize`` (a quarter of the work of full size, then a small resize)."""
        return self(load_image(path, target=self.resize))

    def denormalise(self, pixels: Tensor) -> Tensor:
        """Undo the normalisation (for overlays): (3, H, W) in [0, 1]."""
        mean = torch.tensor(self.mean).view(3, 1, 1)
        std = torch.tensor(self.std).view(3, 1, 1)
        return (pixels.float().cpu() * std + mean).clamp(0, 1)


def _sniff(path: Path) -> str | None:
    """A reason for files Pillow would misreport or never finish reading (not a regular file,
    empty, vector formats), else None."""
    if not stat.S_ISREG(os.stat(path).st_mode):  # a link to a pipe would block the read forever
        return "not a regular file"
    with open(path, "rb") as f:
        head = f.read(512)
    if not head:
        return "empty file"
    text = head.lstrip().lower()
    if text.startswith(b"<svg") or (text.startswith(b"<?xml") and b"<svg" in text):
        return "unsupported format (SVG)"
    if text.startswith(b"%pdf"):
        return "unsupported format (PDF)"
    return None


def _to_rgb(image: Image.Image) -> Image.Image:
    """RGB with transparency put on white (the emoji renders' background), whichever way the file
    stores it: an alpha channel, a palette entry or one colour key (``tRNS`` of an RGB or grey PNG).
    Cached features depend on it: a change here changes :data:`seq2seq.tasks.features.PIXELS`."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit greyscale: 65,535 is white, as 255 in 8 bits
        key = image.info.get("transparency")
        image = image.point(lambda v: v * (1 / 257)).convert("L")  # (32-bit: above 255 clips)
        if isinstance(key, int):  # a 16-bit colour key, in the 8 bits the pixels now have
            image.info["transparency"] = min(round(key / 257), 255)
    if image.mode in ("P", "L", "RGB") and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV, F


def load_image(path: str | Path, target: int = 512) -> Image.Image:
    """Read ``path`` as an RGB image; large JPEGs are decoded near ``target`` pixels wide."""
    path = Path(path)
    try:
        reason = _sniff(path)
        if reason:
            raise ImageError(reason)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow's decompression-bomb and EXIF warnings
            with Image.open(path) as image:  # Pillow refuses over 2 * Image.MAX_IMAGE_PIXELS (179M) pixels
                if image.format == "JPEG":
                    image.draft("RGB", (target, target))  # decode at 1/2, 1/4 or 1/8 scale
                image.seek(0)  # animated: the first frame
                image.load()
                image = ImageOps.exif_transpose(image)
                return _to_rgb(image)
    except ImageError:
        raise
    except PermissionError:
        raise ImageError("permission denied") from None
    except UnidentifiedImageError:
        raise ImageError("not an image (or a format Pillow cannot read)") from None
    except Image.DecompressionBombError as err:
        raise ImageError(f"too large ({str(err).split(' pixels')[0].removeprefix('Image size (')} pixels, more "
                         f"than {2 * Image.MAX_IMAGE_PIXELS:,})") from None
    except (OSError, SyntaxError, ValueError) as err:
        message = str(err).split("\n")[0] or type(err).__name__
        if "truncated" in message.lower() or isinstance(err, (SyntaxError, EOFError)):
            raise ImageError(f"truncated or corrupt ({message})") from None
        raise ImageError(f"unreadable ({message})") from None


def list_files(folder: str | Path, recursive: bool = False) -> Iterator[Path]:
    """Regular files under ``folder`` in sorted order; hidden names are skipped and symlink loops
    (or several links to one folder) are visited once."""
    root = Path(folder)
    seen: set[tuple[int, int]] = set()

    def walk(directory: Path) -> Iterator[Path]:
        try:
            st = directory.stat()
        except OSError:
            return
        if (st.st_dev, st.st_ino) in seen:
            return
        seen.add((st.st_dev, st.st_ino))
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError:
            return
        for entry in entries:
            if entry.name.startswith("."):
                continue
            path = Path(entry.path)
            try:
                is_dir = entry.is_dir()
                is_file = entry.is_file()
            except OSError:
                continue
            if is_dir:
                if recursive:
                    yield from walk(path)
            elif is_file or entry.is_symlink():  # a dangling link is reported as unreadable
                yield path

    yield from walk(root)
