"""Greedy and beam search: beam width 1 equals greedy, beam beats greedy where it should,
and batches agree with single images."""
import numpy as np
import pytest
import tensorflow as tf

from source_code.model.search import beam_search, greedy_search

from conftest import MarkovDecoder

PAD, START, END, A, B = 0, 1, 2, 3, 4


# From start: A 0.6, B 0.4. After A everything is uncertain; after B the end is almost sure.
TABLE = [
    [0.2, 0.2, 0.2, 0.2, 0.2],        # pad (unused)
    [0.0, 0.0, 0.0, 0.6, 0.4],        # start
    [0.2, 0.2, 0.2, 0.2, 0.2],        # end (unused)
    [0.0, 0.0, 0.34, 0.33, 0.33],     # A
    [0.0, 0.0, 0.95, 0.025, 0.025],   # B
]


def _total(tokens, logps):
    return float(tf.reduce_sum(logps))


def test_beam_finds_higher_likelihood_than_greedy():
    dec = MarkovDecoder(TABLE)
    memory = (tf.zeros([1, 1]),)
    g_tok, g_lp = greedy_search(dec, memory, START, END, PAD, max_len=4)
    b_tok, b_lp = beam_search(dec, memory, START, END, PAD, max_len=4, width=3)
    assert g_tok.numpy()[0, :2].tolist() == [A, END]
    assert b_tok.numpy()[0, :2].tolist() == [B, END]
    assert float(tf.reduce_sum(b_lp)) > float(tf.reduce_sum(g_lp))
    assert float(tf.reduce_sum(b_lp)) == pytest.approx(np.log(0.4 * 0.95), abs=1e-5)
    assert float(tf.reduce_sum(g_lp)) == pytest.approx(np.log(0.6 * 0.34), abs=1e-5)


def test_beam_width_one_equals_greedy_on_a_trained_shape_model():
    from conftest import make_tiny_captioner

    c = make_tiny_captioner(seed=3)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (70, 90, 3), dtype=np.uint8) for _ in range(4)]
    feats = c.features(c.preprocess(images))
    v = c.vocab
    mem = c.decoder.encode(feats)
    g_tok, g_lp = greedy_search(c.decoder, mem, v.start_id, v.end_id, v.pad_id, c.max_length)
    b_tok, b_lp = beam_search(c.decoder, mem, v.start_id, v.end_id, v.pad_id, c.max_length, 1)
    np.testing.assert_array_equal(g_tok.numpy(), b_tok.numpy())
    np.testing.assert_allclose(g_lp.numpy(), b_lp.numpy(), atol=1e-5)


@pytest.mark.parametrize("kind", ["merge", "attention"])
@pytest.mark.parametrize("width", [1, 3])
def test_batch_and_single_image_agree(kind, width):
    from conftest import make_tiny_captioner

    c = make_tiny_captioner(kind, seed=5)
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 255, (64, 64, 3), dtype=np.uint8) for _ in range(3)]
    batch = c.caption(images, beam_width=width)
    for img, cap in zip(images, batch):
        single = c.caption(img, beam_width=width)[0]
        assert single.words == cap.words
        assert single.logprob == pytest.approx(cap.logprob, abs=1e-4)


def test_beam_logprob_matches_teacher_forcing():
    """The log-probability beam search reports is the model's own for that caption."""
    from conftest import make_tiny_captioner

    c = make_tiny_captioner(seed=7)
    img = np.random.default_rng(2).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    feats = c.features(c.preprocess(img))
    cap = c.decode_features(feats, beam_width=3)[0]
    assert cap.words, "the tiny model should write something"
    tin, tgt = c.teacher_forcing_inputs(cap.token_ids)
    forced = c.word_logprobs(feats, tin, tgt).numpy()[0]
    n = len(cap.token_logprobs)   # the words, then the end token when one was written
    np.testing.assert_allclose(forced[:n], cap.token_logprobs, atol=1e-4)


def test_captions_never_contain_special_tokens():
    from conftest import make_tiny_captioner

    c = make_tiny_captioner(seed=11)
    rng = np.random.default_rng(3)
    for cap in c.caption([rng.integers(0, 255, (64, 64, 3), dtype=np.uint8) for _ in range(4)], 3):
        assert not {"<start>", "<pad>", "<unk>", "<end>"} & set(cap.words)
        assert len(cap.words) <= c.max_length
