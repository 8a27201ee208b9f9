"""Greedy and beam search over a CaptionDecoder, compiled end to end.

The whole search is one ``tf.function``: a ``tf.while_loop`` over the steps
that carries the LSTM state forward and stops as soon as every caption in the
batch has ended (at most the bundle's maximum length), so decoding costs one
graph call and only as many steps as the longest caption needs, not a Keras
``predict()`` per token up to the maximum length.
"""
from __future__ import annotations

import tensorflow as tf

NEG_INF = -1e9


def _banned_mask(vocab: int, banned) -> tf.Tensor:
    """0 for allowed tokens, NEG_INF for tokens a caption never contains (start, pad, unk)."""
    ids = sorted(set(banned))
    if not ids:
        return tf.zeros([vocab])
    return tf.scatter_nd(tf.constant([[i] for i in ids], tf.int32), tf.fill([len(ids)], NEG_INF),
                         [vocab])


def _step_mask(vocab: int, end_id: int, banned, step, last_step: int) -> tf.Tensor:
    """Banned tokens are masked; the last step may only end the caption (captions
    stop at max_len words)."""
    only_end = tf.where(tf.range(vocab) == end_id, 0.0, NEG_INF)
    return tf.where(tf.equal(step, last_step), only_end, _banned_mask(vocab, banned))


def _put(buffer, step, values):
    """buffer [..., L] with column ``step`` replaced by values [...]."""
    column = tf.equal(tf.range(buffer.shape[-1]), step)
    return tf.where(column, values[..., None], buffer)


def _static_shapes(body):
    """Gathers by computed rows lose the static batch size; tf.while_loop needs
    every loop variable to keep the shape it entered with."""
    def wrapped(*loop_vars):
        out = body(*loop_vars)
        return tf.nest.map_structure(lambda new, old: tf.ensure_shape(new, old.shape),
                                     out, loop_vars)
    return wrapped


def greedy_search(decoder, memory, start_id: int, end_id: int, pad_id: int, max_len: int,
                  banned=()):
    """memory: tuple of [B, ...] tensors; tokens in ``banned`` are never chosen
    (their log-probabilities stay those of the model). Returns (tokens [B, L], token_logprobs [B, L]),
    L = max_len + 1 (room for the end token); positions after the end token hold pad_id / 0."""
    batch = tf.shape(memory[0])[0]
    length = max_len + 1

    def body(i, tokens, state, finished, out_tokens, out_logp):
        logits, state, _ = decoder.step(tokens, state, memory)
        logp = tf.nn.log_softmax(logits, axis=-1) + _step_mask(
            decoder.vocab_size, end_id, banned, i, length - 1)
        tokens = tf.argmax(logp, axis=-1, output_type=tf.int32)
        tok_logp = tf.reduce_max(logp, axis=-1)
        tokens = tf.where(finished, pad_id, tokens)
        out_tokens = _put(out_tokens, i, tokens)
        out_logp = _put(out_logp, i, tf.where(finished, 0.0, tok_logp))
        return i + 1, tokens, state, finished | tf.equal(tokens, end_id), out_tokens, out_logp

    def not_done(i, tokens, state, finished, *_):
        return tf.logical_and(i < length, tf.logical_not(tf.reduce_all(finished)))

    loop = (tf.constant(0), tf.fill([batch], start_id), decoder.initial_state(memory),
            tf.zeros([batch], tf.bool), tf.fill([batch, length], pad_id),
            tf.zeros([batch, length], tf.float32))
    *_, out_tokens, out_logp = tf.while_loop(not_done, _static_shapes(body), loop, maximum_iterations=length)
    return out_tokens, out_logp


def beam_search(decoder, memory, start_id: int, end_id: int, pad_id: int, max_len: int,
                width: int, length_penalty: float = 0.0, banned=()):
    """Beam search of the given width for a batch.

    Candidates are ranked by total log-probability while searching; when
    ``length_penalty`` (alpha) > 0 the final choice among the surviving beams
    uses total / length**alpha. The search stops once all surviving beams have
    ended: a finished beam only continues with pad at no cost, so from then on
    nothing can change. Returns (tokens [B, L], token_logprobs [B, L]).
    """
    batch = tf.shape(memory[0])[0]
    vocab = decoder.vocab_size
    length = max_len + 1
    # Tile the memory and state: row b * width + k is beam k of image b.
    memory = tuple(tf.repeat(m, width, axis=0) for m in memory)
    # For a finished beam, the only continuation is pad at no cost.
    pad_only = tf.where(tf.range(vocab) == pad_id, 0.0, NEG_INF)

    def body(i, tokens, state, scores, finished, history, history_logp):
        logits, state, _ = decoder.step(tokens, state, memory)
        mask = _step_mask(vocab, end_id, banned, i, length - 1)
        logp = tf.reshape(tf.nn.log_softmax(logits, -1) + mask, [batch, width, vocab])
        logp = tf.where(finished[..., None], pad_only[None, None], logp)
        total = tf.reshape(scores[..., None] + logp, [batch, width * vocab])
        scores, flat = tf.math.top_k(total, k=width)
        parent, word = flat // vocab, flat % vocab
        word_logp = tf.gather(tf.reshape(logp, [batch, width * vocab]), flat, batch_dims=1)
        history = _put(tf.gather(history, parent, batch_dims=1), i, word)
        history_logp = _put(tf.gather(history_logp, parent, batch_dims=1), i, word_logp)
        finished = tf.gather(finished, parent, batch_dims=1) | tf.equal(word, end_id)
        rows = tf.reshape(parent + tf.range(batch)[:, None] * width, [-1])
        state = tuple(tf.gather(s, rows) for s in state)
        return i + 1, tf.reshape(word, [-1]), state, scores, finished, history, history_logp

    def not_done(i, tokens, state, scores, finished, *_):
        return tf.logical_and(i < length, tf.logical_not(tf.reduce_all(finished)))

    # Only beam 0 is alive at the start, so the first expansion has no duplicates.
    scores = tf.tile(tf.concat([[0.0], tf.fill([width - 1], NEG_INF)], 0)[None], [batch, 1])
    loop = (tf.constant(0), tf.fill([batch * width], start_id), decoder.initial_state(memory),
            scores, tf.zeros([batch, width], tf.bool), tf.fill([batch, width, length], pad_id),
            tf.zeros([batch, width, length], tf.float32))
    _, _, _, scores, _, history, history_logp = tf.while_loop(
        not_done, _static_shapes(body), loop, maximum_iterations=length)
    if length_penalty > 0:
        lengths = tf.reduce_sum(tf.cast(tf.not_equal(history, pad_id), tf.float32), -1)
        ranking = scores / tf.pow(tf.maximum(lengths, 1.0), length_penalty)
    else:
        ranking = scores
    best = tf.argmax(ranking, axis=-1, output_type=tf.int32)
    return (tf.gather(history, best, batch_dims=1),
            tf.gather(history_logp, best, batch_dims=1))
