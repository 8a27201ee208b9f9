"""What a decoder training step costs, and what its Grad-CAM grounding loss adds, measured
in one run.

    python bench/train_step.py [--bundle objects] [--batch 32] [--runs 20] [--json FILE]

Times the training update of a bundle's decoder (AdamW, the caption and attention
losses, as in training/train.py) on cached-feature batches of the bundle's grid, with
the Grad-CAM grounding loss off, with it taken the textbook way (d s / d A through
every cell) and with it taken through the decoder's channel shift (what training
runs: the same maps and gradients, see tests/test_explain_maths.py); the first and
the last again with the per-cell products in bfloat16 (what training runs where that
is fast). Prints the
median seconds per step and the ratios. The features are random and the captions
drawn from the vocabulary: the cost depends on the shapes, not on the values.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from decode_vs_backbone import median_ms  # noqa: E402
from source_code.model.bundles import resolve_bundle  # noqa: E402
from source_code.model.captioner import Captioner  # noqa: E402
from source_code.training.train import fast_bfloat16, teacher_forcing_with_word_cam  # noqa: E402

VARIANTS = ("no Grad-CAM loss", "Grad-CAM loss, textbook dA", "Grad-CAM loss, channel shift")
BF16 = ", bfloat16 cell products"


def make_step(decoder, variant: str):
    """One compiled AdamW update of the decoder for the variant."""
    optimizer = keras.optimizers.AdamW(1e-4)
    variables = decoder.trainable_variables

    @tf.function
    def step(feats, tin, tgt, att, pick):
        with tf.GradientTape() as tape:
            if variant == VARIANTS[0]:
                logits, alpha = decoder((feats, tin), training=True)
                cam_loss = 0.0
            else:
                logits, alpha, cam = teacher_forcing_with_word_cam(
                    decoder, feats, tin, tgt, pick, True, textbook=variant == VARIANTS[1])
                inside = tf.reduce_sum(att * pick[:, :, None, None], 1)
                frac = tf.reduce_sum(cam * inside, [1, 2]) / (tf.reduce_sum(cam, [1, 2]) + 1e-6)
                cam_loss = -tf.reduce_mean(tf.math.log(frac + 1e-3))
            ce = keras.losses.sparse_categorical_crossentropy(tgt, logits, from_logits=True)
            flat = tf.reshape(att, tf.shape(alpha))
            att_loss = -tf.reduce_mean(flat * tf.math.log(alpha + 1e-8))
            loss = tf.reduce_mean(ce) + att_loss + 0.5 * cam_loss
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return loss
    return step


def batch(captioner, size: int, rng):
    """Random features of the bundle's grid, captions of its vocabulary, one box per word."""
    h, w = captioner.grid
    length = captioner.max_length + 1
    feats = tf.constant(rng.random((size, h, w, captioner.config["feature_channels"])) * 3,
                        tf.float32)
    tokens = rng.integers(4, len(captioner.vocab), (size, length + 1))
    att = np.zeros((size, length, h, w), np.float32)
    att[:, :, : h // 2, : w // 2] = 1.0 / ((h // 2) * (w // 2))
    pick = tf.one_hot(rng.integers(0, length, size), length)
    return (feats, tf.constant(tokens[:, :-1], tf.int32), tf.constant(tokens[:, 1:], tf.int32),
            tf.constant(att), pick)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", default="objects")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args(argv)
    captioner = Captioner.load(resolve_bundle(a.bundle))
    if captioner.decoder.noun_prior is not None:   # set after training, not trained with
        captioner.set_imagenet_prior(0.0)
    args = batch(captioner, a.batch, np.random.default_rng(0))
    seconds = {}
    for variant in VARIANTS:
        keras.utils.set_random_seed(0)
        step = make_step(captioner.decoder, variant)
        seconds[variant] = median_ms(lambda: float(step(*args)), a.runs) / 1000
    # what training runs where bfloat16 is fast (training/train.py: cell_dtype)
    captioner.decoder.cell_dtype = tf.bfloat16
    for variant in (VARIANTS[0], VARIANTS[2]):
        keras.utils.set_random_seed(0)
        step = make_step(captioner.decoder, variant)
        seconds[variant + BF16] = median_ms(lambda: float(step(*args)), a.runs) / 1000
    captioner.decoder.cell_dtype = None
    base, textbook, shifted = (seconds[v] for v in VARIANTS)
    result = {"bundle": a.bundle, "grid": list(captioner.grid), "batch": a.batch, "runs": a.runs,
              "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, "
                         f"{tf.config.list_physical_devices('GPU') and 'GPU' or 'no GPU'}",
              "seconds_per_step": {v: round(s, 4) for v, s in seconds.items()},
              "textbook_over_channel_shift": round(textbook / shifted, 2),
              "grad_cam_loss_cost_textbook": round(textbook / base, 2),
              "grad_cam_loss_cost_channel_shift": round(shifted / base, 2),
              "float32_over_bfloat16_cells": {
                  v: round(seconds[v] / seconds[v + BF16], 2) for v in (VARIANTS[0], VARIANTS[2])},
              "bfloat16_fast_here": fast_bfloat16()}
    print(f"decoder training step, bundle {a.bundle}, grid {captioner.grid}, batch {a.batch} "
          f"(median of {a.runs})")
    for v in seconds:
        print(f"  {v:<48} {seconds[v]:.3f} s  ({seconds[v] / base:.2f} x no Grad-CAM loss)")
    print(f"  textbook / channel shift: {textbook / shifted:.2f} x")
    if a.json:
        a.json.write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
