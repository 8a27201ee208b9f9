"""Backbone features computed once and cached on disk, for frozen-backbone training.

A cache is a float16 ``.npy`` memmap plus a small JSON progress file, written in
batches: an interrupted run resumes where it stopped, and a cache made for
other images or another backbone is recomputed rather than reused.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable

import numpy as np
from tqdm import tqdm

from .samples import load_images


DATA_FILE, STATE_FILE = "features.npy", "progress.json"


def fingerprint(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()[:16]


def cached_array(compute: Callable[[int, int], np.ndarray], shape: tuple, key: str, cache_dir,
                 desc: str, progress: bool = True, batch_size: int = 16) -> np.ndarray:
    """Rows ``0 .. shape[0] - 1`` of ``compute(start, stop)``, stored in ``cache_dir``
    and read back lazily (float16). ``key`` names what the rows are: a cache with
    another key is recomputed."""
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    data_path, state_path = cache_dir / DATA_FILE, cache_dir / STATE_FILE
    state = json.loads(state_path.read_text()) if state_path.exists() else {}
    if state.get("fingerprint") != key or not data_path.exists():
        state = {"fingerprint": key, "done": 0}
        np.lib.format.open_memmap(data_path, mode="w+", dtype=np.float16, shape=shape).flush()
        state_path.write_text(json.dumps(state))
    rows = np.lib.format.open_memmap(data_path, mode="r+")
    done = state["done"]
    with tqdm(total=shape[0], initial=done, desc=desc, disable=not progress, unit="img") as bar:
        for start in range(done, shape[0], batch_size):
            stop = min(start + batch_size, shape[0])
            rows[start: stop] = compute(start, stop)
            rows.flush()
            state["done"] = stop
            state_path.write_text(json.dumps(state))   # after the data: a cut never skips a batch
            bar.update(stop - start)
    return np.lib.format.open_memmap(data_path, mode="r")


def finished_cache(cache_dir) -> np.ndarray | None:
    """The rows of a cache that ``cached_array`` wrote to the end (read lazily), for a
    later stage that wants the same rows; None for a missing or unfinished cache."""
    cache_dir = Path(cache_dir)
    data_path, state_path = cache_dir / DATA_FILE, cache_dir / STATE_FILE
    if not (data_path.exists() and state_path.exists()):
        return None
    rows = np.lib.format.open_memmap(data_path, mode="r")
    return rows if json.loads(state_path.read_text()).get("done") == len(rows) else None


def cached_features(captioner, dataset, image_ids, cache_dir, progress: bool = True,
                    batch_size: int = 16) -> np.ndarray:
    """The captioner's feature maps of ``image_ids``. The key covers the backbone's
    spec and, when its tail was tuned, the tuned weights' digest."""
    shape = (len(image_ids),) + tuple(captioner.backbone.output_shape[1:])
    key = fingerprint(captioner.config["backbone"], captioner.config.get("backbone_tail"),
                      list(image_ids))

    def compute(start, stop):
        pixels = load_images([dataset.image_path(i) for i in image_ids[start: stop]],
                             captioner.input_size, progress=False)
        return captioner.features(pixels.astype(np.float32)).numpy()
    return cached_array(compute, shape, key, cache_dir, "caching backbone features",
                        progress, batch_size)
