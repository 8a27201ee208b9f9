"""Choosing the weight of the objects bundle's ImageNet noun prior on validation data.

The prior (``CaptionDecoder.set_noun_prior``) lends the decoder what Lite0's ImageNet
classifier knows about photographs (a tabby is a cat) where the decoder, trained on
composites, is unsure. Its weight and pooling (the frame's evidence, or the attended
cells') are chosen on validation data only: held-out scenes of the objects world
(seeds ``PRIOR_SEED``.., used for nothing else) and the validation photographs of
``validation_photos.py`` (GCompris's photos, neither trained on nor the test photos,
which stay a test set). The rule: among the settings that cost at most ``MAX_LOSS``
exact match over all validation scenes against no prior, the one with the best
*photo score* (the mean of the per-noun share of validation photo frames whose
caption names the object, and the share of side-by-side validation pairs with both
nouns named); ties go to the smaller weight, then to frame pooling. Real webcam frames
are what the bundle is for, so they decide; the synthetic scenes bound what that may
cost the world it was trained on. (The first bundles' rule, before validation
photographs were found, read the scenes whose objects are all Tux Paint stamps
instead; ``pick_weight(rows, score="exact_match_stamps")`` is that rule.)
"""
from __future__ import annotations

import numpy as np
from tqdm import tqdm

from ..data.objects_world import canonical_object_caption, default_world
from ..data.worlds import held_out_scenes
from ..model.decoders import PRIOR_POOLINGS

PRIOR_SEED = 80_000_000    # used by nothing else (tests: 40M, samples: 50M, benches: 60-70M)
WEIGHTS = (0.0, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0)
POOLINGS = PRIOR_POOLINGS     # frame first: the tie order
MAX_LOSS = 0.02
PHOTO_KIND = "stamp"
VALIDATION_SCENES = 1500   # the recipe's choice, and `choose-imagenet-prior`'s default


def source_kinds() -> dict[str, str]:
    """{a catalogue source as a scene records it (path or emoji text): its kind}."""
    out = {}
    for category in default_world().categories.values():
        for s in category.sources:
            out[s.get("path") or s.get("text")] = s["kind"]
    return out


def choose_prior_weight(captioner, n_scenes: int = 400, weights=WEIGHTS, beam_width: int = 3,
                        batch_size: int = 32, progress: bool = True,
                        poolings=POOLINGS) -> dict:
    """Exact match per pooling and weight on ``n_scenes`` validation scenes (and on the
    all-stamp ones), the validation photos' scores, and the setting the rule picks:
    {"rows", "chosen", "chosen_pooling", ...}. The captioner's prior is put back as it was."""
    from .validation_photos import IN_WORLD_VALIDATION, PAIRS, PhotoChoiceData
    photos = PhotoChoiceData(captioner, batch_size, progress)     # read first: fails fast
    kinds = source_kinds()
    scenes = held_out_scenes("objects", n_scenes, PRIOR_SEED, captioner.input_size,
                             progress=progress)           # drawn in worker processes
    photographic = np.array([all(kinds.get(o.source) == PHOTO_KIND for o in s.objects)
                             for s in scenes])
    truth = [canonical_object_caption(s.caption) for s in scenes]
    # The decoder's reading of the cells does not depend on the prior: read once.
    parts = [captioner.cell_parts(captioner.features(
                 captioner.preprocess([s.image for s in scenes[i: i + batch_size]])))
             for i in tqdm(range(0, n_scenes, batch_size), desc="features", disable=not progress)]
    rows, kept = [], captioner.imagenet_prior()
    # weight 0 is no prior, whatever the pooling: decoded once
    settings = [(p, float(w)) for p in poolings for w in weights if w or p == poolings[0]]
    for pooling, w in tqdm(settings, desc="prior settings", disable=not progress):
        captioner.set_imagenet_prior(w, pooling)
        said = [c.text for p in parts for c in captioner.decode_parts(p, beam_width)]
        right = np.array([canonical_object_caption(s) == t for s, t in zip(said, truth)])
        rows.append({"pooling": pooling, "weight": w, "exact_match": round(float(right.mean()), 4),
                     "exact_match_stamps": round(float(right[photographic].mean()), 4),
                     **photos.score(beam_width)})
    captioner.set_imagenet_prior(*kept)
    chosen = pick_weight(rows)
    return {"scenes": n_scenes, "seeds": [PRIOR_SEED, PRIOR_SEED + n_scenes - 1],
            "stamp_scenes": int(photographic.sum()), "beam_width": beam_width,
            "validation_photos": len(IN_WORLD_VALIDATION), "validation_pairs": PAIRS,
            "rule": f"best photo score (mean of the per-noun share of validation photo frames "
                    f"named right and the share of validation pairs with both nouns named) "
                    f"among settings losing at most {MAX_LOSS} exact match over all validation "
                    f"scenes; ties to the smaller weight, then to frame pooling",
            "rows": rows, "chosen": chosen["weight"], "chosen_pooling": chosen["pooling"]}


def card_record(result: dict) -> dict:
    """What a bundle's card keeps of a choice: everything but the per-weight rows."""
    return {k: v for k, v in result.items() if k != "rows"}


def pick_weight(rows: list[dict], max_loss: float = MAX_LOSS, score: str = "photo_score") -> dict:
    """The rule (see the module): rows of {"weight", "exact_match", ``score``, "pooling"
    (absent: frame)} -> {"weight", "pooling"} of the chosen row."""
    base = next(r["exact_match"] for r in rows if r["weight"] == 0.0)
    allowed = [r for r in rows if r["exact_match"] >= base - max_loss - 1e-12]
    best = max(allowed, key=lambda r: (r[score], -r["weight"],
                                       -POOLINGS.index(r.get("pooling", "frame"))))
    return {"weight": best["weight"], "pooling": best.get("pooling", "frame")}
