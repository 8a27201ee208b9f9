"""Asset catalogue for the "objects world": cut-out images of everyday things.

The catalogue (``objects_catalog.json`` next to this module) maps each caption
noun (``cup``, ``person``...) to several *sources*, each one of:

* ``stamp``   - a Tux Paint stamp PNG (mostly photographs, with alpha),
* ``clipart`` - an Open Clip Art PNG whose background is transparent,
* ``emoji``   - a Noto Color Emoji glyph, given as its text.

plus backgrounds that show no nameable object, and the licence of every
package. The files are Debian packages installed system-wide, so a machine may
hold only some of them: :func:`available` filters the catalogue to what is
present instead of failing.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

CATALOG_PATH = Path(__file__).with_name("objects_catalog.json")
EMOJI_FONT = "/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf"
# NotoColorEmoji is a bitmap font: FreeType only loads it at its native strike size.
EMOJI_SIZE = 109
# Alpha at or below this counts as background when cropping, so that faint
# anti-aliasing halos or shadows do not inflate an object's bounding box.
ALPHA_CROP_THRESHOLD = 8

# Some clip art is huge (up to ~170 Mpx); it is trusted, local data, so Pillow's
# decompression-bomb guard would only get in the way.
Image.MAX_IMAGE_PIXELS = None


@dataclass(frozen=True)
class Category:
    name: str
    article: str
    sources: list[dict]


@dataclass(frozen=True)
class Catalog:
    categories: dict[str, Category]
    backgrounds: list[dict]
    packages: dict[str, dict] = field(default_factory=dict)


def load_catalog(path: str | os.PathLike | None = None) -> Catalog:
    """Read the catalogue JSON (the bundled one by default)."""
    with open(path or CATALOG_PATH, encoding="utf-8") as f:
        raw = json.load(f)
    categories = {name: Category(name, c["article"], list(c["sources"]))
                  for name, c in raw["categories"].items()}
    return Catalog(categories, list(raw["backgrounds"]), dict(raw.get("packages", {})))


def source_exists(source: dict) -> bool:
    """Whether the file a source needs (image or emoji font) is installed."""
    return os.path.isfile(source["path"] if "path" in source else EMOJI_FONT)


def available(catalog: Catalog) -> tuple[Catalog, list[str]]:
    """The catalogue restricted to installed files, and the names of the
    categories left with no source (those are dropped from the result)."""
    kept, empty = {}, []
    for name, cat in catalog.categories.items():
        sources = [s for s in cat.sources if source_exists(s)]
        if sources:
            kept[name] = Category(name, cat.article, sources)
        else:
            empty.append(name)
    backgrounds = [b for b in catalog.backgrounds if os.path.isfile(b["path"])]
    return Catalog(kept, backgrounds, catalog.packages), empty


def render_source(source: dict, rng: np.random.Generator | None = None) -> np.ndarray:
    """An RGBA uint8 array (H, W, 4) of the source, cropped to its alpha bbox.

    ``rng`` is accepted so callers can treat every source alike; rendering is
    currently deterministic and does not use it.
    """
    image = _render_emoji(source["text"]) if source["kind"] == "emoji" else _load_png(source["path"])
    return _crop_to_alpha(np.asarray(image))


def _load_png(path: str) -> Image.Image:
    with Image.open(path) as im:
        # Palette / LA / tRNS images all carry transparency that RGBA exposes uniformly.
        return im.convert("RGBA")


@lru_cache(maxsize=1)
def _emoji_font() -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(EMOJI_FONT, EMOJI_SIZE)


def _render_emoji(text: str) -> Image.Image:
    font = _emoji_font()
    left, top, right, bottom = font.getbbox(text)
    # Generous padding: some glyphs overhang the advance box the bbox reports.
    pad = EMOJI_SIZE // 2
    canvas = Image.new("RGBA", (right - left + 2 * pad, bottom - top + 2 * pad), (0, 0, 0, 0))
    ImageDraw.Draw(canvas).text((pad - left, pad - top), text, font=font, embedded_color=True)
    return canvas


def _crop_to_alpha(rgba: np.ndarray) -> np.ndarray:
    mask = rgba[..., 3] > ALPHA_CROP_THRESHOLD
    if not mask.any():
        raise ValueError("source renders fully transparent")
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return np.ascontiguousarray(rgba[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1])
