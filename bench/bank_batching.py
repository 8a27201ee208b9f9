"""What batching the backbone passes saves a concept bank build, measured in one run.

    python bench/bank_batching.py [--bundle objects] [--scenes 200] [--repeats 2] [--json FILE]

Runs the bank's segment stage (``collect_segments``: segmentation, each scene's feature
map, the relevance passes and the patches of the relevant segments through the
backbone) on the same scenes of the bundle's own world, as ``build_world_bank`` does,
with every backbone call on one image and with the default batch
(``embed_batch_size``), alternating the two ``--repeats`` times. Prints seconds a
scene (the fastest of the repeats) and the ratio. The scenes are the bank's own seeds
(20,000,000+); the embeddings of both ways are compared as well.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from source_code.explain import concepts as C  # noqa: E402
from source_code.files import write_json  # noqa: E402
from source_code.model.bundles import resolve_bundle  # noqa: E402
from source_code.model.captioner import Captioner  # noqa: E402


def segment_stage(captioner, examples, batch: int) -> tuple[float, np.ndarray]:
    """Seconds of the world bank's segment stage on these scenes, and its embeddings."""
    world = captioner.config.get("world", "shapes")
    options = C.world_bank_options(world)
    images, captions, truths = examples
    t0 = time.perf_counter()
    segments, _ = C.collect_segments(
        captioner, images, options.get("resolutions"), truths, progress=False,
        segmentation=options.get("segmentation", "slic"), captions=captions,
        relevant_per_word=options.get("relevant_per_word"), batch=batch)
    return time.perf_counter() - t0, segments.embeddings


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", default="objects")
    ap.add_argument("--scenes", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    captioner = Captioner.load(resolve_bundle(args.bundle))
    world = captioner.config.get("world", "shapes")
    examples = C.world_examples(world, args.scenes, C.WORLD_BANK_SEED, captioner.input_size,
                                progress=False)
    default = C.embed_batch_size(captioner.input_size)
    ways = {"one image a call": 1, f"{default} images a call (default)": default}
    segment_stage(captioner, tuple(x[:4] for x in examples), default)     # compile first
    seconds = {name: [] for name in ways}
    embeddings = {}
    for _ in range(args.repeats):
        for name, batch in ways.items():
            s, embeddings[name] = segment_stage(captioner, examples, batch)
            seconds[name].append(s)
    one, batched = (min(seconds[n]) / args.scenes for n in ways)
    a, b = embeddings.values()
    embedded = np.isfinite(a[:, 0])
    result = {
        "bundle": str(resolve_bundle(args.bundle)), "world": world, "scenes": args.scenes,
        "repeats": args.repeats,
        "ms_a_scene": {n: round(1000 * min(v) / args.scenes, 1) for n, v in seconds.items()},
        "all_runs_seconds": {n: [round(x, 1) for x in v] for n, v in seconds.items()},
        "speed_up": round(one / batched, 2),
        "segments": int(len(a)), "patches_embedded": int(embedded.sum()),
        "largest_embedding_difference": float(np.abs(a[embedded] - b[embedded]).max())
        if embedded.any() else 0.0,
    }
    print(f"concept bank segment stage, bundle {args.bundle}, {args.scenes} scenes "
          f"(fastest of {args.repeats}):")
    for name, ms in result["ms_a_scene"].items():
        print(f"  {name:32s} {ms:7.1f} ms a scene")
    print(f"  batched / one at a time: {result['speed_up']:.2f} x faster; embeddings differ "
          f"by at most {result['largest_embedding_difference']:.2g}")
    if args.json:
        write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
