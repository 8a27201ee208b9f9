"""Grad-CAM and Grad-CAM++ for the caption and for every word.

Both work at the backbone's last convolutional activation A (``top_activation``),
which is exactly what the decoder reads. So one backbone pass gives A, and all
per-word gradients ds_t/dA come from the decoder alone: the Jacobian of the
words' scores with respect to A, one compiled, vectorised computation (see
``target.teacher_pass``). The caption's gradient is their sum
(s = sum_t s_t).

Grad-CAM (Selvaraju et al. 2017): weights = spatial mean of dS/dA, map = ReLU(sum_k w_k A_k).
Grad-CAM++ (Chattopadhay et al. 2018) only changes the weights, with the usual
closed form for an exponential of the score.
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf

from .target import CaptionTarget, channel_pass, teacher_pass


def word_gradients(captioner, feature_map, target: CaptionTarget) -> tuple[tf.Tensor, tf.Tensor]:
    """feature_map [1, h, w, C] -> (scores [T], gradients [T, h, w, C]) with row t = ds_t/dA."""
    found = teacher_pass(captioner, feature_map, target)
    return found.scores, found.gradients


def gradcam_weights(activations, gradients, plus_plus: bool = False):
    """activations/gradients [N, h, w, C] -> channel weights [N, C]."""
    if not plus_plus:
        return tf.reduce_mean(gradients, axis=[1, 2])
    g2, g3 = gradients ** 2, gradients ** 3
    sum_a = tf.reduce_sum(activations, axis=[1, 2], keepdims=True)
    denom = 2.0 * g2 + sum_a * g3
    alpha = tf.where(tf.abs(denom) > 1e-12, g2 / tf.where(tf.abs(denom) > 1e-12, denom, 1.0), 0.0)
    return tf.reduce_sum(alpha * tf.nn.relu(gradients), axis=[1, 2])


def cam_maps(feature_map, gradients, weights=gradcam_weights) -> np.ndarray:
    """feature_map A [1, h, w, C], gradients [N, h, w, C] -> [N, h, w] maps
    ReLU(sum_k w_k A_k) with channel weights w = weights(A, gradients) [N, C]: every CAM
    variant is a choice of ``weights``. ReLU'd, not normalised."""
    acts = tf.convert_to_tensor(feature_map, tf.float32)
    acts = tf.tile(acts, [int(gradients.shape[0]), 1, 1, 1])
    return tf.nn.relu(tf.einsum("nhwc,nc->nhw", acts, weights(acts, gradients))).numpy()


def cam_from_channel_sums(feature_map, channel_sums) -> np.ndarray:
    """Grad-CAM from each row's gradient summed over the cells, [N, C] (its weights are
    the means): feature_map A [1, h, w, C] -> [N, h, w] maps ReLU(sum_k w_k A_k)."""
    acts = np.asarray(feature_map, np.float32)[0]
    h, w, c = acts.shape
    weights = np.asarray(channel_sums, np.float32) / np.float32(h * w)
    maps = weights @ acts.reshape(h * w, c).T            # [N, h * w]: one BLAS call
    return np.maximum(maps, 0).reshape(-1, h, w)


def caption_and_word_cams(feature_map, channel_sums) -> tuple[np.ndarray, np.ndarray]:
    """(the caption's map [h, w], every word's [T, h, w]) from the words' channel sums
    [T, C]: the caption's weights are the words' sum (s = sum_t s_t)."""
    return (cam_from_channel_sums(feature_map, channel_sums.sum(0, keepdims=True))[0],
            cam_from_channel_sums(feature_map, channel_sums))


def cam_from(activations, gradients, plus_plus: bool = False) -> np.ndarray:
    """[N, h, w, C] activations and gradients -> [N, h, w] maps, ReLU'd, not normalised."""
    w = gradcam_weights(activations, gradients, plus_plus)
    return tf.nn.relu(tf.einsum("nhwc,nc->nhw", activations, w)).numpy()


def gradcam(captioner, feature_map, target: CaptionTarget, plus_plus: bool = False,
            gradients=None) -> dict:
    """Maps for the caption and every word, on the feature grid (not normalised).

    ``gradients`` = (scores, grads) from ``word_gradients`` when already computed;
    without them, Grad-CAM (not ++) takes the app's path: the channel pass, whose sums
    over cells are all its weights need.
    Returns {"caption": [h, w], "words": [T, h, w], "scores": [T]}.
    """
    if gradients is None and not plus_plus:
        found = channel_pass(captioner, feature_map, target)
        caption, words = caption_and_word_cams(feature_map, found.channel_gradients)
        return {"caption": caption, "words": words, "scores": found.scores}
    scores, grads = gradients or word_gradients(captioner, feature_map, target)
    weights = lambda a, g: gradcam_weights(a, g, plus_plus)   # noqa: E731
    return {"caption": cam_maps(feature_map, tf.reduce_sum(grads, 0, keepdims=True), weights)[0],
            "words": cam_maps(feature_map, grads, weights), "scores": np.asarray(scores)}
