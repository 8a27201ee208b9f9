"""Export a bundle as a TensorFlow SavedModel, for TensorFlow Serving.

``python -m source_code export --bundle DIR --out EXPORT_DIR [--beam 3]``

The SavedModel holds the backbone, the decoder, the vocabulary and the search
(beam width fixed at export time), so a server needs nothing from this package.
Two signatures:

``serving_default``
    ``images``: tf.string [B], encoded JPEG / PNG / BMP / GIF (first frame)
    bytes. Each image is decoded to RGB (alpha dropped, grey replicated, as
    PIL's ``convert("RGB")``) and the whole frame is resized to the bundle's
    input size, bilinear with antialiasing, rounded to 0-255 like
    ``Captioner.preprocess`` (PIL). Images already at the input size are passed
    through unchanged; for other sizes TF's and PIL's resamplers can differ by
    one grey level on a few pixels, which can rarely change a word.
    EXIF orientation is not applied: send upright images.
``caption_pixels``
    ``pixels``: float32 [B, S, S, 3] raw 0-255 pixels at the input size S
    (what ``Captioner.preprocess`` returns): the exact ``Captioner.caption``.

Both return ``caption`` (tf.string [B], the words joined by spaces), ``tokens``
(int32 [B, max_length], the word ids, pad id after the caption) and
``logprob`` (float32 [B], total log-probability, end token included).

The bundle's model card is copied to ``EXPORT_DIR/assets.extra/model_card.json``
(TensorFlow Serving ignores that folder). Serving wants a version folder:
export to ``models/captioner/1`` and point the server at ``models/captioner``.
"""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import tensorflow as tf

SERVING_SIGNATURE = "serving_default"
PIXELS_SIGNATURE = "caption_pixels"
CARD_FILE = Path("assets.extra") / "model_card.json"


def decode_and_resize(encoded, size: int) -> tf.Tensor:
    """One encoded image (scalar tf.string) -> float32 [size, size, 3], 0-255, the
    way ``Captioner.preprocess`` prepares an image (whole frame, bilinear, uint8)."""
    image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
    image.set_shape([None, None, 3])
    pixels = tf.cast(image, tf.float32)
    same = tf.logical_and(tf.equal(tf.shape(image)[0], size), tf.equal(tf.shape(image)[1], size))
    resized = tf.cond(
        same,
        lambda: pixels,
        lambda: tf.round(tf.clip_by_value(
            tf.image.resize(pixels, [size, size], method="bilinear", antialias=True), 0.0, 255.0)))
    return tf.ensure_shape(resized, [size, size, 3])


class CaptionModule(tf.Module):
    """A tf.Module whose two tf.functions caption images; see the module docstring."""

    def __init__(self, captioner, beam_width: int = 3, length_penalty: float = 0.0):
        super().__init__(name="captioner")
        size, max_len = captioner.input_size, captioner.max_length
        vocab = captioner.vocab
        backbone = captioner.backbone
        search = captioner.search_function(beam_width, length_penalty)
        # The variables are tracked here; the Keras models are only closed over.
        self.model_variables = list(backbone.variables) + list(captioner.decoder.variables)
        words = tf.constant(vocab.tokens)
        stop_ids = tf.constant([vocab.end_id, vocab.pad_id], tf.int32)

        def caption_features(pixels):
            tokens, logps = search(backbone(pixels, training=False))
            # As Captioner.caption_from_search: the words are those before the first end/pad
            # token (at most max_length); the total includes that stop token.
            is_stop = tf.reduce_any(tf.equal(tokens[..., None], stop_ids), -1)
            stops_before = tf.cumsum(tf.cast(is_stop, tf.int32), axis=1, exclusive=True)
            is_word = tf.logical_and(tf.logical_not(is_stop), tf.equal(stops_before, 0))[:, :max_len]
            ids = tf.where(is_word, tokens[:, :max_len], vocab.pad_id)
            text = tf.strings.reduce_join(
                tf.ragged.boolean_mask(tf.gather(words, ids), is_word), axis=-1, separator=" ")
            logprob = tf.reduce_sum(tf.where(tf.equal(stops_before, 0), logps, 0.0), -1)
            return {"caption": text, "tokens": tf.cast(ids, tf.int32), "logprob": logprob}

        @tf.function(input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32, name="pixels")])
        def caption_pixels(pixels):
            return caption_features(pixels)

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="images")])
        def caption_images(images):
            pixels = tf.map_fn(lambda b: decode_and_resize(b, size), images,
                               fn_output_signature=tf.TensorSpec([size, size, 3], tf.float32))
            return caption_features(pixels)

        self.caption_pixels = caption_pixels
        self.caption_images = caption_images


def export_saved_model(captioner, out_dir, beam_width: int = 3,
                       length_penalty: float = 0.0) -> Path:
    """Write ``captioner`` as a SavedModel to ``out_dir`` (replaced if it exists;
    written to a temporary folder first, so a failed export leaves no half model)."""
    out_dir = Path(out_dir)
    if beam_width < 1:
        raise ValueError(f"beam width must be at least 1, got {beam_width}")
    module = CaptionModule(captioner, beam_width, length_penalty)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        tf.saved_model.save(module, str(tmp), signatures={
            SERVING_SIGNATURE: module.caption_images,
            PIXELS_SIGNATURE: module.caption_pixels,
        })
        card = dict(captioner.card, export={"beam_width": int(beam_width),
                                            "length_penalty": float(length_penalty),
                                            "input_size": captioner.input_size,
                                            "signatures": [SERVING_SIGNATURE, PIXELS_SIGNATURE]})
        (tmp / CARD_FILE).parent.mkdir(parents=True, exist_ok=True)
        (tmp / CARD_FILE).write_text(json.dumps(card, indent=2) + "\n")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir
