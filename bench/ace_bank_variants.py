"""A concept bank built another way than the bundle's, scored on validation scenes.

    python bench/ace_bank_variants.py --bundle objects --images 600 --clusters 80 \
        --discovery world --segmentation slic --levels 15 --scenes 100

Options left out take the world's default bank recipe (concepts.WORLD_BANKS).

Builds the bank in memory (the bundle's own bank is untouched), then scores it as
bench/ace_concepts.py does, on validation scenes (seeds from 90,000,000), never on the
test scenes. Each run adds a row to docs/results/ace_<bundle>_bank_variants.json.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ace_concepts import VALIDATION_SEED, bank_figures, held_out, word_figures  # noqa: E402


def main(argv=None) -> int:
    from source_code.explain.concepts import build_world_bank
    from source_code.explain.pipeline import Explainer
    from source_code.files import write_json
    from source_code.model.bundles import resolve_bundle
    from source_code.model.captioner import Captioner

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", default="objects")
    p.add_argument("--images", type=int, default=None, help="discovery scenes")
    p.add_argument("--clusters", type=int, default=None, help="k (per word with --discovery word)")
    p.add_argument("--embedding", default="patch", choices=["patch", "region"])
    p.add_argument("--discovery", default=None, choices=["world", "word"])
    p.add_argument("--segmentation", default=None, choices=["slic", "felzenszwalb"])
    p.add_argument("--min-cluster-size", type=int, default=None)
    p.add_argument("--relevant-per-word", type=int, default=None)
    p.add_argument("--levels", default=None,
                   help="segmentation levels, comma-separated (default: the world's)")
    p.add_argument("--scenes", type=int, default=100, help="validation scenes scored")
    args = p.parse_args(argv)
    bundle = resolve_bundle(args.bundle)
    cap = Captioner.load(bundle)
    world = cap.config.get("world", "shapes")
    levels = tuple(int(x) for x in args.levels.split(",")) if args.levels else None
    t0 = time.perf_counter()
    bank, _ = build_world_bank(cap, n_images=args.images, clusters=args.clusters,
                               embedding=args.embedding, resolutions=levels,
                               discovery=args.discovery, segmentation=args.segmentation,
                               min_cluster_size=args.min_cluster_size,
                               relevant_per_word=args.relevant_per_word, progress=False)
    build = time.perf_counter() - t0
    figures = bank_figures(bank)
    scored = word_figures(Explainer(cap, concept_bank=bank), world,
                          held_out(world, args.scenes, cap.input_size, VALIDATION_SEED),
                          progress=False)
    row = {"command": " ".join(["python bench/ace_bank_variants.py"] + list(argv or sys.argv[1:])),
           "build_seconds": round(build), "concepts": figures["concepts"],
           "bank": {k: bank.info.get(k) for k in ("discovery_images", "segmentation", "resolutions",
                                                  "discovery", "clusters", "min_cluster_size",
                                                  "relevant_per_word", "segments",
                                                  "segments_embedded")},
           "names": sorted({n["name"] for n in figures["names"]}),
           "share_purity_at_least_0.9": figures["share_purity_at_least_0.9"],
           "validation_seeds": [VALIDATION_SEED, VALIDATION_SEED + args.scenes - 1],
           **{k: v for k, v in scored.items() if k != "by_word"},
           "load_average": [round(x, 2) for x in os.getloadavg()]}
    out = REPO / "docs" / "results" / f"ace_{bundle.name}_bank_variants.json"
    rows = json.loads(out.read_text()) if out.exists() else []
    write_json(out, rows + [row])
    print(json.dumps(row, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
