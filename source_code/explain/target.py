"""The one target every explainer explains.

For a caption w_1..w_T, s_t(x) = log p(w_t | x, w_<t) by teacher forcing, and
s(x) = sum_t s_t(x) over the caption's words (the end token is not counted).
A ``CaptionTarget`` holds the teacher-forcing inputs; the functions below
compute all s_t from pixels (through the backbone) or from the feature map
(decoder only, which is what Grad-CAM differentiates).

The gradients every explainer needs go through compiled functions
(``compiled_function``; ``score_gradients``, ``scores_and_attention``,
``caption_and_gradient``): run eagerly, a backward pass through the backbone
costs several times its compiled cost. Their caption length is left open, so
one graph of each serves every caption.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from ..model.captioner import token_logprobs


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


TOP_ALTERNATIVES = 6                      # the most likely words reported at each step
FUNCTION_KINDS = ("features", "pixels", "forward", "words", "channels", "cells")
STEPPED_KINDS = ("channels", "cells")     # compiled for a caption length


def _teacher_scores(captioner, fmap, tokens_in, targets, memory=None):
    """Teacher forcing of ``targets`` (on the feature map, or on a given decoder memory):
    each step's score (log-probability of its target word), attention, and its
    TOP_ALTERNATIVES likeliest words (no gradient through those)."""
    if memory is None:
        logits, attention = captioner.decoder((fmap, tokens_in), training=False)
    else:
        logits, attention = captioner.decoder.teacher_forcing(memory, tokens_in)
    logp, scores = token_logprobs(logits, targets)
    k = min(TOP_ALTERNATIVES, captioner.decoder.vocab_size)
    top_logp, top_ids = tf.math.top_k(tf.stop_gradient(logp), k=k)
    return scores, attention, top_logp, top_ids


def channel_steps(captioner) -> tuple[int, int]:
    """The caption lengths (tokens, with the end) the channel pass is compiled for: the
    longest the model writes, and about half that (one-object captions run half the
    steps)."""
    longest = captioner.max_length + 1
    return (max(2, (longest + 1) // 2), longest)


def compiled_function(captioner, kind: str, steps: int | None = None):
    """The compiled function ``kind``: "features" and "pixels" (scores and gradients,
    from feature maps or pixels), "forward" (scores and attention), "words" (every
    word's feature-map gradient) or "channels" (every word's gradient summed over the
    grid's cells, see ``channel_pass``; for captions padded to ``steps`` tokens).
    Otherwise caption length (and batch size) are left open, the decoder then
    teacher-forcing in a tf.while_loop, so one graph per kind serves every request:
    each graph through a large backbone holds its own buffers, and graphs per caption
    length multiplied the server's memory."""
    fns, key = captioner.compiled, ("explain", kind, steps)
    if key not in fns:
        if kind not in FUNCTION_KINDS:
            raise ValueError(f"unknown function kind {kind!r}")
        if (kind in STEPPED_KINDS) != (steps is not None):
            raise ValueError("the channel and cell passes, and they alone, are compiled for "
                             "a caption length")
        tokens = tf.TensorSpec([1, None], tf.int32)
        fmap_shape = tuple(captioner.backbone.output_shape[1:])
        if kind == "words":
            # Every word's gradient ds_t/dA from one feature map: the Jacobian of the
            # words' scores, vectorised by TensorFlow (pfor), runs the decoder forward
            # once instead of once per word, and was 30 % faster than that on
            # EfficientNetV2L's grid. The same forward gives the attention weights and
            # each step's most likely words, so no second teacher-forcing pass is needed.
            def words(fmap, tokens_in, targets):
                with tf.GradientTape(watch_accessed_variables=False) as tape:
                    tape.watch(fmap)
                    scores, attention, top_logp, top_ids = _teacher_scores(
                        captioner, fmap, tokens_in, targets)
                    scores = scores[0, :-1]
                return (scores, tape.jacobian(scores, fmap)[:, 0], attention[0, :-1],
                        top_logp[0, :-1], top_ids[0, :-1])
            fn = tf.function(words, input_signature=[
                tf.TensorSpec((1,) + fmap_shape, tf.float32), tokens, tokens])
        elif kind == "channels":
            # The gradient of every word with respect to the decoder's channel shift
            # (the sum over cells of ds_t/dA: all that Grad-CAM's weights need), from
            # the decoder's cell_parts, which the search computed already. Compiled
            # with XLA, which fuses the decoder's many small per-step ops: 2.5x faster
            # than the graph's while loop on this CPU. XLA wants static shapes, so the
            # caption is padded to ``steps`` tokens (channel_steps: two lengths) and the
            # loop unrolled: two compilations serve every caption.
            decoder = captioner.decoder

            def channels(parts, tokens_in, targets):
                shift = tf.zeros([1, fmap_shape[-1]])
                with tf.GradientTape(watch_accessed_variables=False) as tape:
                    tape.watch(shift)
                    scores, attention, top_logp, top_ids = _teacher_scores(
                        captioner, None, tokens_in, targets, decoder.memory_from(parts, shift))
                    scores = scores[0]
                return (scores, tape.jacobian(scores, shift)[:, 0], attention[0], top_logp[0],
                        top_ids[0])
            fn = _stepped_function(captioner, channels, steps)
        elif kind == "cells":
            # As "channels", and also every word's gradient with respect to a gate on each
            # cell (decoder.gate_cells): grad x activation per cell, what ACE's segment
            # importance needs, without the full [T, h, w, C] Jacobian of "words".
            decoder = captioner.decoder
            n_cells = fmap_shape[0] * fmap_shape[1]

            def cells(parts, tokens_in, targets):
                shift, gate = tf.zeros([1, fmap_shape[-1]]), tf.ones([1, n_cells])
                with tf.GradientTape(watch_accessed_variables=False) as tape:
                    tape.watch([shift, gate])
                    memory = decoder.memory_from(decoder.gate_cells(parts, gate), shift)
                    scores, _, _, _ = _teacher_scores(captioner, None, tokens_in, targets, memory)
                    scores = scores[0]
                by_channel, by_cell = tape.jacobian(scores, [shift, gate])
                return scores, by_channel[:, 0], by_cell[:, 0]
            fn = _stepped_function(captioner, cells, steps)
        elif kind == "forward":
            def forward(fmap, tokens_in, targets):
                b = tf.shape(fmap)[0]
                return _teacher_scores(captioner, fmap, tf.tile(tokens_in, [b, 1]),
                                       tf.tile(targets, [b, 1]))
            fn = tf.function(forward, input_signature=[
                tf.TensorSpec((None,) + fmap_shape, tf.float32), tokens, tokens])
        else:
            from_pixels = kind == "pixels"
            size = captioner.input_size

            def scores_and_gradient(inputs, tokens_in, targets, weights):
                with tf.GradientTape(watch_accessed_variables=False) as tape:
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
                tf.TensorSpec([None, None], tf.float32)])
        fns[key] = fn
    return fns[key]


def _stepped_function(captioner, fn, steps: int):
    """fn(cell_parts, tokens_in, targets) compiled with XLA for captions padded to
    ``steps`` tokens (the channel and cell passes)."""
    fmap_shape = tuple(captioner.backbone.output_shape[1:])
    parts = tf.nest.map_structure(lambda t: tf.TensorSpec(t.shape, t.dtype),
                                  captioner.cell_parts(tf.zeros((1,) + fmap_shape)))
    padded = tf.TensorSpec([1, steps], tf.int32)
    return tf.function(fn, jit_compile=True, input_signature=[parts, padded, padded])


def _padded_caption(captioner, target: CaptionTarget, word_ids=None):
    """(steps, tokens [2, steps]: start + words in, words (or ``word_ids``) + end out,
    padded) for the stepped passes; (None, None) for a caption longer than the model
    writes, which takes the full pass instead."""
    length = int(target.tokens_in.shape[1])
    steps = next((s for s in channel_steps(captioner) if s >= length), None)
    if steps is None:
        return None, None
    vocab = captioner.vocab
    padded = np.full((2, steps), vocab.pad_id, np.int32)
    padded[0, :length] = [vocab.start_id, *target.token_ids]
    padded[1, :length] = [*(target.token_ids if word_ids is None else word_ids), vocab.end_id]
    return steps, padded


def warm_up_compiled(captioner) -> None:
    """Run every compiled function a request uses once: tracing and TensorFlow's graph
    optimisation happen on the first run, so no request waits for them. ("features"
    serves the live view's caption-only Grad-CAM.)"""
    size, fmap_shape = captioner.input_size, tuple(captioner.backbone.output_shape[1:])
    tokens = tf.fill([1, 2], captioner.vocab.pad_id)
    weights = tf.zeros([1, 2])
    compiled_function(captioner, "pixels")(tf.zeros((1, size, size, 3)), tokens, tokens, weights)
    compiled_function(captioner, "forward")(tf.zeros((1,) + fmap_shape), tokens, tokens)
    compiled_function(captioner, "words")(tf.zeros((1,) + fmap_shape), tokens, tokens)
    parts = captioner.cell_parts(tf.zeros((1,) + fmap_shape))
    for steps in channel_steps(captioner):
        compiled_function(captioner, "channels", steps)(
            parts, *([tf.fill([1, steps], captioner.vocab.pad_id)] * 2))
    compiled_function(captioner, "features")(tf.zeros((1,) + fmap_shape), tokens, tokens, weights)


@dataclass(frozen=True)
class TeacherPass:
    """One teacher-forced decoder pass over a caption, with every word's gradient.
    scores [T] (s_t), gradients [T, h, w, C] (ds_t/dA, a tensor; None from
    ``channel_pass``), attention [T, h * w] (zeros for a merge decoder), top_logp /
    top_ids [T, k]: each step's most likely words; channel_gradients [T, C]: ds_t/dA
    summed over the cells. All but ``gradients`` are numpy arrays."""
    scores: np.ndarray
    gradients: tf.Tensor | None
    attention: np.ndarray
    top_logp: np.ndarray
    top_ids: np.ndarray
    channel_gradients: np.ndarray


def _targets(captioner, target: CaptionTarget, word_ids) -> tf.Tensor:
    """The caption's targets, or ``word_ids`` at each step (same prefixes) and the end."""
    if word_ids is None:
        return target.targets
    return tf.constant([list(word_ids) + [captioner.vocab.end_id]], tf.int32)


def teacher_pass(captioner, feature_map, target: CaptionTarget, word_ids=None) -> TeacherPass:
    """Teacher forcing of ``target`` on feature_map [1, h, w, C]. ``word_ids``: score
    these words instead of the caption's at each step (same prefixes), e.g. the
    alternatives of a contrastive explanation."""
    scores, gradients, attention, top_logp, top_ids = compiled_function(captioner, "words")(
        tf.convert_to_tensor(feature_map, tf.float32), target.tokens_in,
        _targets(captioner, target, word_ids))
    return TeacherPass(scores.numpy(), gradients, attention.numpy(), top_logp.numpy(),
                       top_ids.numpy(), tf.reduce_sum(gradients, axis=[1, 2]).numpy())


def channel_pass(captioner, feature_map, target: CaptionTarget, word_ids=None,
                 parts=None) -> TeacherPass:
    """As ``teacher_pass`` without the full gradients: every word's ds_t/dA summed over
    the cells (Grad-CAM's weights times h * w), from the decoder's channel shift, at a
    fraction of the cost. ``parts``: the captioner's cell_parts of feature_map, when
    already computed. A caption longer than the model writes (a user's own) takes the
    full pass."""
    steps, padded = _padded_caption(captioner, target, word_ids)
    if steps is None:
        return teacher_pass(captioner, feature_map, target, word_ids)
    if parts is None:
        parts = captioner.cell_parts(feature_map)
    out = compiled_function(captioner, "channels", steps)(parts, padded[:1], padded[1:])
    n = target.n_words
    scores, sums, attention, top_logp, top_ids = (t.numpy()[:n] for t in out)
    return TeacherPass(scores, None, attention, top_logp, top_ids, sums)


@dataclass(frozen=True)
class CellPass:
    """Every word's score s_t [T], its gradient summed over the cells (ds_t/dA summed
    over h, w: [T, C]) and its grad x activation per cell (sum_c ds_t/dA A: [T, h * w])."""
    scores: np.ndarray
    channel_gradients: np.ndarray
    cell_contributions: np.ndarray


def cell_pass(captioner, feature_map, target: CaptionTarget, parts=None) -> CellPass:
    """Teacher forcing of ``target`` on feature_map [1, h, w, C], with each word's cell
    contributions and channel gradients from the decoder's cell gate and channel shift
    (compiled like ``channel_pass``). A merge decoder, or a caption longer than the model
    writes, takes the full Jacobian (``teacher_pass``) instead: the same numbers."""
    from .ace import cell_contributions
    steps, padded = _padded_caption(captioner, target)
    if steps is None or captioner.decoder.kind == "merge":
        full = teacher_pass(captioner, feature_map, target)
        grads = full.gradients.numpy()
        by_cell = cell_contributions(np.asarray(feature_map)[0], grads)
        return CellPass(full.scores, full.channel_gradients, by_cell.reshape(len(grads), -1))
    if parts is None:
        parts = captioner.cell_parts(feature_map)
    out = compiled_function(captioner, "cells", steps)(parts, padded[:1], padded[1:])
    n = target.n_words
    scores, by_channel, by_cell = (t.numpy()[:n] for t in out)
    return CellPass(scores, by_channel, by_cell)


def scores_and_attention(captioner, feature_map, target: CaptionTarget, with_top: bool = False):
    """Compiled teacher forcing: feature_map [B, h, w, C] -> (s_t [B, T],
    attention weights [B, T, h * w]; zeros for a merge decoder), and with ``with_top``
    each step's most likely words as well (top log-probs [B, T, k], their ids [B, T, k])."""
    out = compiled_function(captioner, "forward")(
        tf.convert_to_tensor(feature_map, tf.float32), target.tokens_in, target.targets)
    out = [t[:, : target.n_words] for t in out]
    return tuple(out) if with_top else tuple(out[:2])


def score_gradients(captioner, inputs, target: CaptionTarget, weights,
                    from_pixels: bool) -> tuple[tf.Tensor, tf.Tensor]:
    """Row i of ``inputs`` (pixels [N, S, S, 3] or feature maps [N, h, w, C]) scores
    S_i = sum_t weights[i, t] * s_t. Returns (s_t for every row [N, T], dS_i/d inputs_i)."""
    n = target.n_words
    weights = np.asarray(weights, np.float32)
    padded = np.zeros((weights.shape[0], n + 1), np.float32)   # the end token weighs 0
    padded[:, :n] = weights
    kind = "pixels" if from_pixels else "features"
    scores, grads = compiled_function(captioner, kind)(
        tf.convert_to_tensor(inputs, tf.float32), target.tokens_in, target.targets,
        tf.constant(padded))
    return scores[:, :n], grads


def _caption_gradient_function(captioner, beam_width: int):
    """Compiled: pixels [1, S, S, 3] -> (feature map, search tokens [1, L], token
    log-probs [1, L], ds/dx [1, S, S, 3], the decoder's cell_parts of the map) for the
    caption the search finds."""
    fns, key = captioner.compiled, ("caption_gradient", int(beam_width))
    if key not in fns:
        search = captioner.search_function(beam_width, from_parts=True)
        vocab, size = captioner.vocab, captioner.input_size

        def caption_and_gradient(pixels):
            with tf.GradientTape(watch_accessed_variables=False) as tape:
                tape.watch(pixels)
                fmap = captioner.backbone(pixels, training=False)
                parts = captioner.decoder.cell_parts(tf.stop_gradient(fmap))
                tokens, logps = search(parts)
                # the caption's words: tokens before the first end (or pad) token
                is_word = tf.logical_and(tokens[0] != vocab.end_id, tokens[0] != vocab.pad_id)
                n = tf.minimum(tf.reduce_sum(tf.math.cumprod(tf.cast(is_word, tf.int32))),
                               captioner.max_length)
                words = tokens[:, :n]
                tokens_in = tf.concat([[[vocab.start_id]], words], 1)
                targets = tf.concat([words, [[vocab.end_id]]], 1)
                scores = captioner.word_logprobs(fmap, tokens_in, targets)
                total = tf.reduce_sum(scores[:, :n])       # s = sum_t s_t, end token not counted
            return fmap, tokens, logps, tape.gradient(total, pixels), parts
        fns[key] = tf.function(caption_and_gradient, input_signature=[
            tf.TensorSpec([1, size, size, 3], tf.float32)])
    return fns[key]


def caption_and_gradient(captioner, pixels, beam_width: int):
    """The model's own caption of one image and its saliency gradient ds/dx in one
    compiled pass: the backbone's forward activations serve both the caption and
    the backward pass, where captioning then differentiating would run the
    backbone forward twice. Returns (feature map, Caption, ds/dx [1, S, S, 3], the
    decoder's cell_parts of the map, which familiarity and the explainers reuse)."""
    fmap, tokens, logps, grad, parts = _caption_gradient_function(captioner, beam_width)(
        tf.convert_to_tensor(pixels, tf.float32))
    return fmap, captioner.caption_from_search(tokens.numpy()[0], logps.numpy()[0]), grad, parts
