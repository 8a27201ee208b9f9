"""Explainers against independent computations: the textbook Grad-CAM, tf-keras-vis,
hand-checkable properties of saliency, ACE plumbing and the adversarial check."""
import numpy as np
import pytest
import tensorflow as tf

from source_code.explain import gradcam as G
from source_code.explain import saliency as S
from source_code.explain.target import caption_target, word_scores_from_pixels

CAPTION = "a small red circle above a large blue square"


@pytest.fixture(scope="module")
def tiny():
    from conftest import make_tiny_captioner
    return make_tiny_captioner(seed=21)


@pytest.fixture(scope="module")
def image():
    from source_code.data.synthetic import generate_scene
    return generate_scene(123, image_size=64, n_objects=2).image


@pytest.mark.parametrize("kind", ["attention", "merge"])
def test_per_word_gradcam_equals_textbook_computation(kind, tiny, image):
    """The compiled per-word gradients give the same maps as a GradientTape on the
    backbone's top_activation layer, run word by word through the whole model."""
    if kind != "attention":
        from conftest import make_tiny_captioner
        tiny = make_tiny_captioner(kind, seed=21)
    target = caption_target(tiny, CAPTION)
    pixels = tiny.preprocess(image)
    fmap = tiny.features(pixels)
    ours = G.gradcam(tiny, fmap, target)        # the app's path: the channel pass
    full = G.gradcam(tiny, fmap, target, gradients=G.word_gradients(tiny, fmap, target))
    np.testing.assert_allclose(full["words"], ours["words"], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(full["caption"], ours["caption"], rtol=1e-4, atol=1e-6)
    bb = tiny.backbone
    to_activation = tf.keras.Model(bb.inputs, bb.get_layer("top_activation").output)
    for t in range(target.n_words):
        with tf.GradientTape() as tape:
            acts = to_activation(pixels, training=False)
            tape.watch(acts)
            logits, _ = tiny.decoder((acts, target.tokens_in))
            s_t = tf.nn.log_softmax(logits)[0, t, target.token_ids[t]]
        g = tape.gradient(s_t, acts)
        weights = tf.reduce_mean(g, axis=[1, 2])
        textbook = tf.nn.relu(tf.einsum("bhwc,bc->bhw", acts, weights)).numpy()[0]
        np.testing.assert_allclose(ours["words"][t], textbook, rtol=1e-4, atol=1e-6)
    # the caption's map uses the gradient of s = sum_t s_t
    with tf.GradientTape() as tape:
        acts = to_activation(pixels, training=False)
        tape.watch(acts)
        logits, _ = tiny.decoder((acts, target.tokens_in))
        s = tf.reduce_sum(tf.gather(tf.nn.log_softmax(logits)[0, :target.n_words],
                                    list(target.token_ids), batch_dims=1))
    g = tape.gradient(s, acts)
    textbook = tf.nn.relu(tf.einsum("bhwc,bc->bhw", acts, tf.reduce_mean(g, [1, 2]))).numpy()[0]
    np.testing.assert_allclose(ours["caption"], textbook, rtol=1e-4, atol=1e-6)


def test_word_scores_are_teacher_forced_logprobs(tiny, image):
    target = caption_target(tiny, CAPTION)
    pixels = tiny.preprocess(image)
    scores = word_scores_from_pixels(tiny, pixels, target).numpy()[0]
    logits, _ = tiny.decoder((tiny.features(pixels), target.tokens_in))
    logp = tf.nn.log_softmax(logits).numpy()[0]
    expected = [logp[t, w] for t, w in enumerate(target.token_ids)]
    np.testing.assert_allclose(scores, expected, rtol=1e-5)


@pytest.fixture(scope="module")
def classifier():
    """A small Keras CNN classifier with a named last conv activation."""
    tf.keras.utils.set_random_seed(0)
    inp = tf.keras.Input((32, 32, 3))
    x = tf.keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inp)
    x = tf.keras.layers.Conv2D(16, 3, strides=2, padding="same", name="last_conv")(x)
    x = tf.keras.layers.Activation("relu", name="last_act")(x)
    x = tf.keras.layers.GlobalAveragePooling2D()(x)
    out = tf.keras.layers.Dense(4)(x)
    return tf.keras.Model(inp, out)


def test_gradcam_matches_tf_keras_vis_on_a_classifier(classifier):
    tkv = pytest.importorskip("tf_keras_vis.gradcam")
    x = np.random.default_rng(0).uniform(0, 1, (2, 32, 32, 3)).astype(np.float32)
    cls = 2
    reference = tkv.Gradcam(classifier, clone=True)(
        lambda out: out[:, cls], x, penultimate_layer="last_act",
        seek_penultimate_conv_layer=False, expand_cam=False, normalize_cam=False)
    to_act = tf.keras.Model(classifier.inputs, [classifier.get_layer("last_act").output,
                                                classifier.output])
    with tf.GradientTape() as tape:
        acts, out = to_act(tf.constant(x))
        score = out[:, cls]
    grads = tape.gradient(score, acts)
    ours = G.cam_from(acts, grads)
    np.testing.assert_allclose(ours, reference, rtol=1e-4, atol=1e-6)


def test_vanilla_saliency_matches_tf_keras_vis_on_a_classifier(classifier):
    tkv = pytest.importorskip("tf_keras_vis.saliency")
    x = np.random.default_rng(1).uniform(0, 1, (2, 32, 32, 3)).astype(np.float32)
    reference = tkv.Saliency(classifier, clone=True)(lambda out: out[:, 1], x, normalize_map=False)
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        score = classifier(xt)[:, 1]
    ours = S.vanilla_from_gradients(tape.gradient(score, xt))
    np.testing.assert_allclose(ours, reference, rtol=1e-5, atol=1e-8)


def test_gradcam_plus_plus_only_changes_the_weights(tiny, image):
    target = caption_target(tiny, CAPTION)
    fmap = tiny.features(tiny.preprocess(image))
    grads = G.word_gradients(tiny, fmap, target)
    plain = G.gradcam(tiny, fmap, target, gradients=grads)
    pp = G.gradcam(tiny, fmap, target, plus_plus=True, gradients=grads)
    assert pp["words"].shape == plain["words"].shape
    assert np.all(pp["words"] >= 0)
    np.testing.assert_allclose(pp["scores"], plain["scores"])
    # the word and caption maps are Grad-CAM++'s (cam_from is checked against the paper's
    # closed form in test_explain_maths.py), not Grad-CAM's
    g = grads[1].numpy()
    acts = np.repeat(fmap.numpy(), len(g), 0)
    np.testing.assert_allclose(pp["words"], G.cam_from(acts, g, plus_plus=True), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(pp["caption"], G.cam_from(fmap.numpy(), g.sum(0, keepdims=True),
                                                         plus_plus=True)[0], rtol=1e-5, atol=1e-7)
    assert not np.allclose(pp["words"], plain["words"], rtol=1e-3)
    assert not np.allclose(pp["caption"], plain["caption"], rtol=1e-3)


def test_integrated_gradients_completeness(tiny, image):
    """IG attributions sum (before the absolute value) to s(x) - s(baseline), up to the
    midpoint-rule error."""
    target = caption_target(tiny, CAPTION)
    pixels = tiny.preprocess(image)
    x = tf.convert_to_tensor(pixels)
    steps = 64
    alphas = (tf.range(steps, dtype=tf.float32) + 0.5) / steps
    path = alphas[:, None, None, None] * x
    grads = tf.concat([S._gradients(tiny, path[i:i + 16], target, [None] * 16)
                       for i in range(0, steps, 16)], 0)
    total = float(tf.reduce_sum(x[0] * tf.reduce_mean(grads, 0)))
    s_x = float(tf.reduce_sum(word_scores_from_pixels(tiny, x, target)))
    s_0 = float(tf.reduce_sum(word_scores_from_pixels(tiny, tf.zeros_like(x), target)))
    assert total == pytest.approx(s_x - s_0, rel=0.05, abs=0.02)
    ig = S.integrated_gradients(tiny, pixels, target, steps=8)
    assert ig.shape == (tiny.input_size, tiny.input_size) and np.all(ig >= 0)


def test_smoothgrad_is_deterministic_and_shaped(tiny, image):
    target = caption_target(tiny, CAPTION)
    pixels = tiny.preprocess(image)
    a = S.smoothgrad(tiny, pixels, target, word=2, samples=4)
    b = S.smoothgrad(tiny, pixels, target, word=2, samples=4)
    np.testing.assert_allclose(a, b)
    assert a.shape == (tiny.input_size, tiny.input_size)


def test_fgsm_lowers_the_caption_likelihood_within_epsilon(tiny, image):
    from source_code.explain.adversarial import caption_gradient, perturb
    target = caption_target(tiny, CAPTION)
    pixels = tiny.preprocess(image)
    s0, g = caption_gradient(tiny, pixels, target)
    x = perturb(tiny, pixels, target, "fgsm", epsilon=4.0, gradient=g)
    assert float(tf.reduce_max(tf.abs(x - pixels))) <= 4.0 + 1e-4
    s1, _ = caption_gradient(tiny, x, target)
    assert float(tf.reduce_sum(s1)) < float(tf.reduce_sum(s0))
    xs = perturb(tiny, pixels, target, "pgd", epsilon=4.0, steps=3, salient_fraction=0.1)
    changed = np.any(np.abs((xs - pixels).numpy()[0]) > 1e-3, axis=-1)
    assert changed.mean() <= 0.1 + 0.02
    # PGD's steps descend the caption's log-likelihood too (not only stay in the ball)
    xp = perturb(tiny, pixels, target, "pgd", epsilon=4.0, steps=3)
    s2, _ = caption_gradient(tiny, xp, target)
    assert float(tf.reduce_sum(s2)) < float(tf.reduce_sum(s0))


def test_ace_request_time_plumbing(tiny, image):
    from source_code.explain.ace import coverage, region_embeddings, segment, segment_importance
    labels = segment(image, 15)
    cover = coverage(labels, (4, 4))
    np.testing.assert_allclose(cover.sum(0), 1.0, atol=1e-6)   # every cell fully covered once
    fmap = np.random.default_rng(0).normal(size=(4, 4, 5)).astype(np.float32)
    emb = region_embeddings(fmap, cover)
    assert emb.shape == (len(cover), 5)
    grads = np.random.default_rng(1).normal(size=(3, 4, 4, 5)).astype(np.float32)
    imp = segment_importance(fmap, grads, cover)
    # importances add up to the whole map's gradient x activation
    np.testing.assert_allclose(imp.sum(1), np.einsum("thwc,hwc->t", grads, fmap), rtol=1e-4)


@pytest.mark.parametrize("kind", ["attention", "merge"])
def test_teacher_forcing_loop_for_any_length_equals_the_unrolled_one(kind, image):
    """The decoder teacher-forces in a tf.while_loop when the caption length is only
    known at run time (the explainers' compiled graphs); same logits and attention."""
    from conftest import make_tiny_captioner
    cap = make_tiny_captioner(kind, seed=5)
    fmap = cap.features(cap.preprocess(image))
    tokens = caption_target(cap, CAPTION).tokens_in
    unrolled = cap.decoder((fmap, tokens))
    any_length = tf.function(lambda f, t: cap.decoder((f, t)), input_signature=[
        tf.TensorSpec(fmap.shape, tf.float32), tf.TensorSpec([1, None], tf.int32)])
    for got, want in zip(any_length(fmap, tokens), unrolled):
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5, atol=1e-6)


def test_one_compiled_graph_per_kind_serves_every_caption_length(tiny, image):
    from source_code.explain.target import compiled_function
    pixels = tiny.preprocess(image)
    fmap = tiny.features(pixels)
    maps = {}
    for caption in ("a red circle", CAPTION, "a large blue square left of a small red circle"):
        target = caption_target(tiny, caption)
        maps[caption] = G.gradcam(tiny, fmap, target)["words"]
        S.vanilla(tiny, pixels, target)
        assert maps[caption].shape[0] == target.n_words
    for kind in ("words", "pixels"):
        assert compiled_function(tiny, kind).experimental_get_tracing_count() == 1, kind
    # a word's map does not depend on what the caption says after it (causal decoder)
    np.testing.assert_allclose(maps["a red circle"][:2],
                               G.gradcam(tiny, fmap, caption_target(tiny, "a red square"))["words"][:2],
                               rtol=1e-5, atol=1e-7)


def test_overlay_colours_are_matplotlibs_colormap():
    """The overlay's lookup-table colouring matches calling the matplotlib colormap."""
    from matplotlib import colormaps

    from source_code.explain.maps import normalize, resize_map
    from source_code.explain.render import OVERLAY_ALPHA, overlay
    rng = np.random.default_rng(3)
    frame = rng.integers(0, 256, (48, 40, 3), dtype=np.uint8)
    heatmap = rng.random((6, 5))
    m = np.clip(resize_map(normalize(heatmap), 48, 40), 0, 1)
    a = OVERLAY_ALPHA * (0.35 + 0.65 * m[..., None])
    expected = frame * (1 - a) + colormaps["jet"](m)[..., :3] * 255 * a
    assert np.abs(overlay(frame, heatmap).astype(float) - expected).max() <= 1.0


@pytest.mark.parametrize("beam_width", [1, 3])
def test_caption_and_gradient_in_one_pass_equal_the_separate_calls(shapes_captioner, beam_width):
    """The fused pass (one backbone forward for the caption and its saliency gradient)
    gives the caption the search gives and the gradient the saliency function gives."""
    from source_code.data.synthetic import generate_scene
    from source_code.explain.target import caption_and_gradient
    cap = shapes_captioner
    pixels = cap.preprocess(generate_scene(77, image_size=cap.input_size, n_objects=2).image)
    fmap, caption, grad, parts = caption_and_gradient(cap, pixels, beam_width)
    expected = cap.decode_features(cap.features(pixels), beam_width)[0]
    for got, want in zip(parts, cap.cell_parts(cap.features(pixels)), strict=True):
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5, atol=1e-5)
    assert caption.words and caption.words == expected.words
    np.testing.assert_allclose(caption.logprob, expected.logprob, rtol=1e-5)
    np.testing.assert_allclose(fmap.numpy(), cap.features(pixels).numpy(), rtol=1e-5, atol=1e-6)
    separate = S.pixel_gradients(cap, pixels, caption_target(cap, caption.words))
    np.testing.assert_allclose(grad.numpy(), separate.numpy(), rtol=1e-4,
                               atol=1e-6 * float(np.abs(separate.numpy()).max()))


def test_saliency_batches_shrink_with_the_input_size(tiny, image):
    """Backward passes keep every activation: large inputs go through one at a time,
    with the same maps as any other batching."""
    from types import SimpleNamespace
    assert S.batch_size_for(SimpleNamespace(input_size=160)) == 8
    assert S.batch_size_for(SimpleNamespace(input_size=480)) == 1
    pixels, target = tiny.preprocess(image), caption_target(tiny, CAPTION)
    np.testing.assert_allclose(S.smoothgrad(tiny, pixels, target, samples=4, batch_size=1),
                               S.smoothgrad(tiny, pixels, target, samples=4, batch_size=3),
                               rtol=1e-4, atol=1e-7)


def test_changed_words_is_a_word_level_diff():
    from source_code.explain.adversarial import changed_words
    before = "a small red circle above a square".split()
    assert changed_words(before, before) == []
    assert changed_words(before, "a small blue circle above a square".split()) == [
        {"op": "replace", "index": 2, "before": ["red"], "after": ["blue"]}]
    assert changed_words(before, "a red circle above a square".split()) == [
        {"op": "delete", "index": 1, "before": ["small"], "after": []}]
    assert changed_words(before, "a small red circle above a large square".split()) == [
        {"op": "insert", "index": 6, "before": [], "after": ["large"]}]


@pytest.mark.parametrize("method", ["fgsm", "pgd"])
def test_adversarial_check_reports_an_independent_recaption(tiny, image, method):
    """Every number of the report against a computation of its own: the attack (FGSM by
    hand from a GradientTape gradient, 8 grey levels; PGD through ``perturb``), the new
    captions, the original caption's log-likelihood after, the perturbation maps and the
    images; the salient variant moves only the 10 % most salient pixels."""
    import base64
    import io
    from types import SimpleNamespace

    from PIL import Image

    from source_code.explain.adversarial import adversarial_check, changed_words, perturb
    from source_code.explain.maps import json_grid
    pixels = tiny.preprocess(image)
    [caption] = tiny.caption(image, beam_width=1)
    assert caption.words, "the tiny model writes a caption for this scene"
    target = caption_target(tiny, caption.words)
    explainer = SimpleNamespace(captioner=tiny, beam_width=3)
    frame = np.asarray(image)
    report = adversarial_check(explainer, pixels, caption, frame, method=method)

    x0 = tf.convert_to_tensor(pixels)
    with tf.GradientTape() as tape:
        tape.watch(x0)
        total = tf.reduce_sum(word_scores_from_pixels(tiny, x0, target))
    g = tape.gradient(total, x0)
    sal = np.abs(g.numpy()[0]).max(-1)
    k = int(0.1 * sal.size)
    salient = (sal >= np.sort(sal.ravel())[::-1][k - 1])[None, ..., None]
    if method == "fgsm":
        attacked = {"all_pixels": np.clip(pixels - 8.0 * np.sign(g), 0, 255),
                    "salient_pixels": np.clip(pixels - 8.0 * np.sign(g) * salient, 0, 255)}
    else:
        attacked = {"all_pixels": perturb(tiny, pixels, target, "pgd", 8.0, 5).numpy(),
                    "salient_pixels": perturb(tiny, pixels, target, "pgd", 8.0, 5, 0.1).numpy()}
    assert (report["method"], report["epsilon"], report["original_caption"]) == \
        (method, 8.0, caption.text)
    for name, x in attacked.items():
        got = report[name]
        [new] = tiny.decode_features(tiny.features(x), 3)
        assert (got["new_caption"], got["new_words"]) == (new.text, new.words)
        assert got["changed_words"] == changed_words(caption.words, new.words)
        assert got["caption_changed"] == (new.words != caption.words)
        after = float(tf.reduce_sum(word_scores_from_pixels(tiny, tf.constant(x, tf.float32), target)))
        assert got["original_caption_logprob_after"] == pytest.approx(after, abs=2e-3)
        assert after < float(total)
        delta = np.abs(x[0] - pixels.numpy()[0]).mean(-1)
        np.testing.assert_allclose(got["perturbation"]["heatmap"], json_grid(delta), atol=2e-3)
        assert "overlay" not in got["perturbation"]
        assert got["fraction_of_pixels"] == (1.0 if name == "all_pixels" else 0.1)
        moved = np.abs(x[0] - pixels.numpy()[0]).max(-1) > 1e-3
        assert moved.mean() <= (1.0 if name == "all_pixels" else 0.1 + 0.02)
    png = report["all_pixels"]["perturbed_image"].split(",", 1)[1]
    shown = np.asarray(Image.open(io.BytesIO(base64.b64decode(png))))
    np.testing.assert_array_equal(shown, np.clip(attacked["all_pixels"][0], 0, 255).astype(np.uint8))
    assert "perturbed_image" not in report["salient_pixels"]    # only with overlays
    assert (report["new_caption"], report["changed_words"]) == \
        (report["all_pixels"]["new_caption"], report["all_pixels"]["changed_words"])
    # the caption's gradient passed in gives the same report; overlays add the images
    from source_code.explain.render import resolve
    again = resolve(adversarial_check(explainer, pixels, caption, frame, method=method,
                                      gradient=g, overlay=True))
    assert again["all_pixels"]["new_caption"] == report["all_pixels"]["new_caption"]
    assert again["salient_pixels"]["perturbed_image"].startswith("data:image/png;base64,")
    assert again["all_pixels"]["perturbation"]["overlay"].startswith("data:image/png;base64,")
    smaller = adversarial_check(explainer, pixels, caption, frame, method=method,
                                epsilon=2.0, salient=False)
    assert "salient_pixels" not in smaller and smaller["epsilon"] == 2.0
    if method == "fgsm":   # the default attack, and the epsilon asked for reaches the attack
        assert adversarial_check(explainer, pixels, caption, frame)["method"] == "fgsm"
        x = np.clip(pixels - 2.0 * np.sign(g), 0, 255)
        png = smaller["all_pixels"]["perturbed_image"].split(",", 1)[1]
        np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(base64.b64decode(png)))),
                                      np.clip(x[0], 0, 255).astype(np.uint8))
