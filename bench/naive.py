"""The naive pipeline, written the way a first captioning demo does it, as a baseline.

* captioning: a Keras model maps (pooled image features, padded caption prefix) to
  the next word's distribution, and ``model.predict`` is called once per token
  (per beam for beam search), up to the maximum length;
* every explanation starts again from pixels: Grad-CAM runs a backbone forward +
  backward pass per word, saliency one more, ACE embeds every segment by running
  the backbone on the segment cut out and resized (as the paper does), and the
  adversarial check recaptions with the per-token loop.
It reuses the project's trained weights (same decoder), so both pipelines
compute the same quantities; only the way they are computed differs.
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf
from PIL import Image

from source_code.explain.ace import segment
from source_code.explain.report import REPORT_SEGMENTS
from source_code.explain.target import caption_target


class NaivePipeline:
    def __init__(self, captioner):
        self.c = captioner
        dec = captioner.decoder
        feat_shape = captioner.backbone.output_shape[1:]
        feats_in = tf.keras.Input(feat_shape)
        prefix_in = tf.keras.Input((captioner.max_length + 1,), dtype="int32")
        length_in = tf.keras.Input((), dtype="int32")

        class NextWord(tf.keras.layers.Layer):
            """Runs the decoder over the whole prefix and returns the last step's softmax."""

            def call(self, feats, prefix, length):
                logits, _ = dec((feats, prefix))
                last = tf.gather(logits, length - 1, batch_dims=1)
                return tf.nn.softmax(last)

        self.next_word = tf.keras.Model([feats_in, prefix_in, length_in],
                                        NextWord()(feats_in, prefix_in, length_in))

    def _decode(self, feats, beam_width: int):
        v, n = self.c.vocab, self.c.max_length
        beams = [([v.start_id], 0.0)]
        done = []
        for _ in range(n + 1):
            candidates = []
            for tokens, score in beams:
                prefix = np.full((1, n + 1), v.pad_id, np.int32)
                prefix[0, : len(tokens)] = tokens
                probs = self.next_word.predict([feats, prefix, np.array([len(tokens)])], verbose=0)[0]
                for w in np.argsort(-probs)[:beam_width]:
                    candidates.append((tokens + [int(w)], score + float(np.log(probs[w] + 1e-12))))
            candidates.sort(key=lambda t: -t[1])
            beams = []
            for tokens, score in candidates[:beam_width]:
                (done if tokens[-1] == v.end_id else beams).append((tokens, score))
            if not beams:
                break
        best = max(done or beams, key=lambda t: t[1])[0]
        return [v.word(t) for t in best[1:] if t not in (v.end_id, v.pad_id)]

    def caption(self, image, beam_width: int = 3):
        pixels = self.c.preprocess(image)
        feats = self.c.backbone.predict(pixels, verbose=0)
        return self._decode(feats, beam_width)

    def _scores_from_pixels(self, x, target):
        feats = self.c.backbone(x, training=False)
        logits, _ = self.c.decoder((feats, target.tokens_in))
        return tf.gather(tf.nn.log_softmax(logits)[0, : target.n_words], list(target.token_ids), batch_dims=1)

    def explain(self, image, beam_width: int = 3):
        words = self.caption(image, beam_width)
        if not words:
            return words
        target = caption_target(self.c, words)
        pixels = self.c.preprocess(image)
        bb = self.c.backbone
        to_act = tf.keras.Model(bb.inputs, bb.get_layer("top_activation").output)
        for t in range(target.n_words):          # Grad-CAM: a full pass per word
            with tf.GradientTape() as tape:
                acts = to_act(pixels, training=False)
                logits, _ = self.c.decoder((acts, target.tokens_in))
                s_t = tf.nn.log_softmax(logits)[0, t, target.token_ids[t]]
            g = tape.gradient(s_t, acts)
            tf.nn.relu(tf.einsum("bhwc,bc->bhw", acts, tf.reduce_mean(g, [1, 2]))).numpy()
        x = tf.convert_to_tensor(pixels)
        with tf.GradientTape() as tape:            # saliency: one more pass
            tape.watch(x)
            s = tf.reduce_sum(self._scores_from_pixels(x, target))
        grad = tape.gradient(s, x)
        view = np.asarray(pixels[0]).astype(np.uint8)   # ACE: the backbone on every segment
        labels = segment(view, REPORT_SEGMENTS)   # as measured in the README's table
        size = self.c.input_size
        for seg in range(int(labels.max()) + 1):
            mask = labels == seg
            rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
            crop = np.where(mask[..., None], view, 117)[rows[0]: rows[-1] + 1, cols[0]: cols[-1] + 1]
            patch = np.asarray(Image.fromarray(crop.astype(np.uint8)).resize((size, size)), np.float32)
            bb.predict(patch[None], verbose=0)
        adv = tf.clip_by_value(x - 8.0 * tf.sign(grad), 0, 255)   # adversarial: recaption naively
        self._decode(bb.predict(adv, verbose=0), beam_width)
        return words
