"""Why a side-by-side pair misses a noun: the photo's size, or the other photo beside it?

    python bench/pair_halves.py [--bundle objects] [--json FILE]

Captions each validation pair (``validation_photos.validation_pairs``, never the test
photos) three ways, with beam 3 and the bundle as it serves: the pair itself; its left
photo alone, where the pair puts it (the right half left blank); its right photo alone,
likewise. A noun named alone in its half but not in the pair was lost to the company of
the other photo; one not named even alone was lost to the photo at half size (the
whole-frame rate is the validation photo nouns of ``evaluate-photos --set validation``).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from source_code.data.objects_world import caption_nouns  # noqa: E402
from source_code.evaluation.photos import load_photo, side_by_side  # noqa: E402
from source_code.evaluation.validation_photos import (IN_WORLD_VALIDATION,  # noqa: E402
                                                      validation_pair_entries)
from source_code.files import write_json  # noqa: E402
from source_code.model.bundles import resolve_bundle  # noqa: E402
from source_code.model.captioner import Captioner  # noqa: E402

BLANK = np.full((2, 2, 3), 128, np.uint8)     # pasted on side_by_side's grey: nothing shows
BATCH = 30


def pair_frames(left: np.ndarray, right: np.ndarray) -> list[np.ndarray]:
    """The pair, its left photo alone in its half, its right photo alone in its half."""
    return [side_by_side(left, right), side_by_side(left, BLANK), side_by_side(BLANK, right)]


def captions(captioner, frames: list[np.ndarray]) -> list[str]:
    return [c.text for s in range(0, len(frames), BATCH)
            for c in captioner.caption(frames[s:s + BATCH], beam_width=3)]


def summarise(rows: list[dict]) -> dict:
    """Shares over pairs, and where each missed noun was lost."""
    def share(key):
        return round(float(np.mean([r[key] for r in rows])), 4)
    lost = {"to_the_other_photo": 0, "at_half_size": 0}
    for r in rows:
        for side in ("left", "right"):
            if not r[f"{side}_in_pair"]:
                lost["to_the_other_photo" if r[f"{side}_alone"] else "at_half_size"] += 1
    return {"pairs": len(rows), "both_named": share("both_named"),
            "left_in_pair": share("left_in_pair"), "right_in_pair": share("right_in_pair"),
            "left_alone": share("left_alone"), "right_alone": share("right_alone"),
            "both_named_alone": round(float(np.mean([r["left_alone"] and r["right_alone"]
                                                     for r in rows])), 4),
            "missed_nouns": lost}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", default="objects")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    captioner = Captioner.load(resolve_bundle(args.bundle))
    pairs = validation_pair_entries(IN_WORLD_VALIDATION)
    frames = [f for a, b in pairs for f in pair_frames(load_photo(a[0]), load_photo(b[0]))]
    said = captions(captioner, frames)
    rows = []
    for k, (a, b) in enumerate(pairs):
        pair, left, right = said[3 * k: 3 * k + 3]
        in_pair = set(caption_nouns(pair))
        rows.append({"left": a[0], "right": b[0], "caption": pair, "left_caption": left,
                     "right_caption": right, "both_named": bool(in_pair & a[2] and in_pair & b[2]),
                     "left_in_pair": bool(in_pair & a[2]), "right_in_pair": bool(in_pair & b[2]),
                     "left_alone": bool(set(caption_nouns(left)) & a[2]),
                     "right_alone": bool(set(caption_nouns(right)) & b[2])})
    result = {"bundle": args.bundle, "imagenet_prior": list(captioner.imagenet_prior()),
              **summarise(rows), "rows": rows}
    print({k: v for k, v in result.items() if k != "rows"})
    if args.json:
        write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
