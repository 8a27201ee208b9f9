"""The objects world: captions in the grammar, masks and boxes that match the picture,
determinism per seed, and grounding records the training loop reads."""

import numpy as np
import pytest

from source_code.data.objects_world import (caption_nouns, caption_word_objects,
                                            canonical_object_caption, parse_object_caption,
                                            relation_of)


def test_grammar_round_trip_and_canonical_form():
    assert parse_object_caption("an apple left of a cup") == (["apple", "cup"], "left of")
    assert parse_object_caption("a cup") == (["cup"], None)
    with pytest.raises(ValueError):
        parse_object_caption("a cup left a dog")
    assert (canonical_object_caption("a cup right of a dog")
            == canonical_object_caption("a dog left of a cup"))
    assert (canonical_object_caption("a cup above a dog")
            != canonical_object_caption("a dog above a cup"))
    assert caption_word_objects("an apple above a cup") == [None, 0, None, None, 1]
    assert caption_nouns("a person left of a cat") == ["person", "cat"]
    assert relation_of((10, 50), (90, 60)) == "left of"
    assert relation_of((50, 90), (60, 10)) == "below"


@pytest.fixture(scope="module")
def world():
    from source_code.data.objects_world import default_world
    try:
        return default_world()
    except RuntimeError as exc:
        pytest.skip(str(exc))


def test_scenes_are_deterministic_and_their_ground_truth_matches(world):
    from source_code.data.objects_world import generate_object_scene
    for seed in range(12):
        a, b = generate_object_scene(seed, 128, catalog=world), generate_object_scene(seed, 128, catalog=world)
        assert a.caption == b.caption and np.array_equal(a.image, b.image)
        nouns, relation = parse_object_caption(a.caption)
        assert nouns == [o.category for o in a.objects]
        assert len(set(nouns)) == len(nouns)
        for o in a.objects:
            assert o.mask.any() and o.mask.shape == (128, 128)
            x0, y0, x1, y1 = o.bbox
            assert o.mask[y0:y1, x0:x1].sum() == o.mask.sum()   # the box holds the whole mask
        if relation:
            assert relation in ("left of", "above")           # reading order
            assert relation_of(a.objects[0].center, a.objects[1].center) == relation
            assert not (a.objects[0].mask & a.objects[1].mask).any()


def test_pasted_pixels_differ_from_the_background_under_the_mask(world):
    from source_code.data.objects_world import generate_object_scene
    scene = generate_object_scene(3, 160, n_objects=1, catalog=world)
    assert scene.image.dtype == np.uint8 and scene.image.shape == (160, 160, 3)
    assert scene.objects[0].mask.mean() > 0.02


def test_cards_change_what_is_around_objects_and_nothing_they_are_graded_on(world):
    """A card behind each object keeps the scene's caption, masks and boxes; it changes
    pixels near the objects only, and a scene without cards is the scene it was."""
    from source_code.data.objects_world import generate_object_scene
    for seed in range(6):
        plain = generate_object_scene(seed, 128, catalog=world)
        carded = generate_object_scene(seed, 128, catalog=world, cards=1.0)
        assert carded.caption == plain.caption and carded.relation == plain.relation
        for a, b in zip(plain.objects, carded.objects):
            assert a.bbox == b.bbox and np.array_equal(a.mask, b.mask)
        assert np.array_equal(generate_object_scene(seed, 128, catalog=world, cards=0.0).image,
                              plain.image)
        changed = np.abs(carded.image.astype(int) - plain.image.astype(int)).max(-1) > 40
        assert changed.any()
        near = np.zeros(changed.shape, bool)          # a card reaches 0.6 of its object's size
        for o in plain.objects:
            x0, y0, x1, y1 = o.bbox
            mx, my = int(0.65 * (x1 - x0)) + 2, int(0.65 * (y1 - y0)) + 2
            near[max(y0 - my, 0): y1 + my, max(x0 - mx, 0): x1 + mx] = True
        assert not (changed & ~near).any()


def test_panels_put_two_objects_side_by_side_each_in_its_half(world):
    """Two pictures held up side by side: each object lies in its own half of the frame,
    the caption says "left of" in reading order, the masks and boxes match; one-object
    scenes and scenes whose draw said no panels are the scenes they were."""
    from source_code.data.objects_world import generate_object_scene
    paneled = 0
    for seed in range(24):
        plain = generate_object_scene(seed, 128, catalog=world)
        scene = generate_object_scene(seed, 128, catalog=world, panels=0.5)
        again = generate_object_scene(seed, 128, catalog=world, panels=0.5)
        assert np.array_equal(scene.image, again.image) and scene.caption == again.caption
        if np.array_equal(scene.image, plain.image):
            assert scene.caption == plain.caption
            continue
        paneled += 1
        assert len(scene.objects) == 2 and scene.relation == "left of"
        assert sorted(o.category for o in scene.objects) == sorted(o.category for o in plain.objects)
        left, right = scene.objects
        assert left.mask[:, 64:].sum() == 0 and right.mask[:, :64].sum() == 0
        for o in scene.objects:
            x0, y0, x1, y1 = o.bbox
            assert o.mask.any() and o.mask[y0:y1, x0:x1].sum() == o.mask.sum()
    assert 3 <= paneled <= 12        # about half of the two-object scenes


def test_close_ups_fill_the_frame_and_may_be_cut_by_its_edges(world):
    """Webcam framing: some one-object scenes show the object larger than the frame,
    cut by an edge, yet mostly inside; mask and box describe only the visible part."""
    from source_code.data import objects_world as ow
    from source_code.data.objects_world import generate_object_scene
    scenes = [generate_object_scene(seed, 128, n_objects=1, catalog=world) for seed in range(40)]
    cut = [s for s in scenes if s.objects[0].mask[[0, -1], :].any() or s.objects[0].mask[:, [0, -1]].any()]
    big = [s for s in scenes if s.objects[0].mask.mean() > 0.3]
    assert 3 <= len(cut) < len(scenes) and big
    for s in cut:
        x0, y0, x1, y1 = s.objects[0].bbox
        assert 0 <= x0 < x1 <= 128 and 0 <= y0 < y1 <= 128
        assert max(x1 - x0, y1 - y0) >= ow.CLOSE_UP_MIN_VISIBLE * ow.CLOSE_UP_SCALE[0] * 128 * 0.9


def test_overlap_slices_clip_a_pasted_image_to_the_frame():
    from source_code.data.objects_world import _overlap
    frame, part = _overlap(-10, 5, (30, 200), 100)
    canvas, image = np.zeros((100, 100)), np.arange(200 * 30).reshape(200, 30)
    canvas[frame] = image[part]
    assert canvas[5, 0] == image[0, 10] and canvas[99, 19] == image[94, 29]
    assert canvas[:5].sum() == 0 and canvas[:, 20:].sum() == 0


def test_dataset_records_ground_each_noun_on_its_object(world, tmp_path):
    from source_code.data.objects_world import write_objects_dataset
    from source_code.training.samples import _grounded_words, load_grounding
    out = write_objects_dataset(tmp_path / "d", 6, seed=5, image_size=96, progress=False)
    grounding = load_grounding(out / "scenes.jsonl")
    assert len(grounding) == 6 and len((out / "Images").glob("*.jpg").__iter__().__next__().name) > 0
    for name, rec in grounding.items():
        words = rec["caption"].split()
        index = _grounded_words(words, rec)
        for w, k in zip(words, index):
            if k is not None:
                assert rec["objects"][k]["category"] == w
    assert not list((out / "Images").glob(".*"))      # no temporary files left behind


def test_empty_frames_are_deterministic_backgrounds(world):
    from source_code.data.objects_world import generate_empty_frame
    a, b = generate_empty_frame(3, 96, world), generate_empty_frame(3, 96, world)
    assert a.shape == (96, 96, 3) and a.dtype == np.uint8 and np.array_equal(a, b)
    assert not np.array_equal(a, generate_empty_frame(4, 96, world))


def test_worlds_pick_each_worlds_generator_and_held_out_seeds():
    from source_code.data.objects_world import generate_object_scene
    from source_code.data.synthetic import generate_scene
    from source_code.data.worlds import HELD_OUT_SEED, held_out_scenes, scene_generator
    assert scene_generator("objects") is generate_object_scene
    assert scene_generator("shapes") is generate_scene
    with pytest.raises(ValueError, match="unknown world 'faces'"):
        scene_generator("faces")
    scenes = held_out_scenes("shapes", 3, image_size=64, n_objects=2)
    for i, scene in enumerate(scenes):   # seeds from HELD_OUT_SEED on, in order
        again = generate_scene(HELD_OUT_SEED + i, image_size=64, n_objects=2)
        assert scene.caption == again.caption and np.array_equal(scene.image, again.image)
        assert len(scene.objects) == 2
    assert held_out_scenes("objects", 2, seed=7, image_size=64)[1].caption == \
        generate_object_scene(8, image_size=64).caption


def test_scenes_drawn_in_worker_processes_equal_those_drawn_here(world, tmp_path, monkeypatch):
    """The recipe's 16,000 scenes and the bank's 3,000 are drawn in parallel: the same
    files, records and scenes as one process draws, in seed order."""
    from source_code.data import worlds
    from source_code.data.objects_world import write_objects_dataset
    monkeypatch.setattr(worlds, "PARALLEL_FROM", 1)
    here = write_objects_dataset(tmp_path / "here", 5, seed=40, image_size=64,
                                 progress=False, workers=1)
    there = write_objects_dataset(tmp_path / "there", 5, seed=40, image_size=64,
                                  progress=False, workers=2)
    for name in ("scenes.jsonl", "Flickr8k.token.txt", "Flickr_8k.trainImages.txt"):
        assert (here / name).read_text() == (there / name).read_text()
    for image in sorted((here / "Images").glob("*.jpg")):
        assert image.read_bytes() == (there / "Images" / image.name).read_bytes()
    parallel = worlds.held_out_scenes("objects", 4, seed=9, image_size=64, workers=2)
    serial = worlds.held_out_scenes("objects", 4, seed=9, image_size=64, workers=1)
    assert [s.caption for s in parallel] == [s.caption for s in serial]
    assert all(np.array_equal(a.image, b.image) and len(a.objects) == len(b.objects)
               and all(np.array_equal(p.mask, q.mask) for p, q in zip(a.objects, b.objects))
               for a, b in zip(parallel, serial))
