"""SavedModel export for TensorFlow Serving: the signatures caption like
``Captioner.caption`` (exactly on pixels; on encoded bytes whenever no resize is
needed), and ``explain_pixels`` adds the app's Grad-CAM maps and word scores,
reloaded in TF2 and, as TensorFlow Serving loads them, in a TF1 session
(``tf.compat.v1.saved_model.loader.load`` and ``saved_model_cli run``)."""
import io
import json
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import REPO, finish_logged, make_tiny_captioner, start_logged, stop_logged
from source_code.cli import main
from source_code.data.synthetic import generate_scene

SIZE = 64


def _talkative_tiny_captioner():
    """The tiny random model, nudged to write long captions instead of ending at once."""
    captioner = make_tiny_captioner(input_size=SIZE)
    layer = captioner.decoder.logits_layer
    bias = layer.bias.numpy()
    bias[captioner.vocab.end_id] -= 2.0
    layer.bias.assign(bias)
    layer.kernel.assign(layer.kernel.numpy() * 8)
    return captioner


def _varied_tiny_captioner():
    """The talkative model with an end token that depends on the image: captions of
    several lengths below the maximum, so the padding of ``explain_pixels`` is tested."""
    captioner = _talkative_tiny_captioner()
    layer, end = captioner.decoder.logits_layer, captioner.vocab.end_id
    bias, kernel = layer.bias.numpy(), layer.kernel.numpy()
    bias[end] += 1.0
    kernel[:, end] *= 6
    layer.bias.assign(bias)
    layer.kernel.assign(kernel)
    return captioner


def _encode(image, fmt="PNG", **options) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format=fmt, **options)
    return buf.getvalue()


def _scenes(n, size=SIZE, first=300):
    return [generate_scene(first + i, image_size=size).image for i in range(n)]


def _assert_same(out, captions):
    """``out`` (signature outputs: tensors or numpy arrays) == the Captioner's captions."""
    assert [c.decode() for c in np.asarray(out["caption"])] == [c.text for c in captions]
    tokens = np.asarray(out["tokens"])
    assert tokens.dtype == np.int32 and tokens.shape[0] == len(captions)
    for row, cap in zip(tokens, captions):
        assert row[: len(cap.token_ids)].tolist() == cap.token_ids
        assert (row[len(cap.token_ids):] == 0).all()   # pad id after the words
    np.testing.assert_allclose(np.asarray(out["logprob"]), [c.logprob for c in captions],
                               atol=1e-4)


# maps: |exported - app| <= MAP_RTOL * the app's map max (+ MAP_FLOOR). The app's pass is
# compiled with XLA (its own kernels for the nonlinearities, its own order of operations):
# its word gradients agree with the plain graph's (the export's) within about 2.4e-4 of
# their largest entry (shapes bundle, measured); the same pass as a plain graph, within 1e-6.
MAP_RTOL = 1e-3
MAP_FLOOR = 1e-12


def _assert_map_close(ours, ref):
    """Grad-CAM maps are not normalised and their scale is the model's (the shipped
    bundles' maps peak near 1e-4 to 1e-2): the tolerance is relative to the map's max."""
    ours, ref = np.asarray(ours), np.asarray(ref)
    assert ours.shape == ref.shape
    bound = MAP_RTOL * float(np.abs(ref).max()) + MAP_FLOOR
    assert np.abs(ours - ref).max() <= bound, (np.abs(ours - ref).max(), bound)


def _app_gradcam(captioner, pixels, caption):
    """The app's ``explain.gradcam.gradcam`` of ``caption``'s ``caption_target`` at
    A = ``captioner.features(pixels)``: what explain_pixels must give."""
    from source_code.explain.gradcam import gradcam
    from source_code.explain.target import caption_target

    return gradcam(captioner, captioner.features(pixels), caption_target(captioner, caption.words))


def _assert_explains(out, captioner, pixels, caption, ref=None):
    """``out`` (explain_pixels outputs for one image, batch 1) == the app: the caption,
    ``explain.gradcam.gradcam`` of its ``caption_target`` at A = ``captioner.features``
    (each word's map and the caption's, unnormalised) and its teacher-forced scores;
    zeros after the caption's end (``ref``: that gradcam, if already computed by
    ``_app_gradcam``). Returns the largest differences seen."""
    _assert_same(out, [caption])
    n, (grid_h, grid_w) = len(caption.words), captioner.grid
    maps, whole = np.asarray(out["gradcam"]), np.asarray(out["gradcam_caption"])
    scores = np.asarray(out["word_logprobs"])
    assert maps.dtype == whole.dtype == scores.dtype == np.float32
    assert maps.shape == (1, captioner.max_length, grid_h, grid_w)
    assert whole.shape == (1, grid_h, grid_w) and scores.shape == (1, captioner.max_length)
    assert not maps[0, n:].any() and not scores[0, n:].any()
    if n == 0:
        assert not whole.any()
        return {}
    if ref is None:
        ref = _app_gradcam(captioner, pixels, caption)
    # Not vacuous: some map is non-zero (a word's map can be all zero after the ReLU,
    # and then ours must be too, within MAP_FLOOR).
    assert max(ref["caption"].max(), ref["words"].max()) > 0
    for ours, theirs in zip(maps[0, :n], ref["words"]):
        _assert_map_close(ours, theirs)
    _assert_map_close(whole[0], ref["caption"])
    np.testing.assert_allclose(scores[0, :n], ref["scores"], atol=1e-5)
    rel = lambda a, b: float(np.abs(a - b).max() / max(np.abs(b).max(), MAP_FLOOR))  # noqa: E731
    return {"words_rel": max(rel(o, t) for o, t in zip(maps[0, :n], ref["words"])),
            "caption_rel": rel(whole[0], ref["caption"]),
            "abs": float(max(np.abs(maps[0, :n] - ref["words"]).max(),
                             np.abs(whole[0] - ref["caption"]).max())),
            "scores_abs": float(np.abs(scores[0, :n] - ref["scores"]).max())}


def _session_run(export_dir, signature, **inputs):
    """Run one signature the way TensorFlow Serving's C++ loader does: the SavedModel
    loaded into a TF1 session in a fresh graph (what ``saved_model_cli run`` does)."""
    return _session_run_each(export_dir, {signature: inputs})[signature]


def _session_run_each(export_dir, feeds):
    """``_session_run`` for several signatures of one SavedModel, loaded once into one TF1
    session: {signature: {output name: array}} for feeds {signature: {input: value}}."""
    import tensorflow as tf

    graph = tf.Graph()
    with graph.as_default(), tf.compat.v1.Session(graph=graph) as sess:
        meta = tf.compat.v1.saved_model.loader.load(sess, ["serve"], str(export_dir))
        results = {}
        for signature, inputs in feeds.items():
            sig = meta.signature_def[signature]
            assert set(sig.inputs) == set(inputs)
            results[signature] = sess.run({k: v.name for k, v in sig.outputs.items()},
                                          {sig.inputs[k].name: v for k, v in inputs.items()})
        return results


CAPTION_OUTPUTS = ("caption", "tokens", "logprob")
EXPLAIN_OUTPUTS = CAPTION_OUTPUTS + ("word_logprobs", "gradcam", "gradcam_caption")


def _start_saved_model_cli(export_dir, signature, work, **arrays):
    """Start ``saved_model_cli run`` as a subprocess (``start_logged``), inputs as .npy
    files (``--inputs``), outputs to ``--outdir``: (process, outdir);
    ``_finish_saved_model_cli`` reads them."""
    work.mkdir(parents=True, exist_ok=True)
    feeds = []
    for name, value in arrays.items():
        np.save(work / f"{name}.npy", value)
        feeds.append(f"{name}={work / name}.npy")
    outdir = work / f"out_{signature}"
    cmd = [sys.executable, "-m", "tensorflow.python.tools.saved_model_cli", "run",
           "--dir", str(export_dir), "--tag_set", "serve", "--signature_def", signature,
           "--inputs", ";".join(feeds), "--outdir", str(outdir), "--overwrite"]
    return start_logged(work / f"log_{signature}", cmd), outdir


def _finish_saved_model_cli(started, outputs=CAPTION_OUTPUTS):
    """Wait for a ``_start_saved_model_cli`` run: {output name: array}."""
    proc, outdir = started
    done = finish_logged(proc, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Result for output key caption" in done.stdout
    return {name: np.load(outdir / f"{name}.npy", allow_pickle=True)
            for name in outputs}


def _saved_model_cli(export_dir, signature, work, outputs=CAPTION_OUTPUTS, **arrays):
    """``saved_model_cli run`` as a subprocess, inputs as .npy files (``--inputs``),
    outputs read back from ``--outdir``: {output name: array}."""
    return _finish_saved_model_cli(_start_saved_model_cli(export_dir, signature, work, **arrays),
                                   outputs)


def _jpeg_at(image, quality=90):
    """(JPEG bytes, the pixels PIL decodes from them): what the app would see."""
    data = _encode(image, "JPEG", quality=quality)
    return data, np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(bundle captioner, reloaded SavedModel, export dir), exported through the CLI."""
    import tensorflow as tf

    from source_code.model.captioner import Captioner

    root = tmp_path_factory.mktemp("export")
    _talkative_tiny_captioner().save(root / "bundle")
    out = root / "captioner" / "1"
    assert main(["export", "--bundle", str(root / "bundle"), "--out", str(out), "--beam", "3"]) == 0
    return Captioner.load(root / "bundle"), tf.saved_model.load(str(out)), out


@pytest.fixture(scope="module")
def explained(tmp_path_factory):
    """(captioner writing captions of several lengths, reloaded SavedModel, export dir)."""
    import tensorflow as tf

    from source_code.model.export import export_saved_model

    captioner = _varied_tiny_captioner()
    out = export_saved_model(captioner, tmp_path_factory.mktemp("explain") / "1", beam_width=3)
    return captioner, tf.saved_model.load(str(out)), out


def test_export_writes_a_servable_saved_model(exported):
    captioner, model, out = exported
    assert (out / "saved_model.pb").is_file() and (out / "variables").is_dir()
    assert {"serving_default", "caption_pixels", "explain_pixels"} <= set(model.signatures)
    serving = model.signatures["serving_default"]
    (spec,) = serving.structured_input_signature[1].values()
    assert spec.dtype.name == "string" and spec.shape.as_list() == [None]
    assert set(serving.structured_outputs) == {"caption", "tokens", "logprob"}
    explain = model.signatures["explain_pixels"]
    (spec,) = explain.structured_input_signature[1].values()
    assert spec.dtype.name == "float32" and spec.shape.as_list() == [1, SIZE, SIZE, 3]
    assert set(explain.structured_outputs) == set(EXPLAIN_OUTPUTS)
    card = json.loads((out / "assets.extra" / "model_card.json").read_text())
    assert card["export"]["beam_width"] == 3 and card["export"]["input_size"] == SIZE
    assert card["export"]["signatures"] == ["serving_default", "caption_pixels", "explain_pixels"]
    assert card["name"] == "tiny-attention"
    assert not list(out.parent.glob(".1.*"))   # no staging folder left behind


def test_pixel_signature_equals_captioner_caption(exported):
    captioner, model, _ = exported
    images = _scenes(5)
    expected = captioner.caption(images, beam_width=3)
    assert any(c.words for c in expected)
    out = model.signatures["caption_pixels"](pixels=captioner.preprocess(images))
    _assert_same(out, expected)


def test_bytes_signature_equals_captioner_caption_on_png(exported):
    import tensorflow as tf

    captioner, model, _ = exported
    images = _scenes(4, first=400)
    out = model.signatures["serving_default"](images=tf.constant([_encode(im) for im in images]))
    _assert_same(out, captioner.caption(images, beam_width=3))


def test_bytes_signature_takes_mixed_sizes_and_formats(exported):
    """Any size is resized to the input size (within one grey level of PIL's
    bilinear); JPEG, grey and RGBA PNG are decoded to RGB."""
    import tensorflow as tf

    from source_code.model.export import decode_and_resize

    captioner, model, _ = exported
    big, small = _scenes(1, size=150, first=500)[0], _scenes(1, size=40, first=501)[0]
    grey = np.asarray(Image.fromarray(small).convert("L"))
    rgba = np.asarray(Image.fromarray(big).convert("RGBA"))
    for image in (big, small, grey, rgba):
        ours = decode_and_resize(tf.constant(_encode(image)), SIZE).numpy()
        assert np.abs(ours - captioner.preprocess([image]).numpy()[0]).max() <= 1.0
    payload = [_encode(big, "JPEG"), _encode(small), _encode(grey), _encode(rgba)]
    out = model.signatures["serving_default"](images=tf.constant(payload))
    assert out["caption"].shape == (4,) and out["tokens"].shape == (4, captioner.max_length)
    assert np.isfinite(out["logprob"].numpy()).all()


def test_jpeg_decodes_like_pil():
    """JPEG bytes decode to exactly PIL's pixels (accurate IDCT), colour and grey."""
    import tensorflow as tf

    from source_code.model.export import decode_and_resize

    image = _scenes(1, first=450)[0]
    for quality in (75, 95):
        for img in (image, np.asarray(Image.fromarray(image).convert("L"))):
            data, decoded = _jpeg_at(img, quality)
            ours = decode_and_resize(tf.constant(data), SIZE).numpy()
            np.testing.assert_array_equal(ours, decoded.astype(np.float32))


def test_session_loader_pixel_signature_equals_captioner_caption(exported):
    """The issue-18 failure: in a TF1 session (TF Serving's loader) the variables were
    left uninitialised. Every variable is restored now, and the caption is exact."""
    captioner, _, out = exported
    images = _scenes(5, first=700)
    expected = captioner.caption(images, beam_width=3)
    assert any(c.words for c in expected)
    got = _session_run(out, "caption_pixels", pixels=captioner.preprocess(images).numpy())
    _assert_same(got, expected)


def test_session_loader_bytes_signature_equals_captioner_caption(exported):
    """serving_default in a TF1 session: PNG and JPEG at the input size give the app's
    caption (the app decodes the same JPEG with PIL); other sizes are resized."""
    captioner, _, out = exported
    pngs = _scenes(2, first=800)
    jpegs = [_jpeg_at(im) for im in _scenes(2, first=810)]
    payload = np.array([_encode(im) for im in pngs] + [data for data, _ in jpegs], dtype=object)
    got = _session_run(out, "serving_default", images=payload)
    _assert_same(got, captioner.caption(pngs + [px for _, px in jpegs], beam_width=3))
    big = _encode(_scenes(1, size=150, first=820)[0], "JPEG")
    got = _session_run(out, "serving_default", images=np.array([big], dtype=object))
    assert got["tokens"].shape == (1, captioner.max_length) and np.isfinite(got["logprob"]).all()


def test_saved_model_cli_runs_the_tiny_export(exported, tmp_path):
    """The README's ``saved_model_cli run`` command on the tiny export: serving_default,
    image bytes passed as an object .npy (the bundled models' test below runs
    explain_pixels through the subprocess; one subprocess here keeps this fast)."""
    captioner, _, out = exported
    images = _scenes(3, first=900)
    got = _saved_model_cli(out, "serving_default", tmp_path,
                           images=np.array([_encode(im) for im in images], dtype=object))
    _assert_same(got, captioner.caption(images, beam_width=3))


def test_explain_signature_equals_app_gradcam(explained):
    """explain_pixels (reloaded in TF2): the caption of Captioner.caption, every word's
    Grad-CAM map and the caption's equal the app's ``gradcam`` (unnormalised), the
    word scores its teacher-forced s_t; captions of several lengths, zeros after each."""
    captioner, model, _ = explained
    images = _scenes(6, first=300)
    captions = captioner.caption(images, beam_width=3)
    lengths = {len(c.words) for c in captions}
    assert len(lengths) > 1 and min(lengths) > 0 and min(lengths) < captioner.max_length
    for image, caption in zip(images, captions):
        pixels = captioner.preprocess([image])
        _assert_explains(model.signatures["explain_pixels"](pixels=pixels), captioner, pixels,
                         caption)


def test_session_loader_explain_signature_equals_app_gradcam(explained):
    """explain_pixels in a TF1 session (TF Serving's loader): the gradients through the
    decoder's while loop run there too, and equal the app's maps."""
    captioner, _, out = explained
    for image in _scenes(2, first=302):
        pixels = captioner.preprocess([image])
        got = _session_run(out, "explain_pixels", pixels=pixels.numpy())
        assert set(got) == set(EXPLAIN_OUTPUTS)
        _assert_explains(got, captioner, pixels, captioner.caption([image], beam_width=3)[0])


def test_explain_of_an_empty_caption_is_zeros():
    """A model that ends at once: empty caption, zero scores and maps (no error)."""
    import tensorflow as tf

    from source_code.model.export import explain_function

    captioner = _talkative_tiny_captioner()
    layer = captioner.decoder.logits_layer
    bias = layer.bias.numpy()
    bias[captioner.vocab.end_id] += 50.0
    layer.bias.assign(bias)
    image = _scenes(1, first=310)[0]
    (caption,) = captioner.caption([image], beam_width=3)
    assert caption.words == []
    explain = tf.function(explain_function(captioner, beam_width=3), input_signature=[
        tf.TensorSpec([1, SIZE, SIZE, 3], tf.float32)])
    pixels = captioner.preprocess([image])
    _assert_explains(explain(pixels), captioner, pixels, caption)


SHIPPED = sorted(p.parent.name for p in (REPO / "models").glob("*/config.json"))


@pytest.mark.slow
@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_bundle_export_runs_in_saved_model_cli(name, tmp_path):
    """Integration (the bundled models): ``export`` through the CLI; then the caption
    signatures give the Captioner's captions in a TF1 session (the loader that
    ``saved_model_cli run`` and TensorFlow Serving use), and ``saved_model_cli run`` as
    a subprocess (a fresh process that imports only TensorFlow) on explain_pixels gives
    the app's caption, Grad-CAM maps and word scores. explain_pixels holds the whole
    caption graph (the beam search, then the gradients through it), so the one
    subprocess loads and runs everything the caption signatures run; the tiny export's
    test runs serving_default through the subprocess, string inputs from .npy included."""
    from source_code.model.captioner import Captioner

    bundle = REPO / "models" / name
    captioner = Captioner.load(bundle)
    out = tmp_path / "captioner" / "1"
    assert main(["export", "--bundle", str(bundle), "--out", str(out)]) == 0
    size = captioner.input_size
    scenes = [generate_scene(31_000_000 + i, image_size=size).image for i in range(2)]
    jpegs = [_jpeg_at(im) for im in scenes]
    pixels = captioner.preprocess([jpegs[0][1]])
    # The subprocess runs while this process computes what it must give.
    cli = _start_saved_model_cli(out, "explain_pixels", tmp_path / "cli", pixels=pixels.numpy())
    try:
        expected = captioner.caption([px for _, px in jpegs], beam_width=3)
        got = _session_run_each(out, {
            "serving_default": {"images": np.array([data for data, _ in jpegs], dtype=object)},
            "caption_pixels": {"pixels": captioner.preprocess([px for _, px in jpegs]).numpy()}})
        _assert_same(got["serving_default"], expected)
        _assert_same(got["caption_pixels"], expected)
        assert expected[0].words
        ref = _app_gradcam(captioner, pixels, expected[0])
    except BaseException:
        stop_logged([cli[0]])
        raise
    got = _finish_saved_model_cli(cli, outputs=EXPLAIN_OUTPUTS)
    _assert_explains(got, captioner, pixels, expected[0], ref=ref)


def test_greedy_export(tmp_path):
    import tensorflow as tf

    from source_code.model.export import export_saved_model

    captioner = _talkative_tiny_captioner()
    export_saved_model(captioner, tmp_path / "greedy", beam_width=1)
    model = tf.saved_model.load(str(tmp_path / "greedy"))
    images = _scenes(3, first=600)
    expected = captioner.caption(images, beam_width=1)
    out = model.signatures["caption_pixels"](pixels=captioner.preprocess(images))
    _assert_same(out, expected)
    _assert_same(_session_run(tmp_path / "greedy", "caption_pixels",
                              pixels=captioner.preprocess(images).numpy()), expected)


def test_export_of_a_missing_bundle_is_a_clear_error(tmp_path, capsys):
    assert main(["export", "--bundle", str(tmp_path / "nope"), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "Traceback" not in err
