"""Tests of the synthetic captioned scenes (source_code/data/synthetic.py)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from PIL import Image

from source_code.data.synthetic import (
    COLORS,
    DEGRADATIONS,
    NOMINAL_RGB,
    RELATIONS,
    SHAPES,
    SIZES,
    Scene,
    canonical_caption,
    degrade,
    equivalent_captions,
    reading_order_caption,
    generate_scene,
    parse_caption,
    swap_caption_for_flip,
    write_flickr8k_layout,
)

SIDE = 160
N_SCENES = 150

# Area of each shape as a fraction of extent**2 (extent = unrotated width).
AREA_FACTOR = {"circle": math.pi / 4, "square": 1.0, "triangle": math.sqrt(3) / 4}
SIZE_RANGE = {"small": (0.15, 0.25), "large": (0.35, 0.45)}


@pytest.fixture(scope="module")
def scenes() -> list[Scene]:
    return [generate_scene(seed, image_size=SIDE) for seed in range(N_SCENES)]


def _centroid(mask: np.ndarray) -> tuple[float, float]:
    ys, xs = np.nonzero(mask)
    return float(xs.mean()), float(ys.mean())


# --- determinism --------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 7, 12345])
def test_same_seed_same_bytes(seed):
    a = generate_scene(seed)
    b = generate_scene(seed)
    assert a.image.tobytes() == b.image.tobytes()
    assert a.caption == b.caption
    for oa, ob in zip(a.objects, b.objects):
        assert np.array_equal(oa.mask, ob.mask)
        assert oa.center == ob.center


def test_different_seeds_differ():
    assert generate_scene(1).image.tobytes() != generate_scene(2).image.tobytes()


def test_image_format_and_arguments():
    scene = generate_scene(3, image_size=96, n_objects=2, jpeg_quality=0)
    assert scene.image.shape == (96, 96, 3) and scene.image.dtype == np.uint8
    assert len(scene.objects) == 2 and scene.relation in RELATIONS
    assert scene.jpeg_quality is None
    one = generate_scene(3, n_objects=1, jpeg_quality=70)
    assert len(one.objects) == 1 and one.relation is None and one.jpeg_quality == 70
    # The JPEG setting changes only the artefacts, not the scene.
    plain = generate_scene(3, n_objects=1, jpeg_quality=0)
    assert plain.caption == one.caption
    assert np.abs(plain.image.astype(int) - one.image.astype(int)).mean() < 3
    with pytest.raises(ValueError):
        generate_scene(3, n_objects=3)


def test_object_count_mix(scenes):
    n_one = sum(len(s.objects) == 1 for s in scenes)
    assert 0.25 < n_one / len(scenes) < 0.55


# --- grammar ------------------------------------------------------------------


def test_captions_parse_and_match_objects(scenes):
    for scene in scenes:
        objects, relation = parse_caption(scene.caption)
        assert objects == [o.words for o in scene.objects]
        assert relation == scene.relation
        for size, color, shape in objects:
            assert size in SIZES and color in COLORS and shape in SHAPES
        assert relation is None or relation in RELATIONS
        assert scene.caption == scene.caption.strip().lower()


def test_distinct_color_shape_pairs(scenes):
    for scene in scenes:
        pairs = [(o.color, o.shape) for o in scene.objects]
        assert len(set(pairs)) == len(pairs)


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "a red circle",
        "a small red circle near a large blue square",
        "a small purple circle",
        "a small red hexagon",
        "the small red circle",
        "a small red circle left a large blue square",
        "a small red circle left of",
        "a small red circle left of a large blue square and more",
    ],
)
def test_parse_rejects_outside_grammar(bad):
    with pytest.raises(ValueError):
        parse_caption(bad)


def test_parse_examples():
    assert parse_caption("  A Small red circle  ") == ([("small", "red", "circle")], None)
    assert parse_caption("a small red circle right of a large blue square") == (
        [("small", "red", "circle"), ("large", "blue", "square")],
        "right of",
    )
    assert parse_caption("a large yellow triangle below a small green circle")[1] == "below"


# --- geometry -----------------------------------------------------------------


def test_masks_inside_frame_with_margin(scenes):
    margin = int(math.floor(0.06 * SIDE)) - 1
    for scene in scenes:
        for obj in scene.objects:
            assert obj.mask.shape == (SIDE, SIDE) and obj.mask.dtype == bool
            assert obj.mask.any()
            x0, y0, x1, y1 = obj.bbox
            assert x0 >= margin and y0 >= margin
            assert x1 <= SIDE - margin and y1 <= SIDE - margin


def test_masks_do_not_overlap_or_touch(scenes):
    for scene in scenes:
        if len(scene.objects) == 2:
            a, b = (o.mask for o in scene.objects)
            assert not (a & b).any()
            # A gap of a few pixels: grow one mask by 3 px and check again.
            grown = a.copy()
            for dy in range(-3, 4):
                for dx in range(-3, 4):
                    grown |= np.roll(np.roll(a, dy, axis=0), dx, axis=1)
            assert not (grown & b).any()


def test_sizes_in_range(scenes):
    for scene in scenes:
        for obj in scene.objects:
            lo, hi = SIZE_RANGE[obj.size]
            extent = math.sqrt(obj.mask.sum() / AREA_FACTOR[obj.shape]) / SIDE
            assert lo - 0.01 <= extent <= hi + 0.01, (scene.seed, obj.words, extent)
            assert lo <= obj.extent / SIDE <= hi


def test_centers_match_mask_centroids(scenes):
    for scene in scenes:
        for obj in scene.objects:
            cx, cy = _centroid(obj.mask)
            assert abs(cx - obj.center[0]) < 0.6 and abs(cy - obj.center[1]) < 0.6


def test_relation_matches_mask_centroids(scenes):
    two = [s for s in scenes if len(s.objects) == 2]
    assert len(two) > 50
    seen = set()
    for scene in two:
        (ax, ay), (bx, by) = (_centroid(o.mask) for o in scene.objects)
        dx, dy = ax - bx, ay - by
        # Unambiguous: one axis clearly dominates.
        assert min(abs(dx), abs(dy)) <= 0.8 * max(abs(dx), abs(dy))
        if abs(dx) > abs(dy):
            expected = "left of" if dx < 0 else "right of"
        else:
            expected = "above" if dy < 0 else "below"
        assert scene.relation == expected, scene.seed
        seen.add(scene.relation)
    assert seen == set(RELATIONS)


def test_colours_recognisable(scenes):
    nominal = {c: np.array(rgb, dtype=float) for c, rgb in NOMINAL_RGB.items()}
    for scene in scenes:
        for obj in scene.objects:
            mean = scene.image[obj.mask].astype(float).mean(axis=0)
            closest = min(COLORS, key=lambda c: np.linalg.norm(mean - nominal[c]))
            assert closest == obj.color, (scene.seed, obj.color, mean)


def test_background_is_light(scenes):
    for scene in scenes[:40]:
        background = ~np.logical_or.reduce([o.mask for o in scene.objects])
        assert scene.image[background].mean() > 170


# --- word / object alignment --------------------------------------------------


def test_word_object_index():
    one = generate_scene(4, n_objects=1)
    assert one.word_object_index() == [None, 0, 0, 0]
    for seed in range(20):
        scene = generate_scene(seed, n_objects=2)
        words = scene.caption.split()
        index = scene.word_object_index()
        assert len(index) == len(words)
        for word, i in zip(words, index):
            if word == "a" or word in ("left", "right", "of", "above", "below"):
                assert i is None
            else:
                assert i in (0, 1)
                assert word in scene.objects[i].words
        assert index[1:4] == [0, 0, 0] and index[-3:] == [1, 1, 1]


# --- canonical captions and flips ---------------------------------------------


def test_canonical_caption_equivalences():
    pairs = [
        ("a small red circle left of a large blue square",
         "a large blue square right of a small red circle"),
        ("a small red circle above a large blue square",
         "a large blue square below a small red circle"),
        ("a large green triangle right of a small yellow circle",
         "a small yellow circle left of a large green triangle"),
    ]
    for a, b in pairs:
        assert canonical_caption(a) == canonical_caption(b)
        assert canonical_caption(canonical_caption(a)) == canonical_caption(a)
    assert canonical_caption(pairs[0][0]) != canonical_caption(pairs[1][0])
    assert canonical_caption(
        "a small red circle left of a large blue square"
    ) != canonical_caption("a small red circle right of a large blue square")
    # Same object twice: the two relations are equivalent.
    assert canonical_caption("a small red circle left of a small red circle") == canonical_caption(
        "a small red circle right of a small red circle"
    )
    assert canonical_caption("  A Small red CIRCLE ") == "a small red circle"
    assert canonical_caption("  Something Else  ") == "something else"


def test_canonical_invariant_under_reordering(scenes):
    for scene in scenes:
        variants = equivalent_captions(scene.caption)
        assert variants[0] == scene.caption
        assert len(variants) == (2 if scene.relation else 1)
        assert len({canonical_caption(v) for v in variants}) == 1
        assert canonical_caption(scene.caption) in variants


def test_swap_caption_for_flip():
    cap = "a small red circle left of a large blue square"
    assert swap_caption_for_flip(cap, horizontal=True) == "a small red circle right of a large blue square"
    assert swap_caption_for_flip(cap, horizontal=False) == cap
    cap2 = "a small red circle above a large blue square"
    assert swap_caption_for_flip(cap2, horizontal=False) == "a small red circle below a large blue square"
    assert swap_caption_for_flip(cap2, horizontal=True) == cap2
    assert swap_caption_for_flip("<start> right of left <end>", True) == "<start> left of right <end>"
    assert swap_caption_for_flip("bright lefty", True) == "bright lefty"
    for text in (cap, cap2):
        for horizontal in (True, False):
            assert swap_caption_for_flip(swap_caption_for_flip(text, horizontal), horizontal) == text


def test_flip_swap_matches_flipped_scene(scenes):
    # Flipping the masks and recomputing the relation agrees with the swap.
    for scene in scenes:
        if scene.relation is None:
            continue
        for horizontal in (True, False):
            axis = 1 if horizontal else 0
            (ax, ay), (bx, by) = (_centroid(np.flip(o.mask, axis=axis)) for o in scene.objects)
            dx, dy = ax - bx, ay - by
            if abs(dx) > abs(dy):
                rel = "left of" if dx < 0 else "right of"
            else:
                rel = "above" if dy < 0 else "below"
            flipped = swap_caption_for_flip(scene.caption, horizontal)
            assert parse_caption(flipped)[1] == rel


# --- degradations -------------------------------------------------------------


@pytest.mark.parametrize("kind", DEGRADATIONS)
def test_degrade_shape_and_dtype(kind):
    image = generate_scene(5).image
    out = degrade(image, kind, seed=1)
    assert out.shape == image.shape and out.dtype == np.uint8
    assert not np.array_equal(out, image)
    assert np.array_equal(out, degrade(image, kind, seed=1))


def test_degrade_values():
    image = np.full((40, 40, 3), 100, dtype=np.uint8)
    assert np.all(degrade(image, "brighter") == 125)
    assert np.all(degrade(image, "darker") == 75)
    noisy = degrade(image, "noise", seed=3).astype(float)
    assert 10 < noisy.std() < 14 and abs(noisy.mean() - 100) < 1.5
    with pytest.raises(ValueError):
        degrade(image, "blur")


def test_zoom_keeps_objects(scenes):
    for scene in scenes[:60]:
        for obj in scene.objects:
            mask_img = np.repeat(obj.mask[..., None].astype(np.uint8) * 255, 3, axis=2)
            zoomed = degrade(mask_img, "zoom")[..., 0] > 127
            # Nothing reaches the border, and the area grows by about 1/0.9**2.
            assert not zoomed[:2].any() and not zoomed[-2:].any()
            assert not zoomed[:, :2].any() and not zoomed[:, -2:].any()
            ratio = zoomed.sum() / obj.mask.sum()
            assert 1.1 < ratio < 1.4, ratio


# --- Flickr8k layout ----------------------------------------------------------


def test_write_flickr8k_layout(tmp_path):
    n, seed = 20, 40
    out = write_flickr8k_layout(tmp_path / "synth", n, seed=seed, image_size=96, progress=False)
    names = [f"scene_{s:07d}.jpg" for s in range(seed, seed + n)]
    for name in names:
        with Image.open(out / "Images" / name) as img:
            assert img.format == "JPEG" and img.size == (96, 96) and img.mode == "RGB"
    assert not [p for p in (out / "Images").iterdir() if p.name not in names]

    tokens: dict[str, list[str]] = {}
    for line in (out / "Flickr8k.token.txt").read_text(encoding="utf-8").splitlines():
        key, caption = line.split("\t")
        name, k = key.split("#")
        assert int(k) == len(tokens.setdefault(name, []))
        parse_caption(caption)
        tokens[name].append(caption)
    assert sorted(tokens) == names

    splits = [
        (out / f"Flickr_8k.{part}Images.txt").read_text(encoding="utf-8").split()
        for part in ("train", "dev", "test")
    ]
    assert [len(s) for s in splits] == [16, 2, 2]
    assert sorted(sum(splits, [])) == names

    records = [json.loads(line) for line in (out / "scenes.jsonl").read_text().splitlines()]
    assert [r["file"] for r in records] == names
    for record in records:
        scene = generate_scene(record["seed"], image_size=record["image_size"])
        assert record["caption"] == scene.caption
        # the first reference reads the scene left to right, top to bottom
        assert tokens[record["file"]][0] == reading_order_caption(scene.caption)
        assert parse_caption(tokens[record["file"]][0])[1] in (None, "left of", "above")
        assert record["relation"] == scene.relation
        assert len(tokens[record["file"]]) == (2 if scene.relation else 1)
        assert {canonical_caption(c) for c in tokens[record["file"]]} == {canonical_caption(scene.caption)}
        for rec_obj, obj in zip(record["objects"], scene.objects):
            assert (rec_obj["size"], rec_obj["color"], rec_obj["shape"]) == obj.words
            assert tuple(rec_obj["bbox"]) == obj.bbox
            assert rec_obj["center"] == pytest.approx(list(obj.center), abs=1e-3)
        # The saved JPEG shows the generated scene.
        with Image.open(out / "Images" / record["file"]) as img:
            saved = np.asarray(img.convert("RGB"), dtype=float)
        assert np.abs(saved - scene.image).mean() < 4
        for obj in scene.objects:
            assert np.abs(saved[obj.mask].mean(0) - scene.image[obj.mask].mean(0)).max() < 4
    assert not list(out.rglob("*.tmp"))


def test_write_layout_rejects_bad_split(tmp_path):
    with pytest.raises(ValueError):
        write_flickr8k_layout(tmp_path, 4, split=(0.5, 0.2, 0.2), progress=False)
