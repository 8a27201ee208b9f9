"""Decode cost against the backbone's own cost, measured in one run.

    python bench/decode_vs_backbone.py [--variant l --size 480 --vocab 8000 --units 512]

Builds EfficientNetV2 (random weights: timing only) and an attention or merge
decoder of a Flickr8k-like size, then prints medians after warm-up of: one
backbone forward (batch 1), greedy decode and beam-3 decode from the features,
and their ratios, for a decoder of the size the real-data recipe trains on
Flickr8k. Target: a whole beam-3 decode costs at most 5 % of a forward.

The search stops when every beam has ended. A decoder with random weights never
ends a caption, so its decode runs to the length limit (the worst case, all
``--max-length`` + 1 steps). A trained model's beams end with the caption, so
the same search is also timed with the captions ending after ``--typical-length``
tokens (Flickr8k's mean cleaned caption is about 11 words + the end token): the
search is built with that length limit, which is the number of steps it runs.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from source_code.model.backbone import BackboneSpec  # noqa: E402
from source_code.model.captioner import Captioner  # noqa: E402
from source_code.text.vocabulary import Vocabulary  # noqa: E402


def median_ms(fn, runs: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(1000 * (time.perf_counter() - t0))
    return statistics.median(times)


# A decoder of the size the real-data recipe trains on Flickr8k: its training
# captions give about 1,650 words at count >= 10 (the recipe's default) and a
# longest cleaned caption of 34 words.
FLICKR8K_VOCAB = 1650
FLICKR8K_MAX_LENGTH = 34
TYPICAL_CAPTION_TOKENS = 12   # Flickr8k's mean cleaned caption (~11 words) + the end token


def synthetic_word(i: int) -> str:
    """The i-th word of a made-up vocabulary: letters only ("wa", "wb", ... "wba"), so
    captions of these words survive caption cleaning and can be explained as text."""
    letters = ""
    while True:
        i, r = divmod(i, 26)
        letters = chr(ord("a") + r) + letters
        if i == 0:
            return "w" + letters


def random_captioner(variant: str = "l", size: int = 480, decoder: str = "attention",
                     vocab_size: int = FLICKR8K_VOCAB, units: int = 512, embed_dim: int = 300,
                     max_length: int = FLICKR8K_MAX_LENGTH) -> Captioner:
    """EfficientNetV2 + decoder with random weights: for timing only."""
    words = [synthetic_word(i) for i in range(vocab_size - 4)]
    vocab = Vocabulary(["<pad>", "<start>", "<end>", "<unk>"] + words)
    return Captioner.build(vocab, BackboneSpec(variant, size, None),
                           {"kind": decoder, "units": units, "embed_dim": embed_dim}, max_length)


def decode_timings(cap: Captioner, feats, runs: int,
                   typical_tokens: int = TYPICAL_CAPTION_TOKENS) -> dict:
    """Greedy and beam-3 decode medians (ms) as the model runs them (until every beam
    has ended, at most max_length + 1 steps) and for captions ending after
    ``typical_tokens`` tokens (the search built with that length limit)."""
    out = {"greedy decode": median_ms(lambda: cap.decode_features(feats, 1), runs),
           "beam-3 decode": median_ms(lambda: cap.decode_features(feats, 3), runs)}
    typical = with_max_length(cap, typical_tokens - 1)   # the last step may only end it
    out[f"greedy decode, {typical_tokens}-token caption"] = median_ms(
        lambda: typical.decode_features(feats, 1), runs)
    out[f"beam-3 decode, {typical_tokens}-token caption"] = median_ms(
        lambda: typical.decode_features(feats, 3), runs)
    return out


def with_max_length(cap: Captioner, max_length: int) -> Captioner:
    """The same model (weights shared) whose search stops after ``max_length`` words."""
    return Captioner(cap.backbone, cap.decoder, cap.vocab, dict(cap.config, max_length=max_length))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variant", default="l")
    p.add_argument("--size", type=int, default=480)
    p.add_argument("--decoder", default="attention", choices=["attention", "merge"])
    p.add_argument("--vocab", type=int, default=FLICKR8K_VOCAB,
                   help="vocabulary size (default: Flickr8k's training captions at count >= 10)")
    p.add_argument("--units", type=int, default=512)
    p.add_argument("--embed-dim", type=int, default=300)
    p.add_argument("--max-length", type=int, default=FLICKR8K_MAX_LENGTH,
                   help="Flickr8k's longest cleaned caption")
    p.add_argument("--typical-length", type=int, default=TYPICAL_CAPTION_TOKENS,
                   help="tokens of a typical caption, end token included (Flickr8k: ~12)")
    p.add_argument("--runs", type=int, default=5)
    args = p.parse_args(argv)

    t0 = time.perf_counter()
    cap = random_captioner(args.variant, args.size, args.decoder, args.vocab, args.units,
                           args.embed_dim, args.max_length)
    print(f"built EfficientNetV2-{args.variant.upper()} at {args.size} + {args.decoder} decoder "
          f"({args.vocab} words, {args.units} units) in {time.perf_counter() - t0:.1f} s")
    pixels = tf.constant(np.random.default_rng(0).uniform(0, 255, (1, args.size, args.size, 3)),
                         tf.float32)
    feats = cap.features(pixels)
    forward = median_ms(lambda: cap.features(pixels).numpy(), args.runs)
    t = decode_timings(cap, feats, args.runs * 4, args.typical_length)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, TF {tf.__version__}, "
          f"GPU: {bool(tf.config.list_physical_devices('GPU'))}")
    print(f"{'step':34s} {'median ms':>10s} {'x forward':>10s}")
    print(f"{'backbone forward (batch 1)':34s} {forward:10.1f} {1:10.3f}")
    for name, ms in t.items():
        print(f"{name:34s} {ms:10.1f} {ms / forward:10.3f}")
    for key, label in ((f"beam-3 decode, {args.typical_length}-token caption",
                        f"{args.typical_length}-token caption"),
                       ("beam-3 decode", f"worst case, {args.max_length + 1} steps")):
        ratio = t[key] / forward
        print(f"target beam-3 <= 5 % of a forward, {label}: {100 * ratio:.1f} % "
              f"({'met' if ratio <= 0.05 else 'MISSED'})")
    print("(decode: one image, from its features, until every beam has ended)")


if __name__ == "__main__":
    main()
