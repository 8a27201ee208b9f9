"""The explainers' maths against independent computations, so that a broken formula fails:
Grad-CAM++ against a numpy re-implementation of the paper's closed form, Integrated
Gradients against its completeness axiom, SmoothGrad against a hand computation over
the same noise, PGD against its epsilon-ball, every word's saliency row against its
own GradientTape gradient, and beam search's length penalty on a hand-made decoder.

Gradients are taken with a plain tf.GradientTape through ``word_scores_from_pixels``
(eager, uncompiled), not through the compiled functions the explainers use."""
import numpy as np
import pytest
import tensorflow as tf

from source_code.explain import gradcam as G
from source_code.explain import saliency as S
from source_code.explain.adversarial import perturb
from source_code.explain.target import caption_target, word_scores_from_pixels
from source_code.model.search import beam_search, greedy_search

from conftest import MarkovDecoder

CAPTION = "a small red circle above a large blue square"


@pytest.fixture(scope="module")
def tiny():
    """A tiny random-weight attention captioner whose score depends on the pixels: its
    random backbone's features are ~0.003, which leaves s(x) - s(black) at ~0.001 and
    lets any attribution formula pass a completeness check; the decoder's projection of
    the feature cells is scaled up 300 times (s(x) - s(black) ~ 11)."""
    from conftest import make_tiny_captioner
    captioner = make_tiny_captioner(seed=21)
    layer = captioner.decoder.cell_proj
    layer.kernel.assign(layer.kernel * 300.0)
    return captioner


@pytest.fixture(scope="module")
def pixels(tiny):
    from source_code.data.synthetic import generate_scene
    return tiny.preprocess(generate_scene(123, image_size=64, n_objects=2).image)


@pytest.fixture(scope="module")
def target(tiny):
    return caption_target(tiny, CAPTION)


def tape_gradient(captioner, pixels, target, word=None):
    """d s_word / d pixels (word=None: s = sum_t s_t) for every row of pixels [N, S, S, 3],
    eagerly. Rows are independent (inference mode), so the gradient of the sum over
    rows is each row's own gradient."""
    x = tf.convert_to_tensor(pixels, tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(x)
        scores = word_scores_from_pixels(captioner, x, target)
        chosen = scores if word is None else scores[:, word]
        total = tf.reduce_sum(chosen)
    return tape.gradient(total, x).numpy()


def caption_score(captioner, pixels, target, word=None) -> float:
    scores = word_scores_from_pixels(captioner, tf.convert_to_tensor(pixels, tf.float32), target)
    return float(tf.reduce_sum(scores if word is None else scores[:, word]))


def assert_close_gradients(got, want, rtol=1e-4):
    got, want = np.asarray(got), np.asarray(want)
    np.testing.assert_allclose(got, want, rtol=rtol, atol=1e-5 * float(np.abs(want).max()))


def relative_difference(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


# -- Grad-CAM++ -------------------------------------------------------------------------


def gradcam_pp_reference(activations, gradients):
    """Chattopadhay et al. 2018, eq. 19 with Y = exp(S): for every channel k and cell (i, j),
    alpha_ij^k = g_ij^2 / (2 g_ij^2 + sum_ab A_ab^k g_ij^3) (0 where that is 0/0), and
    w_k = sum_ij alpha_ij^k relu(g_ij^k). Plain loops, float64."""
    A = np.asarray(activations, np.float64)
    g = np.asarray(gradients, np.float64)
    n, h, w, c = A.shape
    weights = np.zeros((n, c))
    for b in range(n):
        for k in range(c):
            sum_a = A[b, :, :, k].sum()
            for i in range(h):
                for j in range(w):
                    gij = g[b, i, j, k]
                    denom = 2 * gij ** 2 + sum_a * gij ** 3
                    alpha = gij ** 2 / denom if denom != 0 else 0.0
                    weights[b, k] += alpha * max(gij, 0.0)
    return weights


def test_gradcam_plus_plus_hand_worked_example():
    """One channel, two cells: A = [1, 3] (sum 4), g = [0.5, -1].
    alpha = [0.25 / (0.5 + 4 * 0.125), 1 / (2 - 4)] = [0.25, -0.5]; w = 0.25 * 0.5 = 0.125
    (Grad-CAM would give mean(g) = -0.25; no alpha would give sum relu(g) = 0.5)."""
    A = tf.constant([[[[1.0], [3.0]]]])
    g = tf.constant([[[[0.5], [-1.0]]]])
    np.testing.assert_allclose(G.gradcam_weights(A, g, plus_plus=True).numpy(), [[0.125]], rtol=1e-6)
    np.testing.assert_allclose(G.gradcam_weights(A, g).numpy(), [[-0.25]], rtol=1e-6)
    np.testing.assert_allclose(G.cam_from(A, g, plus_plus=True), [[[0.125, 0.375]]], rtol=1e-6)
    np.testing.assert_allclose(G.cam_from(A, g), [[[0.0, 0.0]]])


def test_gradcam_plus_plus_weights_match_the_papers_closed_form():
    rng = np.random.default_rng(4)
    A = rng.uniform(0.05, 1.5, (2, 3, 4, 6)).astype(np.float32)
    g = (rng.choice([-1.0, 1.0], A.shape) * rng.uniform(0.05, 0.6, A.shape)).astype(np.float32)
    # alpha = 1 / (2 + sum_ab A * g) where g != 0: keep the data away from its poles
    # (negative g near -2 / sum_ab A become positive; other negative g give alpha < 0)
    g = np.where(np.abs(2 + A.sum((1, 2), keepdims=True) * g) < 0.5, -g, g).astype(np.float32)
    g[0, 1, 2, :] = 0.0            # the 0/0 cells give alpha = 0
    assert np.all(np.abs(2 + A.sum((1, 2), keepdims=True) * g) >= 0.5)
    assert (g < 0).mean() > 0.3
    want = gradcam_pp_reference(A, g)
    got = G.gradcam_weights(tf.constant(A), tf.constant(g), plus_plus=True).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-7)
    # and it is not Grad-CAM's spatial mean, nor alpha-free
    assert relative_difference(got, g.mean((1, 2))) > 0.1
    assert relative_difference(got, np.maximum(g, 0).sum((1, 2))) > 0.1
    # the map: relu(sum_k w_k A_k)
    want_map = np.maximum(np.einsum("nhwc,nc->nhw", A.astype(np.float64), want), 0)
    np.testing.assert_allclose(G.cam_from(tf.constant(A), tf.constant(g), plus_plus=True), want_map,
                               rtol=1e-4, atol=1e-6)


# -- Integrated Gradients -----------------------------------------------------------------


@pytest.mark.parametrize("word,baseline", [(None, "black"), (2, "grey")])
def test_integrated_gradients_completeness_on_the_real_score(tiny, pixels, target, word, baseline):
    """Signed IG attributions sum to s(x) - s(x0) (Sundararajan et al. 2017, completeness),
    up to the midpoint rule's error; for the caption and for one word, from a black and
    from a non-black baseline."""
    x0 = None if baseline == "black" else np.full(pixels.shape, 128.0, np.float32)
    attributions = S.integrated_gradients_attributions(tiny, pixels, target, word=word, steps=64,
                                                       baseline=x0)
    assert attributions.shape == (tiny.input_size, tiny.input_size, 3)
    s_x = caption_score(tiny, pixels, target, word)
    s_0 = caption_score(tiny, np.zeros(pixels.shape, np.float32) if x0 is None else x0, target, word)
    assert abs(s_x - s_0) > 0.05, "the test needs a score difference to account for"
    assert float(attributions.sum()) == pytest.approx(s_x - s_0, rel=0.05, abs=0.01)
    # the public map is |sum over colour channels| of those attributions
    np.testing.assert_allclose(
        S.integrated_gradients(tiny, pixels, target, word=word, steps=64, baseline=x0),
        np.abs(attributions.sum(-1)), rtol=1e-5, atol=1e-7)


def test_integrated_gradients_map_equals_an_eager_computation(tiny, pixels, target):
    """IG map = |sum_c (x - x0) * mean_k ds/dx(x0 + (k + 1/2)/m (x - x0))|, gradients by tape."""
    steps, x = 8, np.asarray(pixels, np.float32)
    x0 = np.full(x.shape, 60.0, np.float32)
    path = np.concatenate([x0 + (k + 0.5) / steps * (x - x0) for k in range(steps)], 0)
    grads = tape_gradient(tiny, path, target)
    want = np.abs(((x - x0)[0] * grads.mean(0)).sum(-1))
    got = S.integrated_gradients(tiny, pixels, target, steps=steps, baseline=x0)
    assert_close_gradients(got, want, rtol=1e-3)


# -- SmoothGrad ---------------------------------------------------------------------------


def test_smoothgrad_is_mean_abs_gradient_over_the_seeded_noise(tiny, pixels, target):
    """SmoothGrad = mean over noisy copies x + N(0, (noise * 255)^2) of max_c |ds/dx|,
    recomputed by hand over the same seeded noise; it is not the vanilla map."""
    samples, noise, seed, word = 4, 0.15, 3, 1
    x = tf.convert_to_tensor(pixels, tf.float32)
    eps = tf.random.Generator.from_seed(seed).normal([samples] + list(x.shape[1:]))
    assert 0.8 < float(tf.math.reduce_std(eps)) < 1.2
    noisy = x + eps * (noise * 255.0)
    grads = tape_gradient(tiny, noisy, target, word)
    want = np.abs(grads).max(-1).mean(0)
    got = S.smoothgrad(tiny, pixels, target, word=word, samples=samples, noise=noise, seed=seed)
    assert_close_gradients(got, want, rtol=1e-3)
    vanilla = S.vanilla(tiny, pixels, target, words=(word,))[0]
    assert relative_difference(got, vanilla) > 0.05
    np.testing.assert_allclose(vanilla, np.abs(tape_gradient(tiny, pixels, target, word)[0]).max(-1),
                               rtol=1e-3, atol=1e-5 * float(vanilla.max()))


# -- adversarial --------------------------------------------------------------------------


@pytest.mark.parametrize("epsilon,steps", [(4.0, 5), (6.0, 3)])
def test_pgd_stays_in_the_epsilon_ball(tiny, pixels, target, epsilon, steps):
    """PGD's steps of 2.5 eps / steps add up to more than eps: only the projection keeps
    |x - x0| <= eps. It also reaches the ball's surface and stays in [0, 255]."""
    x0 = np.asarray(pixels, np.float32)
    x = perturb(tiny, pixels, target, "pgd", epsilon=epsilon, steps=steps).numpy()
    distance = np.abs(x - x0)
    assert distance.max() <= epsilon + 1e-3
    assert distance.max() >= epsilon - 1e-3
    assert x.min() >= 0 and x.max() <= 255


def test_pgd_equals_the_textbook_loop(tiny, pixels, target):
    """Madry et al.'s loop, written out with GradientTape: steps of 2.5 eps / steps
    against sign(ds/dx), each projected onto the eps-ball and the pixel range."""
    epsilon, steps = 6.0, 3
    x0 = tf.convert_to_tensor(pixels, tf.float32)
    x = x0
    for _ in range(steps):
        g = tape_gradient(tiny, x, target)
        x = x - (2.5 * epsilon / steps) * np.sign(g)
        x = tf.clip_by_value(tf.clip_by_value(x, x0 - epsilon, x0 + epsilon), 0.0, 255.0)
    got = perturb(tiny, pixels, target, "pgd", epsilon=epsilon, steps=steps).numpy()
    np.testing.assert_allclose(got, x.numpy(), atol=1e-3)


@pytest.mark.parametrize("method", ["fgsm", "pgd"])
def test_attacks_keep_the_ends_of_the_pixel_range(tiny, target, method):
    """A black frame pushed darker stays 0 and a white one pushed lighter stays 255
    (clipped to [0, 255], not to a range one grey level off)."""
    for value, push in ((0.0, 1.0), (255.0, -1.0)):      # x - eps * sign(g): g = push
        frame = tf.fill([1, tiny.input_size, tiny.input_size, 3], value)
        x = perturb(tiny, frame, target, method, epsilon=4.0, steps=2,
                    gradient=tf.fill(frame.shape, push)).numpy()
        if method == "fgsm":
            assert np.all(x == value)
        else:   # after the given first step PGD follows the model's own gradients
            assert x.min() >= 0 and x.max() <= 255
            assert (x == value).mean() > 0.3, "the first step pinned pixels at the range's end"


def test_attack_defaults_and_unknown_attacks(tiny, pixels, target):
    g = tf.convert_to_tensor(tape_gradient(tiny, pixels, target))
    np.testing.assert_array_equal(perturb(tiny, pixels, target, gradient=g).numpy(),
                                  perturb(tiny, pixels, target, "fgsm", 8.0, gradient=g).numpy())
    with pytest.raises(ValueError, match="unknown attack 'cw': use fgsm or pgd"):
        perturb(tiny, pixels, target, "cw", gradient=g)


# -- per-word saliency --------------------------------------------------------------------


def test_every_words_saliency_row_is_that_words_own_gradient(tiny, pixels, target):
    """pixel_gradients row i = d s_{words[i]} / dx (None: the caption's s = sum_t s_t),
    each checked against its own eager gradient; a word's row is not the caption's."""
    words = (0, 3, None, 7)
    rows = S.pixel_gradients(tiny, pixels, target, words=words).numpy()
    assert rows.shape == (len(words), tiny.input_size, tiny.input_size, 3)
    for row, word in zip(rows, words):
        assert_close_gradients(row, tape_gradient(tiny, pixels, target, word)[0])
    caption_row = rows[2]
    for i in (0, 1, 3):
        assert relative_difference(rows[i], caption_row) > 0.05, words[i]
    # the caption's gradient is the sum of its words' gradients
    every_word = S.pixel_gradients(tiny, pixels, target, words=range(target.n_words)).numpy()
    assert_close_gradients(every_word.sum(0), caption_row, rtol=1e-3)
    np.testing.assert_allclose(S.vanilla(tiny, pixels, target, words=(3,))[0],
                               np.abs(rows[1]).max(-1), rtol=1e-4, atol=1e-9)


# -- beam search length penalty -----------------------------------------------------------


PAD, START, END, A, B, C = 0, 1, 2, 3, 4, 5


# start -> A 0.45 | B 0.55; B -> end 0.9; A -> C -> end surely.
# "B <end>" has the higher total log-probability, log 0.495 > log 0.45, but over its
# length (2 tokens with the end, 1 word) it scores lower than "A C <end>" (3 tokens, 2 words).
LP_TABLE = [
    [1 / 6] * 6,                              # pad (unused)
    [0.0, 0.0, 0.0, 0.45, 0.55, 0.0],         # start
    [1 / 6] * 6,                              # end (unused)
    [0.0, 0.0, 0.0, 0.0, 0.0, 1.0],           # A
    [0.0, 0.0, 0.9, 0.05, 0.0, 0.05],         # B
    [0.0, 0.0, 1.0, 0.0, 0.0, 0.0],           # C
]


@pytest.mark.parametrize("alpha", [None, 0.0, 0.5, 1.0])
def test_beam_length_penalty_changes_the_winner(alpha):
    dec = MarkovDecoder(LP_TABLE)
    memory = (tf.zeros([1, 1]),)
    penalty = {} if alpha is None else {"length_penalty": alpha}   # None: the default, 0
    tokens, logps = beam_search(dec, memory, START, END, PAD, max_len=4, width=2, **penalty)
    alpha = alpha or 0.0
    short, long_ = [B, END], [A, C, END]
    totals = {tuple(short): np.log(0.55 * 0.9), tuple(long_): np.log(0.45)}
    # the ranking beam_search documents: total / length ** alpha, the length counting the end token
    expected = max(totals, key=lambda c: totals[c] / len(c) ** alpha)
    assert expected == (tuple(short) if alpha == 0 else tuple(long_))   # the case is what it claims
    got = tuple(tokens.numpy()[0, :len(expected)])
    assert got == expected
    assert float(tf.reduce_sum(logps)) == pytest.approx(totals[expected], abs=1e-5)


def test_beam_length_penalty_counts_an_empty_caption_as_one_token():
    """start -> end 0.6 | A 0.4; A -> end. Over length ** 1 (the end token counted),
    "A <end>" (log 0.4 / 2) beats "<end>" (log 0.6 / 1); a length floor above one
    token would flip it."""
    table = [[1 / 6] * 6, [0.0, 0.0, 0.6, 0.4, 0.0, 0.0], [1 / 6] * 6,
             [0.0, 0.0, 1.0, 0.0, 0.0, 0.0], [1 / 6] * 6, [1 / 6] * 6]
    assert np.log(0.4) / 2 > np.log(0.6) / 1 and np.log(0.4) / 2 < np.log(0.6) / 2
    tokens, _ = beam_search(MarkovDecoder(table), (tf.zeros([1, 1]),), START, END, PAD,
                            max_len=3, width=2, length_penalty=1.0)
    assert tuple(tokens.numpy()[0, :2]) == (A, END)


def test_searches_never_choose_a_banned_token():
    """start -> B (banned, 0.7) | A 0.3; A -> end. Both searches skip B and say "A"."""
    table = [[1 / 6] * 6, [0.0, 0.0, 0.0, 0.3, 0.7, 0.0], [1 / 6] * 6,
             [0.0, 0.0, 1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0, 0.0, 0.0], [1 / 6] * 6]
    memory = (tf.zeros([1, 1]),)
    for search in (lambda **k: beam_search(MarkovDecoder(table), memory, START, END, PAD,
                                           max_len=3, width=2, **k),
                   lambda **k: greedy_search(MarkovDecoder(table), memory, START, END, PAD,
                                             max_len=3, **k)):
        assert search()[0].numpy()[0, 0] == B                    # the likelier, when allowed
        tokens = search(banned=(B, START, PAD))[0].numpy()[0]
        assert B not in tokens[:2].tolist() and tuple(tokens[:2]) == (A, END)


class PerImageMarkovDecoder(MarkovDecoder):
    """Image b of the batch (memory[0][b, 0] = index of its table) follows its own table."""

    def __init__(self, tables):
        super().__init__(tables[0])
        self.logp = tf.math.log(tf.constant(tables, tf.float32) + 1e-12)   # [images, V, V]

    def step(self, tokens, state, memory):
        image = tf.cast(memory[0][:, 0], tf.int32)
        logits = tf.gather_nd(self.logp, tf.stack([image, tokens], -1))
        return logits, state, tf.zeros([tf.shape(tokens)[0], 1])


# image 1: start -> A surely, A -> C, C -> end: "A C <end>"
LONG_TABLE = [row[:] for row in LP_TABLE]
LONG_TABLE[START] = [0.0, 0.0, 0.0, 1.0, 0.0, 0.0]


@pytest.mark.parametrize("width", [None, 1, 2])
def test_a_finished_caption_costs_nothing_while_the_batch_goes_on(width):
    """In a batch, an image whose caption has ended gets pad at log-probability 0 while
    the others go on: its reported log-probabilities still sum to its caption's."""
    from source_code.model.search import greedy_search
    dec = PerImageMarkovDecoder([LP_TABLE, LONG_TABLE])
    memory = (tf.constant([[0.0], [1.0]]),)
    if width is None:
        tokens, logps = greedy_search(dec, memory, START, END, PAD, max_len=4)
    else:
        tokens, logps = beam_search(dec, memory, START, END, PAD, max_len=4, width=width)
    tokens, logps = tokens.numpy(), logps.numpy()
    assert tokens[0].tolist() == [B, END, PAD, PAD, PAD]
    assert tokens[1].tolist() == [A, C, END, PAD, PAD]
    np.testing.assert_allclose(logps[0], [np.log(0.55), np.log(0.9), 0, 0, 0], atol=1e-5)
    np.testing.assert_allclose(logps[1], [0, 0, 0, 0, 0], atol=1e-5)


def _captioner_reading_imagenet(kind: str, head: int, seed: int, prior=None, rng=None):
    """A tiny captioner whose decoder reads an ImageNet head of ``head`` classes (0: none)
    and, with ``prior`` (a pooling), a noun prior in which each class names a random token."""
    import keras
    from source_code.model.backbone import BackboneSpec
    from source_code.model.captioner import Captioner
    from source_code.text.vocabulary import Vocabulary
    from conftest import SYNTH_WORDS
    keras.utils.set_random_seed(seed)
    captioner = Captioner.build(Vocabulary(["<pad>", "<start>", "<end>", "<unk>"] + SYNTH_WORDS),
                                BackboneSpec("slim", 64, None, 0.25, 0.25, 1),
                                {"kind": kind, "units": 32, "embed_dim": 16, "imagenet_head": head},
                                10)
    if prior:
        tokens = np.eye(len(captioner.vocab), dtype=np.float32)[rng.integers(4, 12, head)]
        captioner.decoder.set_noun_prior(tokens, 2.0, prior)
    return captioner


@pytest.mark.parametrize("kind,head,prior", [("attention", 0, None), ("attention", 7, None),
                                             ("attention", 7, "frame"),
                                             ("attention", 7, "attention"), ("merge", 0, None)])
def test_channel_shift_is_a_shift_of_every_cell_and_its_gradient_their_sum(kind, head, prior):
    """The decoder's channel shift encodes as feature_map + shift on every cell, and the
    channel pass's gradient of each word is the sum over cells of its full ds_t/dA
    (tape through the decoder), with or without the ImageNet head and its noun prior
    (on the frame's evidence or the attended cells')."""
    from source_code.explain.target import channel_pass
    rng = np.random.default_rng(0)
    captioner = _captioner_reading_imagenet(kind, head, 5, prior, rng)
    fmap = tf.constant(rng.random((1,) + tuple(captioner.backbone.output_shape[1:])), tf.float32)
    shift = tf.constant(rng.normal(size=(1, fmap.shape[-1])), tf.float32)
    shifted = captioner.decoder.encode(fmap + shift[:, None, None])
    for got, want in zip(captioner.decoder.encode(fmap, channel_shift=shift), shifted):
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-4, atol=1e-5)
    target = caption_target(captioner, CAPTION)
    sums = channel_pass(captioner, fmap, target).channel_gradients
    for t in range(target.n_words):
        with tf.GradientTape() as tape:
            tape.watch(fmap)
            logits, _ = captioner.decoder((fmap, target.tokens_in))
            s_t = tf.nn.log_softmax(logits)[0, t, target.token_ids[t]]
        want = tf.reduce_sum(tape.gradient(s_t, fmap), axis=[0, 1, 2]).numpy()
        np.testing.assert_allclose(sums[t], want, rtol=1e-3, atol=1e-6 * np.abs(want).max())


@pytest.mark.parametrize("head", [0, 7])
def test_training_grad_cam_loss_is_textbook_grad_cam_and_so_is_its_gradient(head):
    """The Grad-CAM grounding loss takes its channel weights through the channel shift;
    its maps, and the decoder weights' gradient of a loss on them (the second derivative
    training follows), equal those of textbook Grad-CAM (cell mean of ds/dA by tape)."""
    from source_code.training.train import teacher_forcing_with_word_cam
    captioner = _captioner_reading_imagenet("attention", head, 6)
    decoder, rng = captioner.decoder, np.random.default_rng(1)
    fmap = tf.constant(rng.random((3,) + tuple(captioner.backbone.output_shape[1:])), tf.float32)
    target = caption_target(captioner, CAPTION)
    tin = tf.tile(target.tokens_in, [3, 1])
    tgt = tf.tile(target.targets, [3, 1])
    pick = tf.one_hot([0, 2, 1], tin.shape[1])                 # a different word per caption
    inside = tf.constant(rng.random((3,) + tuple(fmap.shape[1:3])) > 0.5, tf.float32)

    def textbook():
        return teacher_forcing_with_word_cam(decoder, fmap, tin, tgt, pick, False, textbook=True)[2]

    def shifted():
        return teacher_forcing_with_word_cam(decoder, fmap, tin, tgt, pick, False)[2]

    grads = []
    for cam_of in (textbook, shifted):
        with tf.GradientTape() as outer:
            cam = cam_of()
            loss = -tf.reduce_sum(tf.math.log(tf.reduce_sum(cam * inside, [1, 2])
                                              / (tf.reduce_sum(cam, [1, 2]) + 1e-6) + 1e-3))
        grads.append((cam.numpy(), outer.gradient(loss, decoder.trainable_variables)))
    (cam_a, grad_a), (cam_b, grad_b) = grads
    assert cam_a.max() > 0
    np.testing.assert_allclose(cam_b, cam_a, rtol=1e-4, atol=1e-6 * cam_a.max())
    assert [a is None for a in grad_a] == [b is None for b in grad_b]
    pairs = [(tf.convert_to_tensor(a).numpy(), tf.convert_to_tensor(b).numpy())
             for a, b in zip(grad_a, grad_b) if a is not None]
    scale = max(np.abs(a).max() for a, _ in pairs)    # roundoff is relative to the largest
    for a, b in pairs:
        np.testing.assert_allclose(b, a, rtol=1e-3, atol=1e-5 * scale)
    assert sum(np.abs(a).max() > 1e-3 * scale for a, _ in pairs) >= 5


@pytest.mark.parametrize("kind,head,prior", [("attention", 0, None), ("attention", 7, "frame"),
                                             ("attention", 7, "attention"), ("merge", 0, None)])
def test_cell_gate_scales_each_cell_and_its_gradient_is_grad_times_activation(kind, head, prior):
    """The decoder's cell gate encodes as the feature map with every cell scaled (the
    ImageNet head's bias, made non-zero here, included), and the cell pass's numbers are
    those of the full Jacobian: each word's sum_c ds_t/dA A per cell, and sum over cells of
    ds_t/dA. A merge decoder takes the full Jacobian itself."""
    from source_code.explain.target import cell_pass
    rng = np.random.default_rng(1)
    captioner = _captioner_reading_imagenet(kind, head, 6, prior, rng)
    fmap = tf.constant(rng.random((1,) + tuple(captioner.backbone.output_shape[1:])), tf.float32)
    decoder = captioner.decoder
    if head:
        decoder.cell_parts(fmap)         # builds the head
        decoder.imagenet_head.bias.assign(rng.normal(size=head).astype(np.float32))
    target = caption_target(captioner, CAPTION)
    if kind == "merge":
        with pytest.raises(ValueError, match="no cell to gate"):
            decoder.gate_cells(decoder.cell_parts(fmap), tf.ones([1, 4]))
    else:
        h, w = fmap.shape[1:3]
        gate = tf.constant(rng.uniform(0.2, 2.0, size=(1, h * w)), tf.float32)
        gated = decoder.memory_from(decoder.gate_cells(decoder.cell_parts(fmap), gate))
        scaled = decoder.encode(fmap * tf.reshape(gate, [1, h, w, 1]))
        for got, want in zip(gated, scaled):
            np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-4, atol=1e-5)
    found = cell_pass(captioner, fmap, target)
    for t in range(target.n_words):
        with tf.GradientTape() as tape:
            tape.watch(fmap)
            logits, _ = decoder((fmap, target.tokens_in))
            s_t = tf.nn.log_softmax(logits)[0, t, target.token_ids[t]]
        grad = tape.gradient(s_t, fmap).numpy()[0]
        assert found.scores[t] == pytest.approx(float(s_t), abs=1e-5)
        want = (grad * fmap.numpy()[0]).sum(-1).ravel()
        np.testing.assert_allclose(found.cell_contributions[t], want, rtol=1e-3,
                                   atol=1e-5 * np.abs(want).max())
        np.testing.assert_allclose(found.channel_gradients[t], grad.sum((0, 1)), rtol=1e-3,
                                   atol=1e-5 * np.abs(grad.sum((0, 1))).max())


@pytest.mark.parametrize("head", [0, 7])
def test_bfloat16_cell_products_stay_close_to_float32_and_come_back_as_float32(head):
    """Training may take the decoder's per-cell products in bfloat16 (cell_dtype): every
    part stays float32 and within bfloat16's rounding of the float32 parts, and does
    differ from them (the cast really happens); with cell_dtype None they are exact."""
    rng = np.random.default_rng(2)
    captioner = _captioner_reading_imagenet("attention", head, 7)
    fmap = tf.constant(rng.random((2,) + tuple(captioner.backbone.output_shape[1:])) * 3,
                       tf.float32)
    decoder = captioner.decoder
    exact = decoder.cell_parts(fmap)
    decoder.cell_dtype = tf.bfloat16
    rounded = decoder.cell_parts(fmap)
    decoder.cell_dtype = None
    assert len(rounded) == len(exact) == (1 if not head else 5)
    for got, want in zip(rounded, exact):
        assert got.dtype == tf.float32
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=0.02,
                                   atol=0.02 * np.abs(want.numpy()).max())
    assert not np.array_equal(rounded[0].numpy(), exact[0].numpy())
    for got, want in zip(decoder.cell_parts(fmap), exact):
        np.testing.assert_array_equal(got.numpy(), want.numpy())


def test_cell_precision_follows_the_hardware_unless_told(monkeypatch):
    """auto: bfloat16 only where the machine multiplies it natively; named: as named;
    anything else: a clear error."""
    import source_code.training.train as train_module
    for fast, want in ((True, tf.bfloat16), (False, None)):
        monkeypatch.setattr(train_module, "fast_bfloat16", lambda fast=fast: fast)
        assert train_module.cell_dtype_for("auto") == want
        assert train_module.cell_dtype_for("bfloat16") == tf.bfloat16
        assert train_module.cell_dtype_for("float32") is None
    with pytest.raises(ValueError, match="cell precision must be one of"):
        train_module.cell_dtype_for("float16")
