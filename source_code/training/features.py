"""Backbone features computed once and cached on disk, for frozen-backbone training.

The cache is a float16 ``.npy`` memmap plus a small JSON progress file, written in
batches: an interrupted run resumes where it stopped, and a cache made for
other images or another backbone is recomputed rather than reused.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .samples import load_images


def _fingerprint(captioner, image_ids) -> str:
    h = hashlib.sha256(json.dumps([captioner.config["backbone"], list(image_ids)]).encode())
    return h.hexdigest()[:16]


def cached_features(captioner, dataset, image_ids, cache_dir, progress: bool = True,
                    batch_size: int = 16) -> np.ndarray:
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    shape = (len(image_ids),) + tuple(captioner.backbone.output_shape[1:])
    data_path, state_path = cache_dir / "features.npy", cache_dir / "progress.json"
    fp = _fingerprint(captioner, image_ids)
    state = json.loads(state_path.read_text()) if state_path.exists() else {}
    if state.get("fingerprint") != fp or not data_path.exists():
        state = {"fingerprint": fp, "done": 0}
        np.lib.format.open_memmap(data_path, mode="w+", dtype=np.float16, shape=shape).flush()
        state_path.write_text(json.dumps(state))
    feats = np.lib.format.open_memmap(data_path, mode="r+")
    done = state["done"]
    size = captioner.input_size
    with tqdm(total=len(image_ids), initial=done, desc="caching backbone features",
              disable=not progress, unit="img") as bar:
        for start in range(done, len(image_ids), batch_size):
            ids = image_ids[start: start + batch_size]
            pixels = load_images([dataset.image_path(i) for i in ids], size, progress=False)
            feats[start: start + len(ids)] = captioner.features(pixels.astype(np.float32)).numpy()
            feats.flush()
            state["done"] = start + len(ids)
            state_path.write_text(json.dumps(state))   # after the data: a cut never skips a batch
            bar.update(len(ids))
    return np.lib.format.open_memmap(data_path, mode="r")  # float16, read lazily
