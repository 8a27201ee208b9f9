"""Faithfulness and sanity of explanation maps.

* Deletion / insertion AUC (Petsiuk et al. 2018, RISE): pixels are removed
  or inserted (into a blurred copy, as RISE does) in the order the map ranks
  them, ``steps`` equal chunks, and the word's probability p(w_t | x, w_<t) is
  read after each chunk; AUC is the mean over the steps 0..steps. A faithful map
  gives a low deletion AUC and a high insertion AUC. Random maps are the baseline.
  Removed pixels take the image's median colour rather than RISE's black: on a
  light page a black blob reads as a (large, dark) object and props up words
  like "large", while the median colour is the page itself.
* Pointing game on synthetic scenes (``pointing``).
* Model-randomisation sanity check (Adebayo et al. 2018): maps of the trained
  model and of the same architecture with random weights must differ (Spearman
  rank correlation of the maps well below 1).
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf
from PIL import Image, ImageFilter
from scipy import stats

from .maps import resize_map
from .target import scores_and_attention

STEPS = 16
BLUR_RADIUS = 8


def _order(m: np.ndarray, size: int, rng) -> np.ndarray:
    """Pixel indices, most important first (ties broken at random)."""
    up = resize_map(m, size, size).ravel()
    return np.lexsort((rng.random(up.size), -up))


def deletion_insertion(captioner, pixels, target, word_maps: dict, steps: int = STEPS,
                       seed: int = 0) -> dict:
    """word_maps {word index: map on any grid}. Returns {"deletion": {i: auc}, "insertion": {i: auc}}."""
    rng = np.random.default_rng(seed)
    x = np.asarray(pixels)[0]
    size = x.shape[0]
    blurred = np.asarray(Image.fromarray(x.astype(np.uint8)).filter(
        ImageFilter.GaussianBlur(BLUR_RADIUS)), np.float32)
    fill = np.median(x.reshape(-1, 3), axis=0)
    out = {"deletion": {}, "insertion": {}}
    chunk = int(np.ceil(size * size / steps))
    for i, m in word_maps.items():
        order = _order(m, size, rng)
        batch_del, batch_ins = [], []
        for k in range(steps + 1):
            keep = np.zeros(size * size, bool)
            keep[order[: k * chunk]] = True
            keep = keep.reshape(size, size, 1)
            batch_del.append(np.where(keep, fill, x))
            batch_ins.append(np.where(keep, x, blurred))
        batch = tf.constant(np.stack(batch_del + batch_ins), tf.float32)
        probs = np.exp(scores_and_attention(captioner, captioner.features(batch), target)[0].numpy()[:, i])
        out["deletion"][i] = float(probs[: steps + 1].mean())
        out["insertion"][i] = float(probs[steps + 1:].mean())
    return out


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    r = stats.spearmanr(np.ravel(a), np.ravel(b)).statistic
    return 0.0 if np.isnan(r) else float(r)


def randomized_copy(captioner, seed: int = 1):
    """The same architecture and vocabulary with freshly initialised weights."""
    import keras

    from ..model.backbone import BackboneSpec
    from ..model.captioner import Captioner
    keras.utils.set_random_seed(seed)
    spec = BackboneSpec.from_dict(dict(captioner.config["backbone"], weights=None))
    return Captioner.build(captioner.vocab, spec, captioner.config["decoder"],
                           captioner.max_length)
