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


LENGTH_BUCKET = 8
_compiled = weakref.WeakKeyDictionary()   # captioner -> {(kind, length): compiled function}


def bucket_length(n_words: int) -> int:
    """Teacher-forcing positions (words + end) rounded up to a multiple of LENGTH_BUCKET."""
    return -(-(n_words + 1) // LENGTH_BUCKET) * LENGTH_BUCKET


def compiled_function(captioner, kind: str, length: int):
    """The compiled function ``kind`` ("features", "pixels": scores and gradients;
    "forward": scores and attention) for padded captions of ``length`` positions.
    The batch size is left open, so one graph serves every batch of that length."""
    fns = _compiled.setdefault(captioner, {})
    if (kind, length) not in fns:
        tokens = tf.TensorSpec([1, length], tf.int32)
        fmap_shape = tuple(captioner.backbone.output_shape[1:])
        if kind == "forward":
            def forward(fmap, tokens_in, targets):
                b = tf.shape(fmap)[0]
                tokens_in, targets = tf.tile(tokens_in, [b, 1]), tf.tile(targets, [b, 1])
                logits, attention = captioner.decoder((fmap, tokens_in), training=False)
                scores = tf.gather(tf.nn.log_softmax(logits, axis=-1), targets, batch_dims=2)
                return scores, attention
            fn = tf.function(forward, input_signature=[
                tf.TensorSpec((None,) + fmap_shape, tf.float32), tokens, tokens])
        else:
            from_pixels = kind == "pixels"
            size = captioner.input_size

            def scores_and_gradient(inputs, tokens_in, targets, weights):
                with tf.GradientTape() as tape:
                    tape.watch(inputs)
                    fmap = captioner.backbone(inputs, training=False) if from_pixels else inputs
                    b = tf.shape(inputs)[0]
                    scores = captioner.word_logprobs(fmap, tf.tile(tokens_in, [b, 1]),
                                                     tf.tile(targets, [b, 1]))
                    total = tf.reduce_sum(scores * weights)
                return scores, tape.gradient(total, inputs)
            shape = (None, size, size, 3) if from_pixels else (None,) + fmap_shape
            fn = tf.function(scores_and_gradient, input_signature=[
                tf.TensorSpec(shape, tf.float32), tokens, tokens,
                tf.TensorSpec([None, length], tf.float32)])
        fns[(kind, length)] = fn
    return fns[(kind, length)]


def warm_up_all_lengths(captioner) -> None:
    """Run every function once for every caption length the model can write (its
    maximum length): tracing and TensorFlow's graph optimisation happen on the
    first run, so no request waits for them."""
    size, fmap_shape = captioner.input_size, tuple(captioner.backbone.output_shape[1:])
    for length in range(LENGTH_BUCKET, bucket_length(captioner.max_length) + 1, LENGTH_BUCKET):
        tokens = tf.fill([1, length], captioner.vocab.pad_id)
        weights = tf.zeros([1, length])
        compiled_function(captioner, "features", length)(
            tf.zeros((1,) + fmap_shape), tokens, tokens, weights)
        compiled_function(captioner, "pixels", length)(
            tf.zeros((1, size, size, 3)), tokens, tokens, weights)
        compiled_function(captioner, "forward", length)(tf.zeros((1,) + fmap_shape), tokens, tokens)


def _padded_inputs(captioner, target: CaptionTarget) -> tuple[tf.Tensor, tf.Tensor]:
    n, length = target.n_words, bucket_length(target.n_words)
    pad = [[0, 0], [0, length - (n + 1)]]
    return (tf.pad(target.tokens_in, pad, constant_values=captioner.vocab.pad_id),
            tf.pad(target.targets, pad, constant_values=captioner.vocab.pad_id))


def scores_and_attention(captioner, feature_map, target: CaptionTarget) -> tuple[tf.Tensor, tf.Tensor]:
    """Compiled teacher forcing: feature_map [B, h, w, C] -> (s_t [B, T],
    attention weights [B, T, h * w]; zeros for a merge decoder)."""
    tokens_in, targets = _padded_inputs(captioner, target)
    scores, attention = compiled_function(captioner, "forward", int(tokens_in.shape[1]))(
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
    kind = "pixels" if from_pixels else "features"
    scores, grads = compiled_function(captioner, kind, length)(
        tf.convert_to_tensor(inputs, tf.float32), tokens_in, targets, tf.constant(padded))
    return scores[:, :n], grads
