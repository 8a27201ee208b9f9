"""The objects world: one or two everyday things pasted on varied backgrounds.

The "cut, paste and learn" recipe (Dwibedi et al. 2017): photographic cut-outs,
clip art and emoji with alpha masks (see ``objects_catalog.json``) are scaled,
rotated, mirrored and recoloured a little, pasted without overlap on a
photograph or a plain surface, and the frame is then lit, blurred, noised and
JPEG-compressed like a webcam's. Captions follow the shapes world's grammar
with object nouns: ``a cup``, ``an apple left of a person`` (reading order: the
left or upper object first, the relation from the larger axis of the
displacement between the box centres). Every object's mask and box is
returned, so explanations are scored against ground truth. Deterministic per
seed for a given catalogue.
"""
from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

from ..files import atomic_path

from .objects_catalog import Catalog, available, load_catalog, render_source
# The grammar's relations and their geometry are the shapes world's.
from .synthetic import INVERSE_RELATION, RELATION_WORDS, _relation_of as relation_of
from .synthetic import _word_object_index

ARTICLES = frozenset({"a", "an"})
P_ONE_OBJECT = 0.4
ONE_OBJECT_SCALE = (0.40, 0.90)    # longer side of the object / image side
# Webcam framing: a face, a pet or a mug held up to the camera fills the frame and
# is cut by its edges. A share of one-object scenes is drawn that close.
P_CLOSE_UP = 0.3
CLOSE_UP_SCALE = (0.90, 1.45)
CLOSE_UP_MIN_VISIBLE = 0.55        # share of the object's box inside the frame
TWO_OBJECT_SCALE = (0.28, 0.46)
# A two-object layout is kept only when one axis of the centre displacement is
# clearly larger, so the relation word is never a coin toss.
AMBIGUITY_RATIO = 0.7
MAX_ROTATION_DEG = 18.0
P_PHOTO_BACKGROUND = 0.6
P_JPEG = 0.6
SOURCE_CACHE = 512                 # decoded cut-outs kept in memory
CARD_MARGIN = (0.1, 0.6)           # a card's margin around its object / the object's size
# Two pictures held up side by side: each object fills a panel of its own (a photo,
# a print, a screen) in one half of the frame, as in the side-by-side photo pairs.
PANEL_WIDTH = (0.8, 1.0)           # a panel's width / half the frame's side
PANEL_ASPECT = (0.6, 1.4)          # height / width
PANEL_OBJECT_SCALE = (0.6, 1.1)   # the object's longer side / the panel's shorter side
PANEL_MIN_VISIBLE = 0.7            # share of the object's box inside its panel


@dataclass
class WorldObject:
    category: str
    source: str                  # which catalogue image it came from
    mask: np.ndarray             # [H, W] bool
    bbox: tuple[int, int, int, int]   # x0, y0, x1, y1 (exclusive)

    @property
    def center(self) -> tuple[float, float]:
        x0, y0, x1, y1 = self.bbox
        return ((x0 + x1) / 2, (y0 + y1) / 2)


@dataclass
class ObjectScene:
    image: np.ndarray
    caption: str
    objects: list[WorldObject]   # in caption order
    relation: str | None
    seed: int

    def word_object_index(self) -> list[int | None]:
        return caption_word_objects(self.caption)

    def objects_named_by(self, caption: str) -> list[int | None] | None:
        """For each word of any caption of the grammar, the scene object its noun names
        (by category, unique in a scene); None outside the grammar."""
        try:
            parse_object_caption(caption)
        except ValueError:
            return None
        index = {o.category: i for i, o in enumerate(self.objects)}
        words = caption.split()
        return [index.get(w) if k is not None else None
                for w, k in zip(words, caption_word_objects(caption))]

    @staticmethod
    def word_kind(word: str) -> str | None:
        """Words the pointing game scores: object nouns (not articles or relations)."""
        return None if word in ARTICLES or word in RELATION_WORDS else "object"


def caption_word_objects(caption: str) -> list[int | None]:
    """Which object each word names: the noun after the k-th article is object k."""
    return _word_object_index(caption, ARTICLES)


def caption_nouns(caption: str) -> list[str]:
    return [w for w, k in zip(caption.split(), caption_word_objects(caption)) if k is not None]


def object_phrase(catalog: Catalog, category: str) -> str:
    return f"{catalog.categories[category].article} {category}"


def compose_caption(catalog: Catalog, categories: Sequence[str], relation: str | None) -> str:
    if relation is None:
        return object_phrase(catalog, categories[0])
    return f"{object_phrase(catalog, categories[0])} {relation} {object_phrase(catalog, categories[1])}"


def parse_object_caption(caption: str) -> tuple[list[str], str | None]:
    """'an apple left of a cup' -> (['apple', 'cup'], 'left of'); ValueError outside the grammar."""
    words = caption.split()
    if len(words) == 2 and words[0] in ARTICLES:
        return [words[1]], None
    for relation in INVERSE_RELATION:
        rel = relation.split()
        n = len(rel)
        if (len(words) == 4 + n and words[0] in ARTICLES and words[2: 2 + n] == rel
                and words[2 + n] in ARTICLES):
            return [words[1], words[3 + n]], relation
    raise ValueError(f"not a caption of the objects world: {caption!r}")


def canonical_object_caption(caption: str) -> str:
    """One form per meaning: 'a cup right of a dog' and 'a dog left of a cup' agree."""
    try:
        nouns, relation = parse_object_caption(caption)
    except ValueError:
        return " ".join(caption.lower().split())
    if relation in ("right of", "below"):
        nouns, relation = nouns[::-1], INVERSE_RELATION[relation]
    return " ".join(nouns) + (f" {relation}" if relation else "")


# -- catalogue sources ------------------------------------------------------------
@lru_cache(maxsize=1)
def default_world() -> Catalog:
    """The catalogue with only the sources installed on this machine."""
    catalog, missing = available(load_catalog())
    if len([c for c in catalog.categories.values() if c.sources]) < 2:
        raise RuntimeError("the objects world needs its asset packages (tuxpaint-stamps-default, "
                           "openclipart-png, fonts-noto-color-emoji): apt-get install them")
    return catalog


@lru_cache(maxsize=SOURCE_CACHE)
def _cutout(source_key: str) -> np.ndarray:
    source = json.loads(source_key)
    rgba = render_source(source)
    # Cut-outs are stored at most 256 px on their longer side: scenes are small.
    im = Image.fromarray(rgba)
    im.thumbnail((256, 256), Image.LANCZOS)
    return np.asarray(im)


@lru_cache(maxsize=64)
def _background_photo(path: str) -> Image.Image:
    with Image.open(path) as im:
        im = im.convert("RGB")
        im.thumbnail((640, 640), Image.LANCZOS)
        return im.copy()


def _source_key(source: dict) -> str:
    return json.dumps(source, sort_keys=True)


def _source_name(source: dict) -> str:
    return source.get("path") or source.get("text", "")


def provenance(catalog: Catalog) -> dict:
    """What the model card records: per category, how many images of each kind; per
    package, its licence; and the backgrounds used."""
    per_category = {}
    for name, cat in sorted(catalog.categories.items()):
        kinds: dict[str, int] = {}
        for source in cat.sources:
            kinds[source["kind"]] = kinds.get(source["kind"], 0) + 1
        per_category[name] = kinds
    return {"categories": per_category, "backgrounds": len(catalog.backgrounds),
            "packages": catalog.packages}


# -- rendering ------------------------------------------------------------------------
def _plain_background(rng, side: int) -> np.ndarray:
    """A wall, desk or cloth: a muted colour with a soft gradient and texture."""
    base = rng.uniform(40, 230, size=3) * rng.uniform(0.6, 1.0) + rng.uniform(0, 40)
    grey = base.mean()
    base = grey + (base - grey) * rng.uniform(0.1, 0.6)     # muted
    ys, xs = np.mgrid[0:side, 0:side].astype(np.float32) / side
    t = rng.uniform(0, 2 * math.pi)
    ramp = (math.cos(t) * (xs - 0.5) + math.sin(t) * (ys - 0.5))[..., None]
    coarse = rng.uniform(-1, 1, size=(6, 6)).astype(np.float32)
    field = np.asarray(Image.fromarray(coarse).resize((side, side), Image.BICUBIC))[..., None]
    bg = base + rng.uniform(10, 50) * ramp + rng.uniform(3, 15) * field
    return np.clip(bg, 0, 255)


def _photo_background(rng, catalog: Catalog, side: int) -> np.ndarray:
    photo = _background_photo(catalog.backgrounds[int(rng.integers(len(catalog.backgrounds)))]["path"])
    w, h = photo.size
    crop = int(min(w, h) * rng.uniform(0.35, 1.0))
    x0, y0 = int(rng.integers(0, w - crop + 1)), int(rng.integers(0, h - crop + 1))
    tile = photo.crop((x0, y0, x0 + crop, y0 + crop)).resize((side, side), Image.BILINEAR)
    if rng.random() < 0.5:
        tile = tile.transpose(Image.FLIP_LEFT_RIGHT)
    return np.asarray(tile, np.float32)


def _background(rng, catalog: Catalog, side: int) -> np.ndarray:
    if catalog.backgrounds and rng.random() < P_PHOTO_BACKGROUND:
        return _photo_background(rng, catalog, side)
    return _plain_background(rng, side)


def _prepare_cutout(rng, rgba: np.ndarray, longer_side: int) -> Image.Image:
    im = Image.fromarray(rgba)
    if rng.random() < 0.5:
        im = im.transpose(Image.FLIP_LEFT_RIGHT)
    im = im.rotate(float(rng.uniform(-MAX_ROTATION_DEG, MAX_ROTATION_DEG)), Image.BICUBIC,
                   expand=True)
    box = im.getchannel("A").point(lambda a: 255 if a > 127 else 0).getbbox()
    if box:
        im = im.crop(box)
    scale = longer_side / max(im.size)
    im = im.resize((max(int(im.width * scale), 4), max(int(im.height * scale), 4)), Image.LANCZOS)
    rgb = im.convert("RGB")
    rgb = ImageEnhance.Color(rgb).enhance(float(rng.uniform(0.7, 1.3)))
    rgb = ImageEnhance.Brightness(rgb).enhance(float(rng.uniform(0.8, 1.15)))
    rgb = ImageEnhance.Contrast(rgb).enhance(float(rng.uniform(0.85, 1.15)))
    rgb.putalpha(im.getchannel("A"))
    return rgb


def _place_close_up(rng, size: tuple[int, int], side: int):
    """Top-left corner of one large object, possibly cut by the frame's edges, with
    at least CLOSE_UP_MIN_VISIBLE of its extent inside the frame on each axis."""
    keep = CLOSE_UP_MIN_VISIBLE
    return [tuple(int(rng.integers(-int((1 - keep) * e), side - int(keep * e) + 1)) for e in size)]


def _place(rng, sizes: list[tuple[int, int]], side: int, tries: int = 200):
    """Top-left corners for boxes of ``sizes``, inside the frame and apart; None if none found."""
    margin = int(0.02 * side)
    for _ in range(tries):
        corners = [(int(rng.integers(margin, max(side - w - margin, margin) + 1)),
                    int(rng.integers(margin, max(side - h - margin, margin) + 1))) for w, h in sizes]
        if len(sizes) == 1:
            return corners
        (ax, ay), (bx, by) = corners
        (aw, ah), (bw, bh) = sizes
        gap = int(0.03 * side)
        apart = (ax + aw + gap <= bx or bx + bw + gap <= ax or ay + ah + gap <= by or by + bh + gap <= ay)
        dx = abs((bx + bw / 2) - (ax + aw / 2))
        dy = abs((by + bh / 2) - (ay + ah / 2))
        if apart and min(dx, dy) <= AMBIGUITY_RATIO * max(dx, dy):
            return corners
    return None


def _overlap(x: int, y: int, size: tuple[int, int], side: int):
    """Slices of the frame and of a pasted image at (x, y) that overlap; the image
    may stick out of the frame on any side."""
    w, h = size
    fx0, fy0, fx1, fy1 = max(x, 0), max(y, 0), min(x + w, side), min(y + h, side)
    frame = (slice(fy0, fy1), slice(fx0, fx1))
    part = (slice(fy0 - y, fy1 - y), slice(fx0 - x, fx1 - x))
    return frame, part


def _layer(cut: Image.Image, x: int, y: int, side: int):
    """(alpha [side, side], rgb [side, side, 3]) of an RGBA cut-out pasted at (x, y)."""
    frame, part = _overlap(x, y, cut.size, side)
    alpha = np.zeros((side, side), np.float32)
    alpha[frame] = (np.asarray(cut.getchannel("A"), np.float32) / 255.0)[part]
    rgb = np.zeros((side, side, 3), np.float32)
    rgb[frame] = np.asarray(cut.convert("RGB"), np.float32)[part]
    return alpha, rgb


def _camera(rng, canvas: np.ndarray) -> np.ndarray:
    """Webcam-like light, focus, sensor noise and compression."""
    side = canvas.shape[0]
    level = rng.uniform(0.7, 1.2)
    cast = 1.0 + rng.uniform(-0.08, 0.08, size=3)
    ys, xs = np.mgrid[0:side, 0:side].astype(np.float32) / side - 0.5
    vignette = 1.0 - rng.uniform(0.0, 0.5) * (xs ** 2 + ys ** 2)
    out = canvas * (level * vignette)[..., None] * cast
    image = Image.fromarray(np.clip(out, 0, 255).astype(np.uint8))
    if rng.random() < 0.5:
        image = image.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.3, 1.5))))
    arr = np.asarray(image, np.float32) + rng.normal(0, rng.uniform(0.5, 6.0), (side, side, 3))
    image = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    if rng.random() < P_JPEG:
        buf = io.BytesIO()
        image.save(buf, format="JPEG", quality=int(rng.integers(35, 95)))
        image = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    return np.asarray(image, np.uint8)


def _pick_source(rng, sources: list):
    """A kind first (photo stamp, clip art, emoji), then an image of that kind, so a
    category with many emoji (person: five skin tones each) still shows its photos."""
    kinds = sorted({s["kind"] for s in sources})
    kind = kinds[int(rng.integers(len(kinds)))]
    of_kind = [s for s in sources if s["kind"] == kind]
    return of_kind[int(rng.integers(len(of_kind)))]


def _paint_cards(rng, catalog: Catalog, canvas: np.ndarray, sizes, corners,
                 chance: float) -> np.ndarray:
    """Behind each object, with probability ``chance``, a rectangle of another background
    around it: a photo or a print of the thing held up in the scene, so the object
    comes with surroundings of its own, as in a real photograph. Drawn from its own
    random stream, so scenes without cards stay what they were."""
    side = canvas.shape[0]
    canvas = canvas.copy()
    for (w, h), (x, y) in zip(sizes, corners):
        if rng.random() >= chance:
            continue
        mx, my = (int(e * rng.uniform(*CARD_MARGIN)) for e in (w, h))
        x0, y0 = max(x - mx, 0), max(y - my, 0)
        x1, y1 = min(x + w + mx, side), min(y + h + my, side)
        if x1 - x0 < 2 or y1 - y0 < 2:
            continue
        card = Image.fromarray(_background(rng, catalog, side).astype(np.uint8))
        canvas[y0:y1, x0:x1] = np.asarray(card.resize((x1 - x0, y1 - y0), Image.BILINEAR),
                                          np.float32)
    return canvas


def _panel_box(rng, half: int, side: int) -> tuple[int, int, int, int]:
    """(x0, y0, w, h) of a panel in the ``half``-th (0: left, 1: right) half of the frame."""
    w = int(side / 2 * rng.uniform(*PANEL_WIDTH))
    h = min(int(w * rng.uniform(*PANEL_ASPECT)), side)
    x0 = half * side // 2 + int(rng.integers(0, side // 2 - w + 1))
    return x0, int(rng.integers(0, side - h + 1)), w, h


def _paint_panels(rng, catalog: Catalog, side: int, sources: list, tries: int = 50):
    """Two panels side by side on a plain surface, each with a background of its own
    and one object (from ``sources``, left first) large in it, cut by the panel's edges
    as a photo cuts its subject. Returns (canvas, per object (alpha, rgb) to composite),
    or None when no draw put the objects clearly side by side."""
    for _ in range(tries):
        canvas = _plain_background(rng, side)
        layers = []
        for half, source in enumerate(sources):
            x0, y0, w, h = _panel_box(rng, half, side)
            panel = Image.fromarray(_background(rng, catalog, max(w, h)).astype(np.uint8))
            canvas[y0:y0 + h, x0:x0 + w] = np.asarray(panel.crop((0, 0, w, h)), np.float32)
            cut = _prepare_cutout(rng, _cutout(_source_key(source)),
                                  int(min(w, h) * rng.uniform(*PANEL_OBJECT_SCALE)))
            keep = PANEL_MIN_VISIBLE
            x, y = (lo + int(rng.integers(-int((1 - keep) * e), max(n - int(keep * e), 0) + 1))
                    for lo, e, n in ((x0, cut.width, w), (y0, cut.height, h)))
            alpha, rgb = _layer(cut, x, y, side)
            outside = np.ones((side, side), bool)
            outside[y0:y0 + h, x0:x0 + w] = False
            alpha[outside] = 0.0
            layers.append((alpha, rgb))
        boxes = [_mask_box(alpha >= 0.5) for alpha, _ in layers]
        if None in boxes:
            continue
        (ax, ay), (bx, by) = (((x0 + x1) / 2, (y0 + y1) / 2) for x0, y0, x1, y1 in boxes)
        dx, dy = bx - ax, abs(by - ay)
        if dx > 0 and dy <= AMBIGUITY_RATIO * dx:
            return canvas, layers
    return None


def _mask_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """x0, y0, x1, y1 (exclusive) of a mask's pixels; None for an empty mask."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if not len(rows):
        return None
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def generate_object_scene(seed: int, image_size: int = 224, n_objects: int | None = None,
                          catalog: Catalog | None = None, cards: float = 0.0,
                          panels: float = 0.0) -> ObjectScene:
    """One captioned scene, deterministic for a seed and catalogue; ``cards``: the
    chance that each object comes on a card of its own (see ``_paint_cards``);
    ``panels``: the chance that a two-object scene shows its objects on two panels
    side by side (``_paint_panels``). Both draw from random streams of their own, so a
    scene that has neither is the scene it was without them."""
    catalog = catalog or default_world()
    names = sorted(n for n, c in catalog.categories.items() if c.sources)
    rng = np.random.default_rng(int(seed))
    if n_objects is None:
        n_objects = 1 if rng.random() < P_ONE_OBJECT else 2
    side = int(image_size)
    close_up = n_objects == 1 and rng.random() < P_CLOSE_UP
    while True:
        chosen = list(rng.choice(names, size=n_objects, replace=False))
        lo, hi = (CLOSE_UP_SCALE if close_up else ONE_OBJECT_SCALE if n_objects == 1
                  else TWO_OBJECT_SCALE)
        cutouts, sources = [], []
        for name in chosen:
            source = _pick_source(rng, catalog.categories[name].sources)
            sources.append(source)
            cutouts.append(_prepare_cutout(rng, _cutout(_source_key(source)),
                                           int(side * rng.uniform(lo, hi))))
        corners = (_place_close_up(rng, cutouts[0].size, side) if close_up
                   else _place(rng, [c.size for c in cutouts], side))
        if corners is not None:
            break
    canvas = _background(rng, catalog, side)
    panel_rng = np.random.default_rng([int(seed), 3])
    painted = (_paint_panels(panel_rng, catalog, side, sources)
               if n_objects == 2 and panels and panel_rng.random() < panels else None)
    if painted is not None:
        canvas, layers = painted
    else:
        if cards:
            canvas = _paint_cards(np.random.default_rng([int(seed), 2]), catalog, canvas,
                                  [c.size for c in cutouts], corners, cards)
        layers = [_layer(cut, x, y, side) for cut, (x, y) in zip(cutouts, corners)]
    objects = []
    for name, source, (alpha, rgb) in zip(chosen, sources, layers):
        canvas = canvas * (1 - alpha[..., None]) + rgb * alpha[..., None]
        mask = alpha >= 0.5
        objects.append(WorldObject(str(name), _source_name(source), mask, _mask_box(mask)))
    image = _camera(rng, canvas)
    relation = None
    if n_objects == 2:
        # Reading order: the left (or upper) object first.
        if relation_of(objects[0].center, objects[1].center) in ("right of", "below"):
            objects = objects[::-1]
        relation = relation_of(objects[0].center, objects[1].center)
    caption = compose_caption(catalog, [o.category for o in objects], relation)
    return ObjectScene(image, caption, objects, relation, int(seed))


def generate_empty_frame(seed: int, image_size: int = 224, catalog: Catalog | None = None) -> np.ndarray:
    """A frame of the world with no object in it: a background through the webcam
    (what familiarity must not take for a scene of this world)."""
    catalog = catalog or default_world()
    rng = np.random.default_rng([int(seed), 1])
    return _camera(rng, _background(rng, catalog, int(image_size)))


def scene_file_name(seed: int) -> str:
    return f"objects_{int(seed):07d}.jpg"


def _write_scene(seed: int, images: Path, image_size: int, cards: float = 0.0,
                 panels: float = 0.0) -> tuple[str, str, str]:
    """Draw scene ``seed``, write its JPEG; (file name, caption, scenes.jsonl record)."""
    scene = generate_object_scene(seed, image_size, cards=cards, panels=panels)
    name = scene_file_name(seed)
    with atomic_path(images / name) as tmp:
        Image.fromarray(scene.image).save(tmp, format="JPEG", quality=95)
    return name, scene.caption, json.dumps({
        "file": name, "seed": seed, "image_size": image_size, "caption": scene.caption,
        "relation": scene.relation, "word_objects": scene.word_object_index(),
        "objects": [{"category": o.category, "source": o.source, "bbox": list(o.bbox)}
                    for o in scene.objects]})


def write_objects_dataset(out_dir, n_images: int, seed: int = 0, image_size: int = 224,
                          split: Sequence[float] = (0.9, 0.1, 0.0), progress: bool = True,
                          workers: int | None = None, cards: float = 0.0,
                          panels: float = 0.0) -> Path:
    """Scenes ``seed .. seed + n_images - 1`` in the Flickr8k layout (``cards``,
    ``panels``: see ``generate_object_scene``), with ``scenes.jsonl``
    (file, seed, caption, objects with category, source and bbox, and which object each
    caption word names) for grounding. Files are written under temporary names and
    renamed, the text files last, so an interrupted run leaves nothing half-written.
    Scenes are drawn in ``workers`` processes (``worlds.in_workers``)."""
    from functools import partial

    from .synthetic import _split_counts, _write_text_atomic
    from .worlds import in_workers

    out = Path(out_dir)
    images = out / "Images"
    images.mkdir(parents=True, exist_ok=True)
    default_world()         # missing asset packages fail here, not in a worker
    n = int(n_images)
    written = in_workers(partial(_write_scene, images=images, image_size=image_size, cards=cards,
                                 panels=panels),
                         range(seed, seed + n), n, "object scenes", progress, workers)
    names = [name for name, _, _ in written]
    n_train, n_dev, _ = _split_counts(len(names), split)
    _write_text_atomic(out / "Flickr_8k.trainImages.txt", names[:n_train])
    _write_text_atomic(out / "Flickr_8k.devImages.txt", names[n_train: n_train + n_dev])
    _write_text_atomic(out / "Flickr_8k.testImages.txt", names[n_train + n_dev:])
    _write_text_atomic(out / "scenes.jsonl", [record for _, _, record in written])
    _write_text_atomic(out / "Flickr8k.token.txt",
                       [f"{name}#0\t{caption}" for name, caption, _ in written])
    return out
