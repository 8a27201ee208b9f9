"""Greedy and beam search over a CaptionDecoder, compiled end to end.

The whole search is one ``tf.function`` (the step loop is unrolled over the
bundle's fixed maximum length), so decoding a caption costs one graph call,
not a Keras ``predict()`` per token. The LSTM state is carried forward.
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


def _only(vocab: int, token: int) -> tf.Tensor:
    """The last step may only end the caption: captions stop at max_len words."""
    return tf.where(tf.range(vocab) == token, 0.0, NEG_INF)


def greedy_search(decoder, memory, start_id: int, end_id: int, pad_id: int, max_len: int,
                  banned=()):
    """memory: tuple of [B, ...] tensors; tokens in ``banned`` are never chosen
    (their log-probabilities stay those of the model). Returns (tokens [B, L], token_logprobs [B, L]),
    L = max_len + 1 (room for the end token); positions after the end token hold pad_id / 0."""
    batch = tf.shape(memory[0])[0]
    state = decoder.initial_state(memory)
    tokens = tf.fill([batch], start_id)
    finished = tf.zeros([batch], tf.bool)
    out_tokens, out_logp = [], []
    ban = _banned_mask(decoder.vocab_size, banned)
    only_end = _only(decoder.vocab_size, end_id)
    for i in range(max_len + 1):
        logits, state, _ = decoder.step(tokens, state, memory)
        logp = tf.nn.log_softmax(logits, axis=-1) + (only_end if i == max_len else ban)
        tokens = tf.argmax(logp, axis=-1, output_type=tf.int32)
        tok_logp = tf.reduce_max(logp, axis=-1)
        tokens = tf.where(finished, pad_id, tokens)
        out_tokens.append(tokens)
        out_logp.append(tf.where(finished, 0.0, tok_logp))
        finished = finished | tf.equal(tokens, end_id)
    return tf.stack(out_tokens, 1), tf.stack(out_logp, 1)


def beam_search(decoder, memory, start_id: int, end_id: int, pad_id: int, max_len: int,
                width: int, length_penalty: float = 0.0, banned=()):
    """Beam search of the given width for a batch.

    Candidates are ranked by total log-probability while searching; when
    ``length_penalty`` (alpha) > 0 the final choice among the surviving beams
    uses total / length**alpha. Returns (tokens [B, L], token_logprobs [B, L]).
    """
    batch = tf.shape(memory[0])[0]
    vocab = decoder.vocab_size
    length = max_len + 1
    # Tile the memory and state: row b * width + k is beam k of image b.
    memory = tuple(tf.repeat(m, width, axis=0) for m in memory)
    state = decoder.initial_state(memory)
    tokens = tf.fill([batch * width], start_id)
    # Only beam 0 is alive at the start, so the first expansion has no duplicates.
    scores = tf.tile(tf.concat([[0.0], tf.fill([width - 1], NEG_INF)], 0)[None], [batch, 1])
    finished = tf.zeros([batch, width], tf.bool)
    history = tf.zeros([batch, width, 0], tf.int32)
    history_logp = tf.zeros([batch, width, 0], tf.float32)
    # For a finished beam, the only continuation is pad at no cost.
    pad_only = tf.where(tf.range(vocab) == pad_id, 0.0, NEG_INF)
    ban = _banned_mask(vocab, banned)
    only_end = _only(vocab, end_id)
    for i in range(length):
        logits, state, _ = decoder.step(tokens, state, memory)
        mask = only_end if i == length - 1 else ban
        logp = tf.reshape(tf.nn.log_softmax(logits, -1) + mask, [batch, width, vocab])
        logp = tf.where(finished[..., None], pad_only[None, None], logp)
        total = tf.reshape(scores[..., None] + logp, [batch, width * vocab])
        scores, flat = tf.math.top_k(total, k=width)
        parent, word = flat // vocab, flat % vocab
        word_logp = tf.gather(tf.reshape(logp, [batch, width * vocab]), flat, batch_dims=1)
        history = tf.concat([tf.gather(history, parent, batch_dims=1), word[..., None]], -1)
        history_logp = tf.concat([tf.gather(history_logp, parent, batch_dims=1),
                                  word_logp[..., None]], -1)
        finished = tf.gather(finished, parent, batch_dims=1) | tf.equal(word, end_id)
        rows = tf.reshape(parent + tf.range(batch)[:, None] * width, [-1])
        state = tuple(tf.gather(s, rows) for s in state)
        tokens = tf.reshape(word, [-1])
    if length_penalty > 0:
        lengths = tf.reduce_sum(tf.cast(tf.not_equal(history, pad_id), tf.float32), -1)
        ranking = scores / tf.pow(tf.maximum(lengths, 1.0), length_penalty)
    else:
        ranking = scores
    best = tf.argmax(ranking, axis=-1, output_type=tf.int32)
    return (tf.gather(history, best, batch_dims=1),
            tf.gather(history_logp, best, batch_dims=1))
