"""SavedModel export for TensorFlow Serving: the reloaded signatures caption like
``Captioner.caption`` (exactly on pixels; on encoded bytes whenever decoding is
lossless and no resize is needed)."""
import io
import json

import numpy as np
import pytest
from PIL import Image

from conftest import make_tiny_captioner
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


def _encode(image, fmt="PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format=fmt)
    return buf.getvalue()


def _scenes(n, size=SIZE, first=300):
    return [generate_scene(first + i, image_size=size).image for i in range(n)]


def _assert_same(out, captions):
    assert [c.decode() for c in out["caption"].numpy()] == [c.text for c in captions]
    tokens = out["tokens"].numpy()
    for row, cap in zip(tokens, captions):
        assert row[: len(cap.token_ids)].tolist() == cap.token_ids
        assert (row[len(cap.token_ids):] == 0).all()   # pad id after the words
    np.testing.assert_allclose(out["logprob"].numpy(), [c.logprob for c in captions], atol=1e-4)


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


def test_export_writes_a_servable_saved_model(exported):
    captioner, model, out = exported
    assert (out / "saved_model.pb").is_file() and (out / "variables").is_dir()
    assert {"serving_default", "caption_pixels"} <= set(model.signatures)
    serving = model.signatures["serving_default"]
    (spec,) = serving.structured_input_signature[1].values()
    assert spec.dtype.name == "string" and spec.shape.as_list() == [None]
    assert set(serving.structured_outputs) == {"caption", "tokens", "logprob"}
    card = json.loads((out / "assets.extra" / "model_card.json").read_text())
    assert card["export"]["beam_width"] == 3 and card["export"]["input_size"] == SIZE
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


def test_greedy_export(tmp_path):
    import tensorflow as tf

    from source_code.model.export import export_saved_model

    captioner = _talkative_tiny_captioner()
    export_saved_model(captioner, tmp_path / "greedy", beam_width=1)
    model = tf.saved_model.load(str(tmp_path / "greedy"))
    images = _scenes(3, first=600)
    out = model.signatures["caption_pixels"](pixels=captioner.preprocess(images))
    _assert_same(out, captioner.caption(images, beam_width=1))


def test_export_of_a_missing_bundle_is_a_clear_error(tmp_path, capsys):
    assert main(["export", "--bundle", str(tmp_path / "nope"), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "Traceback" not in err
