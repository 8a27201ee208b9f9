"""A trust score for the maps a person is looking at: each map's deletion curve on
this very frame against random maps (RISE-style deletion, ``faithfulness.deletion_curves``),
and a one-line verdict. Requested with ``faithfulness=1``; it is computed for the maps
of the words the request names (``words``), or for the caption's maps when it names none.

The random maps' curves do not depend on the map or the word, so they are computed once
per frame and caption and kept (numbers only, never the frame: a digest of its pixels is
the key) for the next clicks on the same frame: the page asks for the caption's score as
soon as a result arrives, so a click on a word scores the word's map alone.
"""
from __future__ import annotations

import hashlib
import threading
import weakref
from collections import OrderedDict

import numpy as np

from .faithfulness import deletion_curves, random_baseline, request_steps

VERDICT_FRACTION = 0.1        # the verdict reads the curves after deleting this much
RANDOM_MAPS = 1           # one random map: the request stays under a third of a second
BASELINES_KEPT = 16       # frames whose random-map curves are kept, per model

_baselines: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def trust_score(ctx, word_index: int | None, curve: dict) -> dict:
    """A map's deletion curve (``deletion_curves``) as the API's entry and verdict."""
    fractions = np.asarray(curve["fractions"])
    k = int(np.argmin(np.abs(fractions - VERDICT_FRACTION)))
    p, p_random = curve["probability"], curve["random_probability"]
    what = f"p({ctx.target.words[word_index]})" if word_index is not None else "p(caption)"
    verdict = (f"deleting the top {round(100 * fractions[k])} % of this map drops {what} "
               f"from {p[0]:.2f} to {p[k]:.2f}; random: {p_random[k]:.2f}")
    ratio = curve["auc"] / max(curve["random_auc"], 1e-9)
    return {"fractions": _rounded(fractions), "probability": _rounded(p),
            "random_probability": _rounded(p_random), "auc": round(curve["auc"], 4),
            "random_auc": round(curve["random_auc"], 4), "auc_over_random": round(ratio, 3),
            "verdict": verdict}


def add_trust_scores(ctx, explanations: dict) -> None:
    """Adds ``faithfulness`` to the maps of the words asked for (or the caption's): the
    maps of one word, whatever their method, are scored in one batch against the same
    random maps."""
    steps, baseline = request_steps(ctx.captioner), None
    for i in ctx.words or [None]:
        entries = []
        for section in explanations.values():
            entry = section.get("caption") if i is None else (section.get("words") or [None] * (i + 1))[i]
            if isinstance(entry, dict) and entry.get("heatmap"):
                entries.append(entry)
        if not entries:
            continue
        if baseline is None:     # once a request: the frame's, from the cache when kept
            baseline = frame_baseline(ctx.captioner, ctx.pixels, ctx.target, steps)
        curves = deletion_curves(ctx.captioner, ctx.pixels, ctx.target, i,
                                 [e["heatmap"] for e in entries], steps, RANDOM_MAPS,
                                 baseline=baseline)
        for entry, curve in zip(entries, curves):
            entry["faithfulness"] = trust_score(ctx, i, curve)


def frame_baseline(captioner, pixels, target, steps: int) -> np.ndarray:
    """``random_baseline`` of this frame and caption, from the cache when it was computed
    for an earlier request (least recently used frames are dropped first)."""
    pixels = np.ascontiguousarray(pixels, np.float32)
    key = (hashlib.blake2b(pixels.tobytes(), digest_size=16).hexdigest(), tuple(target.words),
           steps, RANDOM_MAPS)
    with _lock:
        kept = _baselines.setdefault(captioner, OrderedDict())
        if key in kept:
            kept.move_to_end(key)
            return kept[key]
    baseline = random_baseline(captioner, pixels, target, steps, RANDOM_MAPS)
    with _lock:
        kept[key] = baseline
        while len(kept) > BASELINES_KEPT:
            kept.popitem(last=False)
    return baseline


def _rounded(values) -> list[float]:
    return [round(float(v), 4) for v in values]
