"""The one target every explainer explains.

For a caption w_1..w_T, s_t(x) = log p(w_t | x, w_<t) by teacher forcing, and
s(x) = sum_t s_t(x) over the caption's words (the end token is not counted).
A ``CaptionTarget`` holds the teacher-forcing inputs; the functions below
compute all s_t from pixels (through the backbone) or from the feature map
(decoder only, which is what Grad-CAM differentiates).
"""
from __future__ import annotations

from dataclasses import dataclass

import tensorflow as tf


@dataclass(frozen=True)
class CaptionTarget:
    words: tuple[str, ...]
    token_ids: tuple[int, ...]
    tokens_in: tf.Tensor   # [1, T + 1]: start + words
    targets: tf.Tensor     # [1, T + 1]: words + end

    @property
    def n_words(self) -> int:
        return len(self.words)


def caption_target(captioner, words) -> CaptionTarget:
    """Target for a caption given as words (str or list); unknown words raise ValueError."""
    if isinstance(words, str):
        words = words.split()
    vocab = captioner.vocab
    missing = [w for w in words if w not in vocab]
    if missing:
        raise ValueError(f"words not in the model's vocabulary: {missing}")
    if not words:
        raise ValueError("the caption is empty: nothing to explain")
    ids = [vocab.index(w) for w in words]
    tokens_in, targets = captioner.teacher_forcing_inputs(ids)
    return CaptionTarget(tuple(words), tuple(ids), tokens_in, targets)


def word_scores_from_features(captioner, feature_map, target: CaptionTarget) -> tf.Tensor:
    """s_t for every word: feature_map [B, h, w, C] -> [B, T]."""
    b = tf.shape(feature_map)[0]
    tokens_in = tf.tile(target.tokens_in, [b, 1])
    targets = tf.tile(target.targets, [b, 1])
    return captioner.word_logprobs(feature_map, tokens_in, targets)[:, : target.n_words]


def word_scores_from_pixels(captioner, pixels, target: CaptionTarget) -> tf.Tensor:
    """s_t for every word from raw pixels [B, S, S, 3] (through the backbone): [B, T]."""
    return word_scores_from_features(captioner, captioner.backbone(pixels, training=False), target)


def select(scores: tf.Tensor, word: int | None) -> tf.Tensor:
    """scores [B, T] -> [B]: s_word, or the caption's s (sum over words) when word is None."""
    return tf.reduce_sum(scores, -1) if word is None else scores[:, word]
