"""Where an objects bundle's misses are, on validation scenes (never the test seeds).

    python bench/objects_errors.py [--bundle objects] [--scenes 1500] [--json FILE]

Captions the prior-choice validation scenes (seeds 80,000,000+, beam 3, the bundle as it
serves) and, for every object, whether its noun is in the caption: the share named by
source kind (photographic stamp, clip art, emoji), by the object's longer side in
pixels, in one- and two-object scenes, the worst categories, and the commonest
confusions (a true noun missing while a noun of no object in the scene is said).
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from source_code.data.objects_world import default_world  # noqa: E402
from source_code.data.worlds import held_out_scenes  # noqa: E402
from source_code.evaluation.imagenet_prior import PRIOR_SEED, source_kinds  # noqa: E402
from source_code.evaluation.objects_eval import captions_of, exact_hits  # noqa: E402
from source_code.model.bundles import resolve_bundle  # noqa: E402
from source_code.model.captioner import Captioner  # noqa: E402

SIZES = ((0, 80), (80, 120), (120, 160), (160, 10_000))


def object_rows(scenes, said: list[str]) -> tuple[list[dict], collections.Counter]:
    """One row per object (its kind, size, scene size, named or not) and the confusions."""
    kinds, nouns = source_kinds(), set(default_world().categories)
    rows, confusions = [], collections.Counter()
    for scene, text in zip(scenes, said):
        words = text.split()
        for o in scene.objects:
            x0, y0, x1, y1 = o.bbox
            rows.append({"kind": kinds.get(o.source, "?"), "size": max(x1 - x0, y1 - y0),
                         "objects_in_scene": len(scene.objects), "category": o.category,
                         "named": o.category in words})
        truth = {o.category for o in scene.objects}
        for wrong in (w for w in words if w in nouns and w not in truth):
            for missed in truth - set(words):
                confusions[f"{missed} -> {wrong}"] += 1
    return rows, confusions


def named_share(rows: list[dict], keep) -> dict:
    kept = [r["named"] for r in rows if keep(r)]
    return {"objects": len(kept), "named": round(float(np.mean(kept)), 3) if kept else None}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", default="objects")
    ap.add_argument("--scenes", type=int, default=1500)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args(argv)
    captioner = Captioner.load(resolve_bundle(a.bundle))
    scenes = held_out_scenes("objects", a.scenes, PRIOR_SEED, captioner.input_size)
    said = captions_of(captioner, scenes)
    rows, confusions = object_rows(scenes, said)
    exact = np.mean(exact_hits(scenes, said))
    kinds = sorted({r["kind"] for r in rows})
    per_category = {c: named_share(rows, lambda r, c=c: r["category"] == c)
                    for c in sorted({r["category"] for r in rows})}
    result = {
        "bundle": a.bundle, "scenes": a.scenes, "seeds": [PRIOR_SEED, PRIOR_SEED + a.scenes - 1],
        "beam_width": 3, "exact_match": round(float(exact), 4),
        "by_kind": {k: named_share(rows, lambda r, k=k: r["kind"] == k) for k in kinds},
        "by_kind_two_object_scenes": {k: named_share(
            rows, lambda r, k=k: r["kind"] == k and r["objects_in_scene"] == 2) for k in kinds},
        "by_longer_side_px": {f"{lo}-{hi}": named_share(rows, lambda r, lo=lo, hi=hi:
                                                        lo <= r["size"] < hi)
                              for lo, hi in SIZES},
        "by_scene": {f"{n} object(s)": named_share(rows, lambda r, n=n: r["objects_in_scene"] == n)
                     for n in (1, 2)},
        "worst_categories": dict(sorted(per_category.items(), key=lambda kv: kv[1]["named"])[:10]),
        "commonest_confusions": dict(confusions.most_common(15)),
    }
    print(json.dumps(result, indent=1))
    if a.json:
        a.json.write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
