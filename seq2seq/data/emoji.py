"""The emoji caption set: 3,635 Noto Color Emoji (OFL-1.1) rendered from a Debian package and
captioned with their CLDR names (Unicode licence) in English, German or French; and the same
test emoji drawn by other artists (Twemoji, CC-BY 4.0, from the npm package
``emoji-datasource-twitter``), to measure how much of a score survives a change of style.
"""

from __future__ import annotations

import json
import tarfile
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from seq2seq.data.captions import CaptionCorpus, CaptionExample, split_examples
from seq2seq.data.corpora import CorpusError
from seq2seq.data.fetch import FetchError, cache_dir, cache_lock, fetch_deb, fetch_npm_file
from seq2seq.files import atomic_write

EMOJI_PACKAGES = ("fonts-noto-color-emoji", "unicode-cldr-core")
EMOJI_LANGS = ("en", "de", "fr")
EMOJI_COUNT = 3635  # renders that are not empty, as checked on Debian 12
TWEMOJI_NPM = ("emoji-datasource-twitter@16.0.0", "emoji-datasource-twitter-16.0.0.tgz",
               "f64a530c63bca463bd8317fdc4615ce63a53a0c65018e4ce2d848aaba7a28877")


def _emoji_names(cldr: Path, lang: str) -> dict[str, str]:
    names = {}
    for sub in ("annotations", "annotationsDerived"):
        xml = cldr / "usr/share/unicode/cldr/common" / sub / f"{lang}.xml"
        for node in ET.parse(xml).getroot().iter("annotation"):
            if node.get("type") == "tts" and node.text:
                names[node.get("cp")] = node.text.strip()
    return names


def emoji_corpus(lang: str = "en") -> CaptionCorpus:
    """3,635 Noto emoji rendered at 136x128 on white, captioned with their CLDR names.

    The split hashes the English name, whatever the caption language, so every language
    sees the same images in test.
    """
    if lang not in EMOJI_LANGS:
        raise CorpusError(f"emoji captions exist in {', '.join(EMOJI_LANGS)}, not {lang!r}")
    folder = cache_dir() / "emoji"
    entries = _cached_index(folder, _render_emoji)
    examples = [CaptionExample(folder / e["file"], [e["names"][lang]], e["names"]["en"])
                for e in entries if e["names"].get(lang)]
    return split_examples(f"emoji-{lang}", examples)


def _cached_index(folder: Path, render: Callable[[Path], None]) -> list:
    """The index of a rendered set, rendering it first if it is missing or not readable JSON."""
    with cache_lock(str(folder)):
        index = folder / "index.json"
        if index.exists():
            try:
                return json.loads(index.read_text(encoding="utf-8"))
            except ValueError as err:
                print(f"cached index {index} is damaged ({err}); rendering the set again", flush=True)
        render(folder)
        return json.loads(index.read_text(encoding="utf-8"))


def _render_emoji(folder: Path) -> None:
    font_pkg, cldr_pkg = (fetch_deb(p) for p in EMOJI_PACKAGES)
    font = ImageFont.truetype(str(font_pkg / "usr/share/fonts/truetype/noto/NotoColorEmoji.ttf"), 109)
    names = {lang: _emoji_names(cldr_pkg, lang) for lang in EMOJI_LANGS}
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    entries = []
    for i, cp in enumerate(sorted(names["en"], key=names["en"].get)):
        canvas = Image.new("RGBA", (136, 128), (0, 0, 0, 0))
        ImageDraw.Draw(canvas).text((0, 0), cp, font=font, embedded_color=True)
        if canvas.getbbox() is None:  # no glyph for this sequence in the font
            continue
        white = Image.new("RGBA", canvas.size, (255, 255, 255, 255))
        name = f"images/{i:04d}.png"
        Image.alpha_composite(white, canvas).convert("RGB").save(folder / name)
        entries.append({"file": name, "cp": cp, "names": {lang: names[lang].get(cp) for lang in EMOJI_LANGS}})
    if abs(len(entries) - EMOJI_COUNT) > 200:
        raise FetchError(f"emoji: rendered {len(entries)} images, expected about {EMOJI_COUNT}; "
                         f"the packages {', '.join(EMOJI_PACKAGES)} may have changed")
    atomic_write(folder / "index.json", json.dumps(entries, ensure_ascii=False, indent=0))


def _code(cp: str) -> str:
    """An emoji's code points as emoji-datasource writes them, without variation selectors."""
    return "-".join(f"{ord(c):04X}" for c in cp if ord(c) != 0xFE0F)


def twemoji_examples(examples: list[CaptionExample]) -> list[CaptionExample]:
    """The given emoji (of :func:`emoji_corpus`) drawn by Twemoji's artists, laid out like the
    Noto renders (a 128-pixel glyph on a 136x128 white canvas); emoji without a Twemoji are left
    out. Rendered once into the cache."""
    folder = cache_dir() / "twemoji"
    drawn = set(_cached_index(folder, _render_twemoji))
    return [CaptionExample(folder / "images" / ex.image.name, ex.captions, ex.key)
            for ex in examples if f"images/{ex.image.name}" in drawn]


def _render_twemoji(folder: Path) -> None:
    entries = json.loads((cache_dir() / "emoji" / "index.json").read_text(encoding="utf-8"))
    with tarfile.open(fetch_npm_file(*TWEMOJI_NPM)) as tar:
        images = {}  # code without FE0F -> PNG member
        for e in json.load(tar.extractfile("package/emoji.json")):
            for variant in [e, *(e.get("skin_variations") or {}).values()]:
                if variant.get("has_img_twitter", True):
                    code = "-".join(h for h in variant["unified"].split("-") if h != "FE0F")
                    images[code] = f"package/img/twitter/64/{variant['image']}"
        wanted = {images[_code(e["cp"])]: e["file"] for e in entries if _code(e["cp"]) in images}
        (folder / "images").mkdir(parents=True, exist_ok=True)
        drawn = []
        for member in tar:  # one pass: a gzipped tar read out of order is decompressed again for every file
            if member.name not in wanted:
                continue
            glyph = Image.open(tar.extractfile(member)).convert("RGBA").resize((128, 128), Image.LANCZOS)
            canvas = Image.new("RGBA", (136, 128), (255, 255, 255, 255))
            canvas.alpha_composite(glyph, (4, 0))  # where the Noto glyphs sit
            canvas.convert("RGB").save(folder / wanted[member.name])
            drawn.append(wanted[member.name])
    if len(drawn) < len(entries) // 2:
        raise FetchError(f"twemoji: only {len(drawn)} of {len(entries)} emoji matched {TWEMOJI_NPM[0]}")
    atomic_write(folder / "index.json", json.dumps(drawn))
