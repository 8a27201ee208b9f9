"""Synthetic captioned scenes: the offline world the default model is trained on.

Each scene is a square RGB image of one or two coloured shapes on a light,
paper-like background, with a caption from a tiny grammar::

    a {size} {color} {shape}
    a {size} {color} {shape} {relation} a {size} {color} {shape}

and, for every object, a pixel mask, so that explanations can be scored against
ground truth (pointing game: the peak of a word's map falls on the object that
word describes).

Geometry conventions
--------------------
* Pixel ``(row i, column j)`` has its centre at the point ``(x=j, y=i)``; the
  image covers ``[-0.5, side - 0.5]`` on both axes and ``y`` grows downward, so
  "above" means a smaller ``y``.
* An object's *extent* is the width of the unrotated shape: the diameter of a
  circle, the side of a square, the base of an (equilateral) triangle. ``small``
  is 15-25 % of the image side, ``large`` 35-45 %.
* The relation of a two-object caption ``A rel B`` describes A relative to B and
  comes from the larger axis of ``centre(A) - centre(B)``; layouts whose
  ``|dx|`` and ``|dy|`` are too close to call are never generated.
* Every object keeps ``BORDER_MARGIN`` of the side away from the border, so a
  10 % centre zoom (``degrade(image, "zoom")``) never cuts an object.

The appearance imitates a webcam looking at a printed sheet: tinted and softly
textured light backgrounds, jittered ink colours, small rotations, global
lighting and colour casts, slight blur, sensor noise and optional JPEG
artefacts. Everything is drawn at the final resolution with analytic
anti-aliasing (coverage from a signed distance), which is exact to a fraction
of a pixel and keeps 1,000 scenes at 160 px to a few seconds.

Everything is deterministic: the same seed and arguments give identical bytes.
"""

from __future__ import annotations

import colorsys
import io
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from PIL import Image, ImageFilter

from ..files import atomic_path, atomic_write_text

__all__ = [
    "SHAPES",
    "COLORS",
    "SIZES",
    "RELATIONS",
    "NOMINAL_RGB",
    "DEGRADATIONS",
    "SceneObject",
    "Scene",
    "generate_scene",
    "parse_caption",
    "canonical_caption",
    "equivalent_captions",
    "reading_order_caption",
    "swap_caption_for_flip",
    "degrade",
    "write_flickr8k_layout",
]

# ---------------------------------------------------------------------------
# Vocabulary of the grammar
# ---------------------------------------------------------------------------

SHAPES = ("circle", "square", "triangle")
COLORS = ("red", "green", "blue", "yellow")
SIZES = ("small", "large")
# what each attribute word describes (the pointing game scores these words)
WORD_KIND = {**{w: "size" for w in SIZES}, **{w: "color" for w in COLORS},
             **{w: "shape" for w in SHAPES}}
RELATIONS = ("left of", "right of", "above", "below")

#: Relation of B to A given the relation of A to B.
INVERSE_RELATION = {
    "left of": "right of",
    "right of": "left of",
    "above": "below",
    "below": "above",
}

#: Words that belong to a relation (never describe an object).
RELATION_WORDS = frozenset(w for r in RELATIONS for w in r.split())

#: Reference ink colours; generated colours are jittered around these.
NOMINAL_RGB = {
    "red": (215, 40, 35),
    "green": (40, 150, 60),
    "blue": (40, 75, 200),
    "yellow": (240, 205, 30),
}

# Ink colour ranges in HSV (hue in degrees, may wrap below 0 for red).
# The hue ranges stay far apart, so yellow never turns olive/green and red
# never turns orange.
_INK_HSV_RANGES = {
    "red": ((-6.0, 6.0), (0.78, 0.95), (0.72, 0.90)),
    "green": ((110.0, 145.0), (0.55, 0.85), (0.48, 0.70)),
    "blue": ((214.0, 234.0), (0.65, 0.90), (0.60, 0.85)),
    "yellow": ((48.0, 56.0), (0.78, 0.95), (0.90, 1.00)),
}

#: Extent of the unrotated shape as a fraction of the image side.
SIZE_RANGES = {"small": (0.15, 0.25), "large": (0.35, 0.45)}

#: Minimum distance from any object to the border, as a fraction of the side.
BORDER_MARGIN = 0.06
#: Minimum gap between the two objects, as a fraction of the side.
OBJECT_GAP = 0.04
#: Two-object layouts need min(|dx|, |dy|) <= AMBIGUITY_RATIO * max(|dx|, |dy|).
AMBIGUITY_RATIO = 0.75
#: Largest rotation of squares and triangles, in degrees.
MAX_ROTATION_DEG = 15.0
#: Probability that a scene has a single object when n_objects is None.
P_ONE_OBJECT = 0.4
#: Probability of JPEG artefacts when jpeg_quality is None, and their range.
P_JPEG = 0.5
JPEG_QUALITY_RANGE = (60, 95)

#: Test-time degradations understood by `degrade`.
DEGRADATIONS = ("jpeg40", "noise", "brighter", "darker", "zoom")

# Paper tints (off-white, cream, light greys, a cool and a warm tint).
_PAPER_TINTS = np.array(
    [
        (246, 245, 240),
        (244, 238, 218),
        (236, 236, 234),
        (222, 223, 222),
        (228, 232, 238),
        (240, 232, 226),
    ],
    dtype=np.float32,
)

_CIRCLE_POLYGON_SIDES = 32  # only for the overlap test; circles render exactly


# ---------------------------------------------------------------------------
# Data classes
# ---------------------------------------------------------------------------


@dataclass
class SceneObject:
    """One shape of a scene.

    ``center`` is the shape's centroid ``(x, y)`` in pixels (pixel ``(i, j)``
    has its centre at ``x=j, y=i``); ``mask`` is True on the pixels whose
    centre lies inside the shape. ``extent`` is the unrotated width in pixels
    and ``angle`` the rotation in degrees (counter-clockwise on screen).
    """

    shape: str
    color: str
    size: str
    center: tuple[float, float]
    mask: np.ndarray
    extent: float = 0.0
    angle: float = 0.0

    @property
    def words(self) -> tuple[str, str, str]:
        """The caption words of the object: (size, color, shape)."""
        return (self.size, self.color, self.shape)

    @property
    def bbox(self) -> tuple[int, int, int, int]:
        """Bounding box of the mask, ``(x0, y0, x1, y1)`` with x1/y1 exclusive."""
        rows = np.flatnonzero(self.mask.any(axis=1))
        cols = np.flatnonzero(self.mask.any(axis=0))
        if rows.size == 0:
            return (0, 0, 0, 0)
        return (int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1)


@dataclass
class Scene:
    """A generated image with its caption and ground truth.

    ``objects`` are in caption order (``objects[0]`` is described first);
    ``relation`` is the relation of ``objects[0]`` to ``objects[1]``, or None
    for a one-object scene.
    """

    image: np.ndarray
    caption: str
    objects: list[SceneObject]
    relation: str | None
    seed: int
    jpeg_quality: int | None = field(default=None)

    def word_object_index(self) -> list[int | None]:
        """For each word of ``caption.split()``, the index of the object it
        describes (size, color and shape words), or None ("a", relation words)."""
        return _word_object_index(self.caption)

    def objects_named_by(self, caption: str) -> list[int | None] | None:
        """For each word of any caption of the grammar (the model's, say), the scene
        object it describes; None outside the grammar."""
        return words_to_objects(caption, [(o.color, o.shape) for o in self.objects])

    @staticmethod
    def word_kind(word: str) -> str | None:
        """Words the pointing game scores, by kind: size, color or shape."""
        return WORD_KIND.get(word)


def words_to_objects(caption: str, object_keys: Sequence[tuple[str, str]]) -> list[int | None] | None:
    """For each word of a shapes caption, the index of the scene object it describes,
    matched by (color, shape), unique in a scene; None for articles, relation words and
    objects the scene does not hold. None when the caption is outside the grammar."""
    try:
        described, _ = parse_caption(caption)
    except ValueError:
        return None
    keys = list(object_keys)
    matched = [keys.index((color, shape)) if (color, shape) in keys else None
               for _, color, shape in described]
    return [None if k is None else matched[k] for k in _word_object_index(caption)]


def _word_object_index(caption: str, articles=frozenset({"a"})) -> list[int | None]:
    """Object index per word: the k-th article starts object k (the objects world also
    has "an"); articles and relation words name no object."""
    out: list[int | None] = []
    current = -1
    for word in caption.split():
        if word in articles:
            current += 1
            out.append(None)
        elif word in RELATION_WORDS:
            out.append(None)
        else:
            out.append(max(current, 0))
    return out


# ---------------------------------------------------------------------------
# Captions
# ---------------------------------------------------------------------------


def _object_phrase(words: Sequence[str]) -> str:
    size, color, shape = words
    return f"a {size} {color} {shape}"


def _compose_caption(objects: Sequence[Sequence[str]], relation: str | None) -> str:
    if len(objects) == 1:
        return _object_phrase(objects[0])
    return f"{_object_phrase(objects[0])} {relation} {_object_phrase(objects[1])}"


def _parse_object(tokens: Sequence[str]) -> tuple[str, str, str]:
    if len(tokens) != 4 or tokens[0] != "a":
        raise ValueError(f"expected 'a <size> <color> <shape>', got {' '.join(tokens)!r}")
    _, size, color, shape = tokens
    if size not in SIZES or color not in COLORS or shape not in SHAPES:
        raise ValueError(f"unknown size/color/shape in {' '.join(tokens)!r}")
    return (size, color, shape)


def parse_caption(caption: str) -> tuple[list[tuple[str, str, str]], str | None]:
    """Parse a caption of the grammar.

    Returns the objects' ``(size, color, shape)`` in caption order and the
    relation (None for one object). Case and surrounding whitespace are
    ignored. Raises ValueError for anything outside the grammar. The check is
    syntactic: two objects with the same (color, shape) still parse.

    >>> parse_caption("a small red circle left of a large blue square")
    ([('small', 'red', 'circle'), ('large', 'blue', 'square')], 'left of')
    """
    if not isinstance(caption, str):
        raise ValueError(f"caption must be a string, got {type(caption).__name__}")
    tokens = caption.strip().lower().split()
    if len(tokens) == 4:
        return [_parse_object(tokens)], None
    if len(tokens) in (9, 10):
        rel_len = len(tokens) - 8
        relation = " ".join(tokens[4 : 4 + rel_len])
        if relation not in RELATIONS:
            raise ValueError(f"unknown relation {relation!r} in {caption!r}")
        first = _parse_object(tokens[:4])
        second = _parse_object(tokens[4 + rel_len :])
        return [first, second], relation
    raise ValueError(f"caption outside the grammar: {caption!r}")


def _object_key(words: tuple[str, str, str]) -> tuple[int, int, int]:
    size, color, shape = words
    return (SHAPES.index(shape), COLORS.index(color), SIZES.index(size))


def equivalent_captions(caption: str) -> list[str]:
    """All captions of the grammar that say the same thing, the input's
    (normalised) form first: one caption for one object, the two orderings for
    two objects. Raises ValueError for a caption outside the grammar."""
    objects, relation = parse_caption(caption)
    own = _compose_caption(objects, relation)
    if relation is None:
        return [own]
    other = _compose_caption(objects[::-1], INVERSE_RELATION[relation])
    return [own] if other == own else [own, other]


def reading_order_caption(caption: str) -> str:
    """The ordering that reads the scene left to right, top to bottom: the left (or
    upper) object first, so the relation is "left of" or "above"."""
    for option in equivalent_captions(caption):
        if parse_caption(option)[1] in (None, "left of", "above"):
            return option
    return caption


def canonical_caption(caption: str) -> str:
    """One canonical form per meaning.

    The two orderings of a two-object caption map to the same string
    ("a red circle left of a blue square" and "a blue square right of a red
    circle" agree). Captions outside the grammar come back lower-cased with
    whitespace normalised, otherwise unchanged.
    """
    try:
        objects, relation = parse_caption(caption)
    except ValueError:
        return " ".join(caption.strip().lower().split())
    if relation is None:
        return _compose_caption(objects, None)
    first, second = objects
    candidates = [
        (_object_key(first), _object_key(second), RELATIONS.index(relation),
         _compose_caption([first, second], relation)),
        (_object_key(second), _object_key(first), RELATIONS.index(INVERSE_RELATION[relation]),
         _compose_caption([second, first], INVERSE_RELATION[relation])),
    ]
    return min(candidates)[3]


_FLIP_SWAPS = {True: {"left": "right", "right": "left"}, False: {"above": "below", "below": "above"}}


def swap_caption_for_flip(caption: str, horizontal: bool) -> str:
    """Caption of the mirrored image.

    A horizontal flip swaps "left" and "right", a vertical flip swaps "above"
    and "below". Works word by word on any text (other words, spacing and
    punctuation are kept), so it also applies to tokenised captions.
    """
    swaps = _FLIP_SWAPS[bool(horizontal)]
    pattern = re.compile(r"\b(" + "|".join(swaps) + r")\b", flags=re.IGNORECASE)

    def replace(match: re.Match) -> str:
        word = match.group(0)
        new = swaps[word.lower()]
        if word.isupper():
            return new.upper()
        if word[0].isupper():
            return new.capitalize()
        return new

    return pattern.sub(replace, caption)


def _relation_of(center_a: tuple[float, float], center_b: tuple[float, float]) -> str:
    """Relation of A to B from the larger axis of centre(A) - centre(B)."""
    dx = center_a[0] - center_b[0]
    dy = center_a[1] - center_b[1]
    if abs(dx) >= abs(dy):
        return "left of" if dx < 0 else "right of"
    return "above" if dy < 0 else "below"


# ---------------------------------------------------------------------------
# Geometry
# ---------------------------------------------------------------------------


def _rotation(angle_deg: float) -> np.ndarray:
    # Counter-clockwise on screen, with y pointing down.
    t = math.radians(angle_deg)
    c, s = math.cos(t), math.sin(t)
    return np.array([[c, s], [-s, c]], dtype=np.float64)


def _shape_outline(shape: str, extent: float, angle: float) -> np.ndarray:
    """Vertices (k x 2, x/y relative to the centroid) of the shape's outline.

    Circles get a circumscribed polygon (used only for layout checks)."""
    if shape == "circle":
        k = _CIRCLE_POLYGON_SIDES
        radius = extent / 2 / math.cos(math.pi / k)
        t = 2 * math.pi * (np.arange(k) + 0.5) / k
        return np.stack([radius * np.cos(t), radius * np.sin(t)], axis=1)
    if shape == "square":
        h = extent / 2
        pts = np.array([[-h, -h], [h, -h], [h, h], [-h, h]], dtype=np.float64)
    elif shape == "triangle":
        # Equilateral, apex up, centroid at the origin.
        height = extent * math.sqrt(3) / 2
        pts = np.array(
            [[0.0, -2 * height / 3], [extent / 2, height / 3], [-extent / 2, height / 3]],
            dtype=np.float64,
        )
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return pts @ _rotation(angle).T


def _edge_normals(poly: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Outward unit normals and offsets of a convex polygon's edges
    (point p is inside when normals @ p <= offsets for all edges)."""
    centroid = poly.mean(axis=0)
    edges = np.roll(poly, -1, axis=0) - poly
    normals = np.stack([edges[:, 1], -edges[:, 0]], axis=1)
    normals /= np.linalg.norm(normals, axis=1, keepdims=True)
    # Orient outward whatever the vertex order.
    flip = np.einsum("ij,ij->i", normals, poly - centroid) < 0
    normals[flip] *= -1
    offsets = np.einsum("ij,ij->i", normals, poly)
    return normals, offsets


def _separation(poly_a: np.ndarray, poly_b: np.ndarray, offsets_ba: np.ndarray) -> np.ndarray:
    """Lower bound on the distance between convex polygon A (centred at 0) and
    B (centred at each row of ``offsets_ba``), by the separating axis theorem
    over both polygons' edge normals. Negative where they may overlap."""
    axes = np.concatenate([_edge_normals(poly_a)[0], _edge_normals(poly_b)[0]])
    proj_a = poly_a @ axes.T  # (ka, n_axes)
    proj_b = poly_b @ axes.T
    min_a, max_a = proj_a.min(axis=0), proj_a.max(axis=0)
    min_b, max_b = proj_b.min(axis=0), proj_b.max(axis=0)
    d = offsets_ba @ axes.T  # (n, n_axes)
    gap = np.maximum(d + min_b - max_a, min_a - max_b - d)
    return gap.max(axis=1)


def _coverage(shape: str, center: np.ndarray, extent: float, angle: float, side: int) -> np.ndarray:
    """Anti-aliased coverage (side x side float32 in [0, 1]) of one shape.

    Coverage is ``clip(0.5 - signed_distance, 0, 1)`` in pixels, an accurate
    approximation of the pixel area inside the shape; it is 0.5 exactly on the
    outline, so ``coverage >= 0.5`` is the set of pixel centres inside."""
    alpha = np.zeros((side, side), dtype=np.float32)
    outline = _shape_outline(shape, extent, angle) + center
    x0 = max(int(math.floor(outline[:, 0].min())) - 2, 0)
    x1 = min(int(math.ceil(outline[:, 0].max())) + 3, side)
    y0 = max(int(math.floor(outline[:, 1].min())) - 2, 0)
    y1 = min(int(math.ceil(outline[:, 1].max())) + 3, side)
    xs = np.arange(x0, x1, dtype=np.float32)[None, :]
    ys = np.arange(y0, y1, dtype=np.float32)[:, None]
    if shape == "circle":
        dist = np.sqrt((xs - center[0]) ** 2 + (ys - center[1]) ** 2) - extent / 2
    else:
        normals, offsets = _edge_normals(outline)
        dist = np.full((y1 - y0, x1 - x0), -np.inf, dtype=np.float32)
        for (nx, ny), off in zip(normals, offsets):
            dist = np.maximum(dist, nx * xs + ny * ys - off)
    alpha[y0:y1, x0:x1] = np.clip(0.5 - dist, 0.0, 1.0)
    return alpha


# ---------------------------------------------------------------------------
# Layout
# ---------------------------------------------------------------------------


@dataclass
class _Placed:
    shape: str
    color: str
    size: str
    extent: float
    angle: float
    center: np.ndarray
    outline: np.ndarray  # relative to the centre


def _sample_extent_angle(rng: np.random.Generator, shape: str, size: str, side: int) -> tuple[float, float]:
    lo, hi = SIZE_RANGES[size]
    extent = float(rng.uniform(lo, hi)) * side
    angle = 0.0 if shape == "circle" else float(rng.uniform(-MAX_ROTATION_DEG, MAX_ROTATION_DEG))
    return extent, angle


def _center_box(outline: np.ndarray, side: int) -> tuple[np.ndarray, np.ndarray]:
    """Range of centres keeping the outline BORDER_MARGIN inside the frame."""
    margin = BORDER_MARGIN * side
    low = -0.5 + margin - outline.min(axis=0)
    high = side - 0.5 - margin - outline.max(axis=0)
    return low, high


def _layout(rng: np.random.Generator, side: int, n_objects: int) -> list[_Placed]:
    """Pick attributes and non-overlapping, unambiguous positions."""
    pairs = [(c, s) for c in COLORS for s in SHAPES]
    while True:
        chosen = rng.choice(len(pairs), size=n_objects, replace=False)
        attrs = [(pairs[i][0], pairs[i][1], SIZES[int(rng.integers(len(SIZES)))]) for i in chosen]
        # A few rounds of extents/angles for these attributes before giving up
        # on them (two large objects do not always fit side by side).
        for _ in range(12):
            geoms = []
            for color, shape, size in attrs:
                extent, angle = _sample_extent_angle(rng, shape, size, side)
                outline = _shape_outline(shape, extent, angle)
                low, high = _center_box(outline, side)
                geoms.append((color, shape, size, extent, angle, outline, low, high))
            if any(np.any(g[7] < g[6]) for g in geoms):
                continue
            if n_objects == 1:
                color, shape, size, extent, angle, outline, low, high = geoms[0]
                center = rng.uniform(low, high)
                return [_Placed(shape, color, size, extent, angle, center, outline)]
            (ca, sa, za, ea, aa, oa, la, ha), (cb, sb, zb, eb, ab, ob, lb, hb) = geoms
            n_try = 64
            centers_a = rng.uniform(la, ha, size=(n_try, 2))
            centers_b = rng.uniform(lb, hb, size=(n_try, 2))
            delta = centers_b - centers_a
            adx, ady = np.abs(delta[:, 0]), np.abs(delta[:, 1])
            clear = np.minimum(adx, ady) <= AMBIGUITY_RATIO * np.maximum(adx, ady)
            apart = _separation(oa, ob, delta) >= OBJECT_GAP * side
            ok = np.flatnonzero(clear & apart)
            if ok.size:
                k = ok[0]
                return [
                    _Placed(sa, ca, za, ea, aa, centers_a[k], oa),
                    _Placed(sb, cb, zb, eb, ab, centers_b[k], ob),
                ]


# ---------------------------------------------------------------------------
# Appearance
# ---------------------------------------------------------------------------


def _smooth_field(rng: np.random.Generator, side: int, cells: int) -> np.ndarray:
    """Smooth random field in about [-1, 1] (bicubic upsampling of a coarse grid)."""
    coarse = rng.uniform(-1.0, 1.0, size=(cells, cells)).astype(np.float32)
    img = Image.fromarray(coarse).resize((side, side), Image.Resampling.BICUBIC)
    return np.asarray(img, dtype=np.float32)


def _linear_ramp(rng: np.random.Generator, side: int) -> np.ndarray:
    """A linear ramp in [-1, 1] along a random direction."""
    t = rng.uniform(0, 2 * math.pi)
    coords = (np.arange(side, dtype=np.float32) - (side - 1) / 2) / (side / 2)
    return (math.cos(t) * coords[None, :] + math.sin(t) * coords[:, None]) / math.sqrt(2)


def _background(rng: np.random.Generator, side: int) -> np.ndarray:
    tint = _PAPER_TINTS[rng.integers(len(_PAPER_TINTS))] + rng.uniform(-6, 6, size=3)
    bg = np.broadcast_to(tint, (side, side, 3)).astype(np.float32)
    style = rng.random()
    if style < 0.3:  # plain sheet
        pass
    elif style < 0.65:  # soft gradient
        bg = bg + rng.uniform(6, 18) * _linear_ramp(rng, side)[..., None]
    else:  # low-contrast blotchy texture plus a faint gradient
        amp = rng.uniform(3, 8)
        bg = bg + amp * _smooth_field(rng, side, int(rng.integers(4, 9)))[..., None]
        bg = bg + rng.uniform(0, 8) * _linear_ramp(rng, side)[..., None]
    # Fine paper grain.
    if rng.random() < 0.5:
        bg = bg + rng.uniform(1, 3) * _smooth_field(rng, side, max(side // 4, 2))[..., None]
    return bg


def _ink_rgb(rng: np.random.Generator, color: str) -> np.ndarray:
    (h_lo, h_hi), (s_lo, s_hi), (v_lo, v_hi) = _INK_HSV_RANGES[color]
    h = (rng.uniform(h_lo, h_hi) % 360.0) / 360.0
    s = rng.uniform(s_lo, s_hi)
    v = rng.uniform(v_lo, v_hi)
    return np.array(colorsys.hsv_to_rgb(h, s, v), dtype=np.float32) * 255.0


def _lighting(rng: np.random.Generator, side: int) -> np.ndarray:
    """Multiplicative illumination: global level, colour cast, soft falloff."""
    level = rng.uniform(0.85, 1.10)
    cast = 1.0 + rng.uniform(-0.05, 0.05, size=3)
    falloff = rng.uniform(0.0, 0.12) * _linear_ramp(rng, side)
    if rng.random() < 0.4:  # vignette-like darkening of the corners
        c = (np.arange(side, dtype=np.float32) - (side - 1) / 2) / (side / 2)
        r2 = c[None, :] ** 2 + c[:, None] ** 2
        falloff = falloff - rng.uniform(0.0, 0.08) * r2
    return (level * (1.0 + falloff))[..., None] * cast.astype(np.float32)


def _jpeg_roundtrip(image: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=int(quality))
    buf.seek(0)
    with Image.open(buf) as img:
        return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()


def _render(rng: np.random.Generator, side: int, placed: list[_Placed]) -> tuple[np.ndarray, list[np.ndarray]]:
    canvas = _background(rng, side)
    masks = []
    for obj in placed:
        alpha = _coverage(obj.shape, obj.center, obj.extent, obj.angle, side)
        ink = _ink_rgb(rng, obj.color)
        # Slightly uneven ink: a faint low-frequency modulation.
        ink_field = ink * (1.0 + rng.uniform(0, 0.04) * _smooth_field(rng, side, 5)[..., None])
        canvas = canvas + alpha[..., None] * (ink_field - canvas)
        masks.append(alpha >= 0.5)
    canvas = canvas * _lighting(rng, side)
    image = Image.fromarray(np.clip(canvas + 0.5, 0, 255).astype(np.uint8))
    image = image.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0.3, 0.9))))
    out = np.asarray(image, dtype=np.float32)
    sigma = rng.uniform(0.5, 4.0)
    out = out + rng.normal(0.0, sigma, size=out.shape).astype(np.float32)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8), masks


# ---------------------------------------------------------------------------
# Public generator
# ---------------------------------------------------------------------------


def generate_scene(
    seed: int,
    image_size: int = 160,
    n_objects: int | None = None,
    jpeg_quality: int | None = None,
) -> Scene:
    """Generate one captioned scene, deterministically from ``seed``.

    Args:
        seed: any non-negative integer; same seed and arguments give the same
            image bytes.
        image_size: side of the square image in pixels (at least 32).
        n_objects: 1 or 2; None draws 1 (40 %) or 2 (60 %).
        jpeg_quality: JPEG quality of the artefacts baked into the image; None
            draws one in [60, 95] half of the time (else no JPEG); 0 or less
            means no JPEG.

    Returns:
        A `Scene` whose objects are in caption order.
    """
    seed = int(seed)
    if seed < 0:
        raise ValueError("seed must be non-negative")
    side = int(image_size)
    if side < 32:
        raise ValueError("image_size must be at least 32")
    if n_objects not in (None, 1, 2):
        raise ValueError("n_objects must be 1, 2 or None")
    rng = np.random.default_rng(seed)
    if n_objects is None:
        n_objects = 1 if rng.random() < P_ONE_OBJECT else 2
    use_jpeg = rng.random() < P_JPEG  # always drawn, so the stream does not depend on jpeg_quality
    drawn_quality = int(rng.integers(JPEG_QUALITY_RANGE[0], JPEG_QUALITY_RANGE[1] + 1))
    if jpeg_quality is None:
        quality = drawn_quality if use_jpeg else None
    else:
        quality = int(jpeg_quality) if int(jpeg_quality) > 0 else None

    placed = _layout(rng, side, n_objects)
    image, masks = _render(rng, side, placed)
    if quality is not None:
        image = _jpeg_roundtrip(image, min(quality, 100))

    objects = [
        SceneObject(
            shape=p.shape,
            color=p.color,
            size=p.size,
            center=(float(p.center[0]), float(p.center[1])),
            mask=m,
            extent=p.extent,
            angle=p.angle,
        )
        for p, m in zip(placed, masks)
    ]
    relation = _relation_of(objects[0].center, objects[1].center) if n_objects == 2 else None
    caption = _compose_caption([o.words for o in objects], relation)
    return Scene(image=image, caption=caption, objects=objects, relation=relation, seed=seed,
                 jpeg_quality=quality)


# ---------------------------------------------------------------------------
# Test-time degradations
# ---------------------------------------------------------------------------

ZOOM_CROP_FRACTION = 0.05  # cropped from each side by the "zoom" degradation


def degrade(image: np.ndarray, kind: str, seed: int = 0) -> np.ndarray:
    """Apply one test-time degradation; same shape and dtype (uint8) out.

    kinds: ``jpeg40`` (JPEG quality 40), ``noise`` (Gaussian, sigma 12 grey
    levels, seeded), ``brighter`` / ``darker`` (x1.25 / x0.75), ``zoom`` (crop
    5 % from each side, resize back: a 10 % centre zoom).
    """
    arr = np.asarray(image)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 uint8 image, got {arr.dtype} {arr.shape}")
    if kind == "jpeg40":
        return _jpeg_roundtrip(arr, 40)
    if kind == "noise":
        rng = np.random.default_rng(seed)
        noisy = arr.astype(np.float32) + rng.normal(0.0, 12.0, size=arr.shape)
        return np.clip(np.rint(noisy), 0, 255).astype(np.uint8)
    if kind in ("brighter", "darker"):
        factor = 1.25 if kind == "brighter" else 0.75
        return np.clip(np.rint(arr.astype(np.float32) * factor), 0, 255).astype(np.uint8)
    if kind == "zoom":
        h, w = arr.shape[:2]
        cy, cx = int(round(h * ZOOM_CROP_FRACTION)), int(round(w * ZOOM_CROP_FRACTION))
        crop = Image.fromarray(arr[cy : h - cy, cx : w - cx])
        return np.asarray(crop.resize((w, h), Image.Resampling.LANCZOS), dtype=np.uint8).copy()
    raise ValueError(f"unknown degradation {kind!r}; expected one of {DEGRADATIONS}")


# ---------------------------------------------------------------------------
# Dataset writer (Flickr8k layout)
# ---------------------------------------------------------------------------


def scene_file_name(seed: int) -> str:
    """File name of a scene in the Flickr8k-layout dataset."""
    return f"scene_{int(seed):07d}.jpg"


def _write_text_atomic(path: Path, lines: Iterable[str]) -> None:
    atomic_write_text(path, "".join(line + "\n" for line in lines))


def _split_counts(n: int, split: Sequence[float]) -> tuple[int, int, int]:
    if len(split) != 3 or any(f < 0 for f in split) or not math.isclose(sum(split), 1.0, abs_tol=1e-6):
        raise ValueError(f"split must be three non-negative fractions summing to 1, got {split}")
    n_train = int(round(n * split[0]))
    n_dev = min(int(round(n * split[1])), n - n_train)
    return n_train, n_dev, n - n_train - n_dev


def write_flickr8k_layout(
    out_dir,
    n_images: int,
    seed: int = 0,
    image_size: int = 160,
    split: Sequence[float] = (0.8, 0.1, 0.1),
    progress: bool = True,
) -> Path:
    """Write scenes ``seed .. seed + n_images - 1`` as a Flickr8k-style dataset.

    Layout under ``out_dir``:
      * ``Images/scene_{seed:07d}.jpg`` (JPEG quality 95, no chroma subsampling);
      * ``Flickr8k.token.txt``: ``<file>#<k>\\t<caption>``; two-object scenes get
        both equivalent orderings, #0 in reading order (left or upper object
        first, see ``reading_order_caption``);
      * ``Flickr_8k.{train,dev,test}Images.txt``: contiguous runs of seeds in
        that order, sized by ``split``;
      * ``scenes.jsonl``: file, seed, image_size, caption, relation and objects
        (shape, color, size, center, bbox as [x0, y0, x1, y1) in pixels) per
        scene; masks are regenerated with ``generate_scene(seed, image_size)``.

    Each image is written to a temporary name and renamed, and the text files
    are written last the same way, so an interrupted run leaves no partial file
    under a final name. Returns ``out_dir`` as a Path.
    """
    from tqdm import tqdm

    n_images = int(n_images)
    if n_images < 1:
        raise ValueError("n_images must be at least 1")
    counts = _split_counts(n_images, split)
    out = Path(out_dir)
    images_dir = out / "Images"
    images_dir.mkdir(parents=True, exist_ok=True)

    names: list[str] = []
    token_lines: list[str] = []
    records: list[str] = []
    for scene_seed in tqdm(range(seed, seed + n_images), desc="synthetic scenes", unit="img",
                           disable=not progress):
        scene = generate_scene(scene_seed, image_size=image_size)
        name = scene_file_name(scene_seed)
        with atomic_path(images_dir / name) as tmp:
            Image.fromarray(scene.image).save(tmp, format="JPEG", quality=95, subsampling=0)
        names.append(name)
        first = reading_order_caption(scene.caption)
        ordered = [first] + [c for c in equivalent_captions(scene.caption) if c != first]
        for k, caption in enumerate(ordered):
            token_lines.append(f"{name}#{k}\t{caption}")
        records.append(json.dumps({
            "file": name,
            "seed": scene_seed,
            "image_size": int(image_size),
            "caption": scene.caption,
            "relation": scene.relation,
            "objects": [
                {
                    "shape": o.shape,
                    "color": o.color,
                    "size": o.size,
                    "center": [round(o.center[0], 3), round(o.center[1], 3)],
                    "bbox": list(o.bbox),
                }
                for o in scene.objects
            ],
        }))

    n_train, n_dev, _ = counts
    _write_text_atomic(out / "Flickr_8k.trainImages.txt", names[:n_train])
    _write_text_atomic(out / "Flickr_8k.devImages.txt", names[n_train : n_train + n_dev])
    _write_text_atomic(out / "Flickr_8k.testImages.txt", names[n_train + n_dev :])
    _write_text_atomic(out / "scenes.jsonl", records)
    _write_text_atomic(out / "Flickr8k.token.txt", token_lines)
    return out
