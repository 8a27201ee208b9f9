"""Export a bundle as a TensorFlow SavedModel, for TensorFlow Serving.

``python -m source_code export --bundle DIR --out EXPORT_DIR [--beam 3]``

The SavedModel holds the backbone, the decoder, the vocabulary and the search
(beam width fixed at export time), so a server needs nothing from this package.
Three signatures:

``serving_default``
    ``images``: tf.string [B], encoded JPEG / PNG / BMP / GIF (first frame)
    bytes. Each image is decoded to RGB (alpha dropped, grey replicated, as
    PIL's ``convert("RGB")``; JPEG with the accurate integer IDCT, so the decoded
    pixels equal PIL's) and the whole frame is resized to the bundle's input
    size, bilinear with antialiasing, rounded to 0-255 like
    ``Captioner.preprocess`` (PIL). Images already at the input size are passed
    through unchanged (the caption is then exactly the app's); for other sizes
    TF's and PIL's resamplers can differ by one grey level on a few pixels, which
    can rarely change a word. EXIF orientation is not applied: send upright images.
``caption_pixels``
    ``pixels``: float32 [B, S, S, 3] raw 0-255 pixels at the input size S
    (what ``Captioner.preprocess`` returns): the exact ``Captioner.caption``.

Both return ``caption`` (tf.string [B], the words joined by spaces), ``tokens``
(int32 [B, max_length], the word ids, pad id after the caption) and
``logprob`` (float32 [B], total log-probability, end token included).

``explain_pixels``
    ``pixels``: float32 [1, S, S, 3], one image as for ``caption_pixels``. The
    caption (same search, so the same ``caption``, ``tokens`` and ``logprob``)
    and its Grad-CAM explanation, as the app's ``explain.gradcam.gradcam`` on
    ``explain.target.caption_target`` of that caption computes it:

    * ``word_logprobs`` (float32 [1, max_length]): s_t = log p(w_t | x, w_<t) by
      teacher forcing for each word of the caption, 0 after its end (the end
      token is not counted);
    * ``gradcam`` (float32 [1, max_length, h, w]): each word's Grad-CAM map on
      the backbone's feature grid h x w, zeros after the caption's end;
    * ``gradcam_caption`` (float32 [1, h, w]): the whole caption's map, for
      s = sum_t s_t.

    Grad-CAM is taken at the backbone's output A (what the decoder reads), with
    the gradients ds_t/dA through the decoder only: channel weights = spatial
    mean of the gradient, map = ReLU(sum_k w_k A_k), not normalised (scale it
    for display as the app does). The caption's length T is only known at run
    time: A is tiled T times, row t is teacher-forced on the caption and scores
    only s_t, so one ``tape.gradient`` gives all T word gradients (plain graph
    ops that run in the session loader; the app uses a ``pfor`` Jacobian, with
    the same result). An empty caption gives zero maps and scores.

The SavedModel is written with Keras' ``ExportArchive`` (what ``model.export()``
uses), which saves the Keras 3 variables so that the session-based loader of
TensorFlow Serving and ``saved_model_cli run`` restores all of them (a plain
``tf.saved_model.save`` of a tf.Module loads in TF2 but fails there with
"Could not find variable ... uninitialized"). The tests run every signature
through that loader.

The bundle's model card is copied to ``EXPORT_DIR/assets.extra/model_card.json``
(TensorFlow Serving ignores that folder). Serving wants a version folder:
export to ``models/captioner/1`` and point the server at ``models/captioner``.
"""
from __future__ import annotations

import json
from pathlib import Path

import tensorflow as tf

from ..files import atomic_dir
from .captioner import token_logprobs

SERVING_SIGNATURE = "serving_default"
PIXELS_SIGNATURE = "caption_pixels"
EXPLAIN_SIGNATURE = "explain_pixels"
SIGNATURES = (SERVING_SIGNATURE, PIXELS_SIGNATURE, EXPLAIN_SIGNATURE)
CARD_FILE = Path("assets.extra") / "model_card.json"


def decode_and_resize(encoded, size: int) -> tf.Tensor:
    """One encoded image (scalar tf.string) -> float32 [size, size, 3], 0-255, the
    way ``Captioner.preprocess`` prepares an image (whole frame, bilinear, uint8)."""
    # JPEG with the accurate integer IDCT, as PIL (libjpeg's default): pixel for pixel the
    # same; TF's default (fast IDCT) differs by up to ~13 grey levels.
    image = tf.cond(
        tf.io.is_jpeg(encoded),
        lambda: tf.io.decode_jpeg(encoded, channels=3, dct_method="INTEGER_ACCURATE"),
        lambda: tf.io.decode_image(encoded, channels=3, expand_animations=False))
    image.set_shape([None, None, 3])
    pixels = tf.cast(image, tf.float32)
    same = tf.logical_and(tf.equal(tf.shape(image)[0], size), tf.equal(tf.shape(image)[1], size))
    resized = tf.cond(
        same,
        lambda: pixels,
        lambda: tf.round(tf.clip_by_value(
            tf.image.resize(pixels, [size, size], method="bilinear", antialias=True), 0.0, 255.0)))
    return tf.ensure_shape(resized, [size, size, 3])


def keras_parts(captioner) -> list:
    """The Keras models/layers the signatures run, for ``ExportArchive.track``: the
    backbone and the decoder, plus any other built Keras layer the captioner holds
    (whatever the backbone or decoder kind is)."""
    import keras

    parts = [captioner.backbone, captioner.decoder]
    for value in vars(captioner).values():
        if (isinstance(value, keras.layers.Layer) and value.built
                and not any(value is p for p in parts)):
            parts.append(value)
    return parts


def _caption_from_features(captioner, beam_width: int, length_penalty: float):
    """A plain function: feature map A [B, h, w, C] -> ({"caption", "tokens",
    "logprob"}, is_word [B, max_length]) for the caption the search finds."""
    max_len, vocab = captioner.max_length, captioner.vocab
    search = captioner.search_function(beam_width, length_penalty)
    tokens_table = list(vocab.tokens)
    stop_list = [vocab.end_id, vocab.pad_id]

    def caption_features(fmap):
        # Constants are made inside the traced function, so they belong to its graph.
        words = tf.constant(tokens_table)
        stop_ids = tf.constant(stop_list, tf.int32)
        tokens, logps = search(fmap)
        # As Captioner.caption_from_search: the words are those before the first end/pad
        # token (at most max_length); the total includes that stop token.
        is_stop = tf.reduce_any(tf.equal(tokens[..., None], stop_ids), -1)
        stops_before = tf.cumsum(tf.cast(is_stop, tf.int32), axis=1, exclusive=True)
        is_word = tf.logical_and(tf.logical_not(is_stop), tf.equal(stops_before, 0))[:, :max_len]
        ids = tf.where(is_word, tokens[:, :max_len], vocab.pad_id)
        text = tf.strings.reduce_join(
            tf.ragged.boolean_mask(tf.gather(words, ids), is_word), axis=-1, separator=" ")
        logprob = tf.reduce_sum(tf.where(tf.equal(stops_before, 0), logps, 0.0), -1)
        return {"caption": text, "tokens": tf.cast(ids, tf.int32), "logprob": logprob}, is_word

    return caption_features


def caption_functions(captioner, beam_width: int = 3, length_penalty: float = 0.0):
    """(caption_images, caption_pixels): plain functions (encoded images tf.string [B]
    / pixels float32 [B, S, S, 3]) -> {"caption", "tokens", "logprob"}; see the
    module docstring. They only use the tensors and the Keras models of ``captioner``."""
    size = captioner.input_size
    backbone = captioner.backbone
    caption_features = _caption_from_features(captioner, beam_width, length_penalty)

    def caption_pixels(pixels):
        return caption_features(backbone(pixels, training=False))[0]

    def caption_images(images):
        pixels = tf.map_fn(lambda b: decode_and_resize(b, size), images,
                           fn_output_signature=tf.TensorSpec([size, size, 3], tf.float32))
        return caption_pixels(pixels)

    return caption_images, caption_pixels


def explain_function(captioner, beam_width: int = 3, length_penalty: float = 0.0):
    """explain_pixels: a plain function, pixels float32 [1, S, S, 3] -> {"caption",
    "tokens", "logprob", "word_logprobs", "gradcam", "gradcam_caption"}: the caption
    of ``caption_pixels`` and its per-word and whole-caption Grad-CAM maps, equal to
    ``explain.gradcam.gradcam`` (see the module docstring)."""
    max_len, vocab = captioner.max_length, captioner.vocab
    backbone = captioner.backbone
    grid_h, grid_w = (int(d) for d in backbone.output_shape[1:3])
    caption_features = _caption_from_features(captioner, beam_width, length_penalty)

    def explain_pixels(pixels):
        fmap = tf.stop_gradient(backbone(pixels, training=False))        # A [1, h, w, C]
        found, is_word = caption_features(fmap)
        n = tf.reduce_sum(tf.cast(is_word[0], tf.int32))                 # T, 0..max_length
        # The words are a prefix of the tokens: as explain.target.caption_target,
        # start + words in, words + end out.
        words = found["tokens"][:, :n]
        tokens_in = tf.concat([tf.fill([1, 1], vocab.start_id), words], 1)   # [1, T + 1]
        targets = tf.concat([words, tf.fill([1, 1], vocab.end_id)], 1)       # [1, T + 1]
        # Row t of the tiled map is teacher-forced on the same caption and scores only
        # s_t, so d(sum of rows)/d(row shifts) holds in row t the derivative of s_t with
        # respect to a shift of every cell (the decoder's channel_shift): ds_t/dA summed
        # over the cells, Grad-CAM's weights times h * w, as the app computes them
        # (explain.target.channel_pass). Every word's from one backward pass through the
        # decoder. At least one row, so that an empty caption still runs (its only row
        # then scores nothing).
        rows = tf.maximum(n, 1)
        acts = tf.tile(fmap, [rows, 1, 1, 1])                            # [R, h, w, C]
        shift = tf.zeros([rows, fmap.shape[-1]])
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(shift)
            logits, _ = captioner.decoder((acts, tf.tile(tokens_in, [rows, 1])),
                                          training=False, channel_shift=shift)
            scores = token_logprobs(logits, tf.tile(targets, [rows, 1]))[1]   # [R, T + 1]
            own = tf.linalg.diag_part(scores[:, :rows])                  # s_t of row t
            own = tf.where(tf.range(rows) < n, own, 0.0)
            total = tf.reduce_sum(own)
        weights = tape.gradient(total, shift) / float(grid_h * grid_w)   # [R, C]
        # explain.gradcam.cam_from_channel_sums: map = ReLU(sum_k w_k A_k), not
        # normalised; the caption's weights are the words' sum.
        word_maps = tf.nn.relu(tf.einsum("hwc,nc->nhw", fmap[0], weights))
        caption_map = tf.nn.relu(tf.einsum("hwc,nc->nhw", fmap[0],
                                           tf.reduce_sum(weights, 0, keepdims=True)))
        word_maps = tf.where((tf.range(rows) < n)[:, None, None], word_maps, 0.0)
        pad = max_len - rows
        word_maps = tf.ensure_shape(tf.pad(word_maps, [[0, pad], [0, 0], [0, 0]]),
                                    [max_len, grid_h, grid_w])
        own = tf.ensure_shape(tf.pad(own, [[0, pad]]), [max_len])
        return dict(found, word_logprobs=own[None], gradcam=word_maps[None],
                    gradcam_caption=tf.ensure_shape(caption_map, [1, grid_h, grid_w]))

    return explain_pixels


def build_archive(captioner, beam_width: int = 3, length_penalty: float = 0.0):
    """A ``keras.export.ExportArchive`` with the three signatures. Keras 3 variables are
    not ``tf.Variable``s: only ExportArchive saves them so that the session-based
    loader (TensorFlow Serving, ``saved_model_cli run``) restores every one; a plain
    ``tf.saved_model.save`` of a tf.Module leaves some uninitialised there."""
    import keras

    size = captioner.input_size
    caption_images, caption_pixels = caption_functions(captioner, beam_width, length_penalty)
    archive = keras.export.ExportArchive()
    for part in keras_parts(captioner):
        archive.track(part)
    # serving_default first: it is also the archive's default endpoint.
    archive.add_endpoint(SERVING_SIGNATURE, caption_images,
                         [tf.TensorSpec([None], tf.string, name="images")])
    archive.add_endpoint(PIXELS_SIGNATURE, caption_pixels,
                         [tf.TensorSpec([None, size, size, 3], tf.float32, name="pixels")])
    archive.add_endpoint(EXPLAIN_SIGNATURE, explain_function(captioner, beam_width, length_penalty),
                         [tf.TensorSpec([1, size, size, 3], tf.float32, name="pixels")])
    return archive


def export_saved_model(captioner, out_dir, beam_width: int = 3,
                       length_penalty: float = 0.0) -> Path:
    """Write ``captioner`` as a SavedModel to ``out_dir`` (replaced if it exists;
    written to a temporary folder first, so a failed export leaves no half model)."""
    out_dir = Path(out_dir)
    if beam_width < 1:
        raise ValueError(f"beam width must be at least 1, got {beam_width}")
    archive = build_archive(captioner, beam_width, length_penalty)
    with atomic_dir(out_dir) as tmp:
        archive.write_out(str(tmp), verbose=False)
        card = dict(captioner.card, export={"beam_width": int(beam_width),
                                            "length_penalty": float(length_penalty),
                                            "input_size": captioner.input_size,
                                            "signatures": list(SIGNATURES)})
        (tmp / CARD_FILE).parent.mkdir(parents=True, exist_ok=True)
        (tmp / CARD_FILE).write_text(json.dumps(card, indent=2) + "\n")
    return out_dir
