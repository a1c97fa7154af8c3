"""Reading the images real folders hold."""

import io

import pytest
import torch
from PIL import Image

from seq2seq.data import images as images_module
from seq2seq.data.images import ImageError, ImageTransform, list_files, load_image


def _save(img, path, **kw):
    img.save(path, **kw)
    return path


def test_transparency_is_composited_on_white(tmp_path):
    rgba = Image.new("RGBA", (8, 8), (255, 0, 0, 0))  # fully transparent red
    out = load_image(_save(rgba, tmp_path / "a.png"))
    assert out.mode == "RGB" and out.getpixel((0, 0)) == (255, 255, 255)
    pal = Image.new("P", (8, 8), 1)
    pal.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    pal.info["transparency"] = 0
    assert load_image(_save(pal, tmp_path / "p.png", transparency=0)).getpixel((0, 0)) == (10, 200, 30)


@pytest.mark.parametrize("mode, key, kept", [("RGB", (0, 0, 0), (200, 10, 10)), ("L", 0, (100, 100, 100))])
def test_a_colour_keyed_background_is_composited_on_white(tmp_path, mode, key, kept):
    img = Image.new(mode, (8, 8), key)  # the key colour is transparent (a tRNS chunk)
    img.putpixel((1, 1), kept if mode == "RGB" else kept[0])
    out = load_image(_save(img, tmp_path / "k.png", transparency=key))
    assert out.getpixel((0, 0)) == (255, 255, 255) and out.getpixel((1, 1)) == kept


def test_16_bit_grey_keeps_its_brightness(tmp_path):
    import numpy as np

    grey = np.full((4, 4), 257 * 80, dtype=np.uint16)
    grey[0, 0] = 257 * 100  # two greys, 80 and 100 in 8 bits: not stretched to 0 and 255
    out = load_image(_save(Image.fromarray(grey), tmp_path / "g.png"))
    assert out.getpixel((1, 1)) == (80, 80, 80) and out.getpixel((0, 0)) == (100, 100, 100)
    keyed = load_image(_save(Image.fromarray(grey), tmp_path / "k.png", transparency=257 * 80))  # 80 transparent
    assert keyed.getpixel((1, 1)) == (255, 255, 255) and keyed.getpixel((0, 0)) == (100, 100, 100)


@pytest.mark.parametrize("mode, fmt", [("L", "PNG"), ("1", "PNG"), ("CMYK", "JPEG"), ("I;16", "PNG"),
                                       ("LA", "PNG"), ("RGB", "WEBP"), ("RGB", "BMP"), ("RGB", "TIFF")])
def test_modes_become_rgb(tmp_path, mode, fmt):
    img = Image.new(mode, (10, 6), 200 if mode in ("L", "I;16") else None)
    path = _save(img, tmp_path / f"x.{fmt.lower()}", format=fmt)
    out = load_image(path)
    assert out.mode == "RGB" and out.size == (10, 6)


def test_exif_orientation_is_applied(tmp_path):
    img = Image.new("RGB", (20, 10), "red")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees
    out = load_image(_save(img, tmp_path / "r.jpg", exif=exif))
    assert out.size == (10, 20)


def test_animated_gives_first_frame(tmp_path):
    frames = [Image.new("RGB", (8, 8), c) for c in ("red", "blue")]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    r, g, b = load_image(path).getpixel((0, 0))
    assert r > 200 and b < 50


def test_large_jpeg_is_decoded_reduced(tmp_path):
    path = _save(Image.new("RGB", (6000, 4000), "green"), tmp_path / "big.jpg", quality=50)
    out = load_image(path)
    assert out.size[0] < 2000 and out.mode == "RGB"


@pytest.mark.parametrize("content, reason", [
    (b"", "empty file"),
    (b"hello, this is text\n", "not an image"),
    (b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"></svg>', "unsupported format (SVG)"),
])
def test_bad_files_have_reasons(tmp_path, content, reason):
    (tmp_path / "f.png").write_bytes(content)
    with pytest.raises(ImageError, match=reason.replace("(", r"\(").replace(")", r"\)")):
        load_image(tmp_path / "f.png")


def test_truncated_image(tmp_path):
    buf = io.BytesIO()
    Image.new("RGB", (200, 200), "blue").save(buf, format="PNG")
    (tmp_path / "t.png").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(ImageError, match="truncated or corrupt|unreadable"):
        load_image(tmp_path / "t.png")


def test_permission_denied(tmp_path, monkeypatch):
    path = _save(Image.new("RGB", (4, 4)), tmp_path / "locked.png")

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(images_module, "open", denied, raising=False)
    with pytest.raises(ImageError, match="permission denied"):
        load_image(path)


def test_listing_is_sorted_skips_hidden_and_survives_symlink_loops(tmp_path):
    (tmp_path / "b.png").write_bytes(b"x")
    (tmp_path / "a.png").write_bytes(b"x")
    (tmp_path / ".hidden.png").write_bytes(b"x")
    sub = tmp_path / "sub"
    sub.mkdir()
    (sub / "c.png").write_bytes(b"x")
    (sub / "loop").symlink_to(tmp_path)  # a loop back to the top
    assert [p.name for p in list_files(tmp_path)] == ["a.png", "b.png"]
    assert [p.name for p in list_files(tmp_path, recursive=True)] == ["a.png", "b.png", "c.png"]


def test_transform_shape_and_round_trip():
    t = ImageTransform(resize=40, crop=32)
    x = t(Image.new("RGB", (80, 50), (255, 0, 0)))
    assert x.shape == (3, 32, 32)
    back = t.denormalise(x)
    assert torch.allclose(back[:, 5, 5], torch.tensor([1.0, 0.0, 0.0]), atol=0.01)


def test_an_image_over_pillows_pixel_limit_is_too_large_in_one_line(tmp_path, monkeypatch):
    from PIL import Image

    from seq2seq.data.images import ImageError, load_image

    Image.new("RGB", (64, 64), "white").save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # as a 180M-pixel image meets the real limit
    with pytest.raises(ImageError, match=r"^too large \(4096 pixels, more than 2,000\)$"):
        load_image(tmp_path / "big.png")


def test_a_link_to_a_pipe_is_not_read(tmp_path):
    import os

    os.mkfifo(tmp_path / "pipe")
    (tmp_path / "link.png").symlink_to(tmp_path / "pipe")
    assert list(list_files(tmp_path)) == [tmp_path / "link.png"]  # the pipe itself is not listed
    with pytest.raises(ImageError, match="not a regular file"):  # and opening it would block forever
        load_image(tmp_path / "link.png")
