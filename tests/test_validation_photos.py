"""The objects bundle's validation photographs (GCompris's, read with Qt's resource
reader) and the choices made on them: never the test photos, readable, fixed."""
import json

import numpy as np
import pytest

from conftest import REPO, need_gcompris, need_opencv_samples


def test_validation_and_test_photos_never_share_a_source_or_a_package():
    from source_code.evaluation.photos import IN_WORLD, OUT_OF_WORLD
    from source_code.evaluation.validation_photos import (IN_WORLD_VALIDATION,
                                                          OUT_OF_WORLD_VALIDATION)
    test = [e[0] for e in IN_WORLD + OUT_OF_WORLD]
    validation = [e[0] for e in IN_WORLD_VALIDATION + OUT_OF_WORLD_VALIDATION]
    assert len(set(validation)) == len(validation)          # no photo counted twice
    test_kinds = {s.split(":")[0] for s in test}
    assert {s.split(":")[0] for s in validation} == {"gcompris", "made"}
    assert not test_kinds & {"gcompris", "made", "opencv"}


def test_the_opencv_set_reads_its_own_package_as_rgb_photos_of_world_nouns():
    need_opencv_samples()
    from source_code.data.objects_world import default_world
    from source_code.evaluation.photos import load_photo
    from source_code.evaluation.validation_photos import OPENCV_IN_WORLD, OPENCV_OUT_OF_WORLD
    sources = [e[0] for e in OPENCV_IN_WORLD + OPENCV_OUT_OF_WORLD]
    assert len(set(sources)) == len(sources) and {s.split(":")[0] for s in sources} == {"opencv"}
    assert {"person"} <= set().union(*(e[2] for e in OPENCV_IN_WORLD))   # what GCompris lacks
    nouns = set(default_world().categories)
    for source, _, accept in OPENCV_IN_WORLD:
        assert accept <= nouns, source
    for source in sources:
        image = load_photo(source)
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3, source
        assert min(image.shape[:2]) >= 100 and np.ptp(image) > 50, source   # (blurred text: 82)


def test_a_validation_set_with_a_missing_photo_refuses_to_be_scored(monkeypatch, tmp_path):
    """A set that choices are checked on must not silently shrink (the test set skips)."""
    from source_code.evaluation import photos
    monkeypatch.setattr(photos, "OPENCV_EXAMPLES", tmp_path)
    photos.load_photo.cache_clear()
    try:
        with pytest.raises(OSError, match="opencv-doc"):
            photos.evaluate_photos(object(), photo_set="opencv")
    finally:
        photos.load_photo.cache_clear()


def test_every_validation_photo_reads_as_an_rgb_frame_and_names_a_world_noun():
    need_gcompris()
    from source_code.data.objects_world import default_world
    from source_code.evaluation.photos import load_photo
    from source_code.evaluation.validation_photos import (IN_WORLD_VALIDATION,
                                                          OUT_OF_WORLD_VALIDATION)
    nouns = set(default_world().categories)
    for source, _, accept in IN_WORLD_VALIDATION:
        assert accept <= nouns, source
    for source, *_ in IN_WORLD_VALIDATION + OUT_OF_WORLD_VALIDATION:
        image = load_photo(source)
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3, source
        assert min(image.shape[:2]) >= 100 and np.ptp(image) > 100, source   # a picture, not a blank


def test_made_frames_are_fixed_by_their_seed():
    from source_code.evaluation.validation_photos import made_frame
    for kind in ("text", "stars", "blobs", "noise"):
        a, b = made_frame(f"made:{kind}:0"), made_frame(f"made:{kind}:1")
        np.testing.assert_array_equal(a, made_frame(f"made:{kind}:0"))
        assert not np.array_equal(a, b), kind
    with pytest.raises(ValueError, match="unknown made frame"):
        made_frame("made:cats:0")


def test_validation_pairs_are_fixed_and_pair_different_nouns():
    from source_code.evaluation.validation_photos import (IN_WORLD_VALIDATION, PAIRS,
                                                          validation_pairs)
    pairs = validation_pairs(IN_WORLD_VALIDATION)
    assert pairs == validation_pairs(IN_WORLD_VALIDATION) and len(pairs) == PAIRS
    assert len(set(pairs)) == PAIRS
    for i, j in pairs:
        assert not IN_WORLD_VALIDATION[i][2] & IN_WORLD_VALIDATION[j][2]


def test_a_missing_gcompris_package_is_a_clear_error(tmp_path, monkeypatch):
    from source_code.data import gcompris
    from source_code.evaluation.photos import available
    monkeypatch.setattr(gcompris, "RCC_DIR", tmp_path)
    gcompris._mount.cache_clear()
    try:
        with pytest.raises(gcompris.GcomprisMissing, match="apt-get install gcompris-qt-data"):
            gcompris.load_image("gcompris:nothing_here/cat.webp")
        # the photo evaluation skips what it cannot read; the validation set refuses to
        from source_code.evaluation.validation_photos import IN_WORLD_VALIDATION
        assert available([("gcompris:nothing_here/cat.webp", "a cat", {"cat"})]) == []
        assert len(IN_WORLD_VALIDATION) > 0
    finally:
        gcompris._mount.cache_clear()


def test_a_missing_member_of_a_gcompris_activity_is_a_clear_error():
    need_gcompris()
    from source_code.data.gcompris import GcomprisMissing, load_image
    with pytest.raises(GcomprisMissing, match="no such image"):
        load_image("gcompris:explore_farm_animals/animals/unicorn.webp")


def test_an_unknown_photo_set_is_a_clear_error():
    from source_code.evaluation.photos import photo_entries
    with pytest.raises(ValueError, match="test, validation, opencv"):
        photo_entries("training")


def test_per_noun_rates_weigh_each_noun_once():
    from source_code.evaluation.photos import per_noun_rates
    rows = ([{"accept": ["fish"], "right": True}] * 9 + [{"accept": ["fish"], "right": False}]
            + [{"accept": ["cat"], "right": False}])
    assert per_noun_rates(rows) == {"cat": 0.0, "fish": 0.9}


def test_the_shipped_prior_is_what_the_rule_picks_from_its_recorded_table():
    """docs/results/imagenet_prior_objects.json is the table `choose-imagenet-prior`
    wrote for the shipped bundle; the bundle's card carries the rule's pick of it."""
    from source_code.evaluation.imagenet_prior import pick_weight
    table = json.loads((REPO / "docs" / "results" / "imagenet_prior_objects.json").read_text())
    card = json.loads((REPO / "models" / "objects" / "config.json").read_text())
    chosen = pick_weight(table["rows"])
    assert (table["chosen"], table["chosen_pooling"]) == (chosen["weight"], chosen["pooling"])
    assert card["decoder"]["imagenet_prior"] == chosen["weight"]
    assert card["decoder"]["imagenet_prior_pooling"] == chosen["pooling"]
    assert card["imagenet_prior_choice"]["rule"] == table["rule"]
