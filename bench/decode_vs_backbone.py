"""Decode cost against the backbone's own cost, measured in one run.

    python bench/decode_vs_backbone.py [--variant l --size 480 --vocab 8000 --units 512]

Builds EfficientNetV2 (random weights: timing only) and an attention or merge
decoder of a Flickr8k-like size, then prints medians after warm-up of: one
backbone forward (batch 1), greedy decode and beam-3 decode from the features,
and their ratios. Target: a whole beam-3 decode costs at most 5 % of a forward.
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


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variant", default="l")
    p.add_argument("--size", type=int, default=480)
    p.add_argument("--decoder", default="attention", choices=["attention", "merge"])
    p.add_argument("--vocab", type=int, default=8000, help="vocabulary size (Flickr8k at count>=1: ~8k)")
    p.add_argument("--units", type=int, default=512)
    p.add_argument("--embed-dim", type=int, default=300)
    p.add_argument("--max-length", type=int, default=34, help="Flickr8k's longest cleaned caption")
    p.add_argument("--runs", type=int, default=5)
    args = p.parse_args(argv)

    words = [f"w{i}" for i in range(args.vocab - 4)]
    vocab = Vocabulary(["<pad>", "<start>", "<end>", "<unk>"] + words)
    spec = BackboneSpec(args.variant, args.size, None)
    t0 = time.perf_counter()
    cap = Captioner.build(vocab, spec, {"kind": args.decoder, "units": args.units,
                                        "embed_dim": args.embed_dim}, args.max_length)
    print(f"built EfficientNetV2-{args.variant.upper()} at {args.size} + {args.decoder} decoder "
          f"({args.vocab} words, {args.units} units) in {time.perf_counter() - t0:.1f} s")
    pixels = tf.constant(np.random.default_rng(0).uniform(0, 255, (1, args.size, args.size, 3)),
                         tf.float32)
    feats = cap.features(pixels)
    forward = median_ms(lambda: cap.features(pixels).numpy(), args.runs)
    greedy = median_ms(lambda: cap.decode_features(feats, 1), args.runs * 4)
    beam3 = median_ms(lambda: cap.decode_features(feats, 3), args.runs * 4)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, TF {tf.__version__}, "
          f"GPU: {bool(tf.config.list_physical_devices('GPU'))}")
    print(f"{'step':28s} {'median ms':>10s} {'x forward':>10s}")
    for name, ms in (("backbone forward (batch 1)", forward), ("greedy decode", greedy),
                     ("beam-3 decode", beam3)):
        print(f"{name:28s} {ms:10.1f} {ms / forward:10.3f}")
    verdict = "met" if beam3 / forward <= 0.05 else "MISSED"
    print(f"target beam-3 <= 5 % of a forward: {100 * beam3 / forward:.1f} % ({verdict})")
    print("(decode: all steps of the caption, up to the length limit, for one image)")


if __name__ == "__main__":
    main()
