"""Rendering explanation maps: colormapped overlays over the frame, PNG data URLs, legends."""
from __future__ import annotations

import base64
import io
import os
from concurrent.futures import Future, ThreadPoolExecutor
from functools import lru_cache

import numpy as np
from matplotlib import colormaps
from PIL import Image

from .maps import json_grid, normalize, resize_map

DEFAULT_CMAP = "jet"
OVERLAY_ALPHA = 0.5


def overlay(frame: np.ndarray, heatmap: np.ndarray, cmap: str = DEFAULT_CMAP,
            alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    """Blend a colormapped heatmap (any grid spanning the frame) over an HxWx3 uint8 frame."""
    h, w = frame.shape[:2]
    m = np.clip(resize_map(normalize(heatmap), h, w), 0, 1)
    table = _colour_table(cmap)
    # The colormap's own lookup (matplotlib indexes its N-entry table the same way),
    # in float32: a full explanation draws about a hundred of these.
    colour = np.take(table, np.minimum((m * len(table)).astype(np.intp), len(table) - 1), axis=0)
    # Weak evidence shows the frame; strong evidence shows the colour.
    a = np.float32(alpha) * (np.float32(0.35) + np.float32(0.65) * m[..., None])
    return np.clip(frame.astype(np.float32) * (1 - a) + colour * a, 0, 255).astype(np.uint8)


@lru_cache(maxsize=8)
def _colour_table(cmap: str) -> np.ndarray:
    """The colormap's lookup table as RGB in 0..255, float32 [N, 3]."""
    cm = colormaps[cmap]
    return (cm(np.arange(cm.N))[:, :3] * 255.0).astype(np.float32)


def png_bytes(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    # About a hundred overlays a request: speed over size. zlib's run-length strategy
    # (compress_type 3, Z_RLE) is both faster and smaller than its default on these.
    Image.fromarray(image).save(buf, format="PNG", compress_level=1, compress_type=3)
    return buf.getvalue()


def data_url(image: np.ndarray) -> str:
    return "data:image/png;base64," + base64.b64encode(png_bytes(image)).decode("ascii")


# A full explanation renders about a hundred overlays; colormapping (numpy) and PNG
# encoding (Pillow) release the GIL, so a small pool renders them side by side.
_RENDER_POOL = ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1),
                                  thread_name_prefix="overlay")


def overlay_url_later(frame: np.ndarray, heatmap: np.ndarray) -> Future:
    """The overlay's PNG data URL, rendered on the pool; ``resolve`` collects it."""
    return _RENDER_POOL.submit(lambda: data_url(overlay(frame, heatmap)))


def map_json(heatmap: np.ndarray, overlay_on: np.ndarray | None = None, **extra) -> dict:
    """The API's form of one explanation map: ``heatmap``, its grid of values in [0, 1]
    (the page colours it), the method's own numbers (``extra``), and a PNG ``overlay``
    over the frame ``overlay_on`` only when one is given (files, the no-script page)."""
    out = {"heatmap": json_grid(heatmap), **extra}
    if overlay_on is not None:
        out["overlay"] = overlay_url_later(overlay_on, heatmap)
    return out


def resolve(tree):
    """``tree`` (nested dicts/lists) with every Future replaced by its result."""
    if isinstance(tree, Future):
        return tree.result()
    if isinstance(tree, dict):
        return {k: resolve(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [resolve(v) for v in tree]
    return tree


def legend(cmap: str = DEFAULT_CMAP, width: int = 256, height: int = 12) -> np.ndarray:
    """A horizontal colour bar, low evidence on the left."""
    row = colormaps[cmap](np.linspace(0, 1, width))[:, :3] * 255
    return np.repeat(row[None].astype(np.uint8), height, axis=0)


def display_frame(frame: np.ndarray, max_side: int = 480) -> np.ndarray:
    """The frame scaled down (aspect kept) to at most ``max_side`` pixels a side: so
    overlays stay small in JSON, and request-time segmentation stays cheap."""
    h, w = frame.shape[:2]
    if max(h, w) <= max_side:
        return frame
    s = max_side / max(h, w)
    return np.asarray(Image.fromarray(frame).resize((max(1, round(w * s)), max(1, round(h * s))),
                                                    Image.BILINEAR))
