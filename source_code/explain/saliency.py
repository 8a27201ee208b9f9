"""Pixel saliency of the caption target: vanilla gradient, SmoothGrad, Integrated Gradients.

All three differentiate s (or s_t) with respect to the raw input pixels, through
the backbone, so each costs backbone forward+backward passes (batched).

* vanilla (Simonyan et al. 2014): |ds/dx|, max over colour channels.
* SmoothGrad (Smilkov et al. 2017): mean of |ds/dx| over ``samples`` copies of x
  with Gaussian noise of std ``noise`` x (pixel range 255).
* Integrated Gradients (Sundararajan et al. 2017): (x - x0) * mean of ds/dx along
  the straight path from the baseline x0 to x, ``steps`` midpoint-rule steps;
  the baseline is a black image (all zeros). Map = |sum over colour channels|.

Per-word maps batch the words: the image is tiled once per requested word and
row i scores word i, so one backward pass gives every word's gradient.
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf

from .target import CaptionTarget, score_gradients

SMOOTHGRAD_SAMPLES, SMOOTHGRAD_NOISE = 16, 0.15
IG_STEPS = 32
# Images per backward pass: eight of 224 x 224 pixels' worth. A backward pass keeps
# every activation, so the batch bounds the peak memory: SmoothGrad through
# EfficientNetV2L at 480 px peaked at 7.8 GB in batches of 8 and at 2.7 GB one image
# at a time, which was no slower on the CPU.
BATCH_PIXELS = 8 * 224 * 224


def batch_size_for(captioner) -> int:
    return max(1, min(8, BATCH_PIXELS // captioner.input_size ** 2))


def _gradients(captioner, pixels, target: CaptionTarget, words: list[int | None]):
    """pixels [N, S, S, 3], words[i] = word index for row i (None = whole caption)
    -> d s_{words[i]} / d pixels[i], [N, S, S, 3]."""
    weights = np.zeros((len(words), target.n_words), np.float32)
    for i, w in enumerate(words):
        if w is None:
            weights[i, :] = 1.0
        else:
            weights[i, w] = 1.0
    return score_gradients(captioner, pixels, target, weights, from_pixels=True)[1]


def _batched(fn, rows: int, captioner, batch_size: int | None):
    """fn(a, b) over rows a:b in batches (default: sized by the input's pixels)."""
    batch_size = max(1, int(batch_size or batch_size_for(captioner)))
    return tf.concat([fn(s, min(s + batch_size, rows)) for s in range(0, rows, batch_size)], 0)


def pixel_gradients(captioner, pixels, target, words=(None,), batch_size: int | None = None) -> tf.Tensor:
    """Signed ds/dx for each entry of words (None = whole caption): [len(words), S, S, 3]."""
    words = list(words)
    x = tf.repeat(tf.convert_to_tensor(pixels, tf.float32), len(words), 0)
    return _batched(lambda a, b: _gradients(captioner, x[a:b], target, words[a:b]), len(words),
                    captioner, batch_size)


def vanilla_from_gradients(gradients) -> np.ndarray:
    return tf.reduce_max(tf.abs(gradients), -1).numpy()


def vanilla(captioner, pixels, target, words=(None,), batch_size: int | None = None) -> np.ndarray:
    """[len(words), S, S] maps."""
    return vanilla_from_gradients(pixel_gradients(captioner, pixels, target, words, batch_size))


def smoothgrad(captioner, pixels, target, word=None, samples: int = SMOOTHGRAD_SAMPLES,
               noise: float = SMOOTHGRAD_NOISE, batch_size: int | None = None, seed: int = 0) -> np.ndarray:
    """[S, S] map for the caption (word=None) or one word."""
    x = tf.convert_to_tensor(pixels, tf.float32)
    rng = tf.random.Generator.from_seed(seed)
    noisy = x + rng.normal(tf.concat([[samples], tf.shape(x)[1:]], 0)) * (noise * 255.0)
    g = _batched(lambda a, b: _gradients(captioner, noisy[a:b], target, [word] * (b - a)),
                 samples, captioner, batch_size)
    return tf.reduce_mean(tf.reduce_max(tf.abs(g), -1), 0).numpy()


def integrated_gradients_attributions(captioner, pixels, target, word=None, steps: int = IG_STEPS,
                                      baseline=None, batch_size: int | None = None) -> np.ndarray:
    """Signed per-pixel, per-channel IG attributions [S, S, 3] for the caption
    (word=None) or one word; they sum to about s(x) - s(baseline) (completeness)."""
    x = tf.convert_to_tensor(pixels, tf.float32)
    x0 = tf.zeros_like(x) if baseline is None else tf.convert_to_tensor(baseline, tf.float32)
    alphas = (tf.range(steps, dtype=tf.float32) + 0.5) / steps
    path = x0 + alphas[:, None, None, None] * (x - x0)
    g = _batched(lambda a, b: _gradients(captioner, path[a:b], target, [word] * (b - a)),
                 steps, captioner, batch_size)
    return ((x - x0)[0] * tf.reduce_mean(g, 0)).numpy()


def integrated_gradients(captioner, pixels, target, word=None, steps: int = IG_STEPS,
                         baseline=None, batch_size: int | None = None) -> np.ndarray:
    """[S, S] map for the caption (word=None) or one word: |sum over colour channels|
    of ``integrated_gradients_attributions``."""
    attributions = integrated_gradients_attributions(captioner, pixels, target, word, steps,
                                                     baseline, batch_size)
    return np.abs(attributions.sum(-1))
