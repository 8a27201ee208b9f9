"""The one target every explainer explains.

For a caption w_1..w_T, s_t(x) = log p(w_t | x, w_<t) by teacher forcing, and
s(x) = sum_t s_t(x) over the caption's words (the end token is not counted).
A ``CaptionTarget`` holds the teacher-forcing inputs; the functions below
compute all s_t from pixels (through the backbone) or from the feature map
(decoder only, which is what Grad-CAM differentiates).

The gradients every explainer needs go through two compiled functions per
model (``score_gradients``): run eagerly, a backward pass through the backbone
costs several times its compiled cost. Captions are padded with pad tokens to a
multiple of ``LENGTH_BUCKET`` positions (the decoder is causal, and padded
positions weigh 0), so a handful of graphs serve every caption length.
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass

import numpy as np
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


LENGTH_BUCKET = 8
_compiled = weakref.WeakKeyDictionary()   # captioner -> its compiled gradient functions


def bucket_length(n_words: int) -> int:
    """Teacher-forcing positions (words + end) rounded up to a multiple of LENGTH_BUCKET."""
    return -(-(n_words + 1) // LENGTH_BUCKET) * LENGTH_BUCKET


def _gradient_functions(captioner):
    fns = _compiled.get(captioner)
    if fns is None:
        def scores_and_gradient(inputs, from_pixels, tokens_in, targets, weights):
            with tf.GradientTape() as tape:
                tape.watch(inputs)
                fmap = captioner.backbone(inputs, training=False) if from_pixels else inputs
                b = tf.shape(inputs)[0]
                scores = captioner.word_logprobs(fmap, tf.tile(tokens_in, [b, 1]),
                                                 tf.tile(targets, [b, 1]))
                total = tf.reduce_sum(scores * weights)
            return scores, tape.gradient(total, inputs)

        def scores_and_attention(fmap, tokens_in, targets):
            b = tf.shape(fmap)[0]
            tokens_in, targets = tf.tile(tokens_in, [b, 1]), tf.tile(targets, [b, 1])
            logits, attention = captioner.decoder((fmap, tokens_in), training=False)
            scores = tf.gather(tf.nn.log_softmax(logits, axis=-1), targets, batch_dims=2)
            return scores, attention

        fns = {from_pixels: tf.function(lambda x, t_in, t_out, w, p=from_pixels:
                                        scores_and_gradient(x, p, t_in, t_out, w))
               for from_pixels in (False, True)}
        fns["forward"] = tf.function(scores_and_attention)
        _compiled[captioner] = fns
    return fns


def _padded_inputs(captioner, target: CaptionTarget) -> tuple[tf.Tensor, tf.Tensor]:
    n, length = target.n_words, bucket_length(target.n_words)
    pad = [[0, 0], [0, length - (n + 1)]]
    return (tf.pad(target.tokens_in, pad, constant_values=captioner.vocab.pad_id),
            tf.pad(target.targets, pad, constant_values=captioner.vocab.pad_id))


def scores_and_attention(captioner, feature_map, target: CaptionTarget) -> tuple[tf.Tensor, tf.Tensor]:
    """Compiled teacher forcing: feature_map [B, h, w, C] -> (s_t [B, T],
    attention weights [B, T, h * w]; zeros for a merge decoder)."""
    tokens_in, targets = _padded_inputs(captioner, target)
    scores, attention = _gradient_functions(captioner)["forward"](
        tf.convert_to_tensor(feature_map, tf.float32), tokens_in, targets)
    return scores[:, : target.n_words], attention[:, : target.n_words]


def score_gradients(captioner, inputs, target: CaptionTarget, weights,
                    from_pixels: bool) -> tuple[tf.Tensor, tf.Tensor]:
    """Row i of ``inputs`` (pixels [N, S, S, 3] or feature maps [N, h, w, C]) scores
    S_i = sum_t weights[i, t] * s_t. Returns (s_t for every row [N, T], dS_i/d inputs_i)."""
    n, length = target.n_words, bucket_length(target.n_words)
    tokens_in, targets = _padded_inputs(captioner, target)
    weights = np.asarray(weights, np.float32)
    padded = np.zeros((weights.shape[0], length), np.float32)
    padded[:, :n] = weights
    scores, grads = _gradient_functions(captioner)[from_pixels](
        tf.convert_to_tensor(inputs, tf.float32), tokens_in, targets, tf.constant(padded))
    return scores[:, :n], grads
