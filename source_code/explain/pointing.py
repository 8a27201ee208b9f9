"""Pointing game on synthetic scenes: does a word's map peak on the object the word names?

Either the scene's true caption or the model's own caption is explained
(teacher forcing). In the model's caption each described object is matched to
the scene object with the same (color, shape) (unique in a scene); words of a
described object that matches none are not scored. The map is upsampled to the image and its
maximum taken; a hit is a peak inside that object's mask grown by
``tolerance`` pixels (Zhang et al. 2016 use 15 px on ~224 px images; the
default here, 4 px at 160 px, is stricter). A miss on the other object is
counted separately from a miss on the background.
"""
from __future__ import annotations

from collections import defaultdict

from scipy import ndimage

from ..data.synthetic import WORD_KIND
from .maps import peak

CATEGORY = WORD_KIND     # shapes-world word -> size / color / shape
# Peak tolerance per world: 4 px at the shapes world's 160 px; 8 px at the objects
# world's 224 px (Zhang et al. 2016 use 15 px at about 224 px).
WORLD_TOLERANCE = {"shapes": 4, "objects": 8}


def word_objects(scene, caption: str) -> list[int | None] | None:
    """For each word of ``caption``, the index of the scene object it describes
    (None for articles and relation words); None when the caption is outside the grammar."""
    return scene.objects_named_by(caption)


def pointing_hits(word_maps, scene, caption: str | None = None, tolerance: int = 4):
    """Yields (word, category, outcome) with outcome 'hit', 'other' or 'background'."""
    caption = caption or scene.caption
    objects = word_objects(scene, caption)
    if objects is None:
        return
    h, w = scene.image.shape[:2]
    grown = [ndimage.binary_dilation(o.mask, iterations=tolerance) if tolerance else o.mask
             for o in scene.objects]
    kind_of = scene.word_kind
    for word, obj, m in zip(caption.split(), objects, word_maps):
        if obj is None or kind_of(word) is None:
            continue
        r, c = peak(m, h, w)
        if grown[obj][r, c]:
            outcome = "hit"
        elif any(g[r, c] for i, g in enumerate(grown) if i != obj):
            outcome = "other"
        else:
            outcome = "background"
        yield word, kind_of(word), outcome


def pointing_game(explain_words, scenes, tolerance: int = 4) -> dict:
    """explain_words(scene) -> (caption, [T, h, w] maps for the caption's words)."""
    counts = defaultdict(lambda: defaultdict(int))
    for scene in scenes:
        caption, maps = explain_words(scene)
        for _, category, outcome in pointing_hits(maps, scene, caption, tolerance):
            for key in (category, "all"):
                counts[key][outcome] += 1
    out = {}
    for key, c in counts.items():
        n = sum(c.values())
        out[key] = {"hit_rate": c["hit"] / n, "other_object": c["other"] / n,
                    "background": c["background"] / n, "words": n}
    return out
