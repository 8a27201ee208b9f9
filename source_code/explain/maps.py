"""Small operations on explanation maps, shared by every explainer and metric."""
from __future__ import annotations

import numpy as np
from PIL import Image

MAX_JSON_GRID = 64  # the API's heatmaps are at most 64 x 64 values


def normalize(m: np.ndarray) -> np.ndarray:
    """Scale a map to [0, 1] (min-max); a constant map becomes all zeros."""
    m = np.asarray(m, np.float32)
    lo, hi = float(m.min()), float(m.max())
    return np.zeros_like(m) if hi - lo < 1e-12 else (m - lo) / (hi - lo)


def resize_map(m: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of a 2-D map (the map's grid spans the whole image)."""
    im = Image.fromarray(np.asarray(m, np.float32), mode="F")
    return np.asarray(im.resize((width, height), Image.BILINEAR), np.float32)


def json_grid(m: np.ndarray, max_side: int = MAX_JSON_GRID) -> list[list[float]]:
    """A normalised map as nested lists of at most max_side x max_side values in [0, 1]."""
    m = normalize(m)
    h, w = m.shape
    if max(h, w) > max_side:
        scale = max_side / max(h, w)
        m = np.clip(resize_map(m, max(1, round(h * scale)), max(1, round(w * scale))), 0, 1)
    return np.round(m, 3).tolist()   # 1/1000 is finer than the 256-colour scale


def peak(m: np.ndarray, height: int, width: int) -> tuple[int, int]:
    """(row, col) in image pixels of the maximum of a map upsampled to the image."""
    up = resize_map(m, height, width)
    r, c = np.unravel_index(int(np.argmax(up)), up.shape)
    return int(r), int(c)
