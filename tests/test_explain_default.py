"""Explanations of the bundled default model on fresh synthetic scenes: pointing,
the model-randomisation sanity check, ACE with the shipped concept bank."""
import numpy as np
import pytest

FRESH_SEED = 31_000_000


@pytest.fixture(scope="module")
def scenes():
    from source_code.data.synthetic import generate_scene
    return [generate_scene(FRESH_SEED + i, n_objects=2) for i in range(12)]


def test_gradcam_points_at_the_named_objects(shapes_captioner, scenes):
    from source_code.explain import gradcam as G
    from source_code.explain.pointing import pointing_game
    from source_code.explain.target import caption_target

    def explain(scene):
        fmap = shapes_captioner.features(shapes_captioner.preprocess(scene.image))
        caption = shapes_captioner.decode_features(fmap, 3)[0].text
        return caption, G.gradcam(shapes_captioner, fmap, caption_target(shapes_captioner, caption))["words"]

    result = pointing_game(explain, scenes)
    assert result["all"]["words"] >= 60
    assert result["all"]["hit_rate"] >= 0.75, result   # 200-scene figure in the README


def test_sanity_check_randomised_model_gives_different_maps(shapes_captioner, scenes):
    from source_code.explain.faithfulness import randomized_copy
    from source_code.explain.report import sanity_check

    result = sanity_check(shapes_captioner, randomized_copy(shapes_captioner), scenes[:4])
    assert result["gradcam"] < 0.5, result
    assert result["saliency"] < 0.5, result


def test_full_explanation_with_concepts(shapes_captioner, scenes):
    from source_code.explain.pipeline import Explainer

    explainer = Explainer(shapes_captioner)
    assert explainer.concept_bank is not None, "the default bundle ships a concept bank"
    out = explainer.explain(scenes[0].image, words="all", overlays=True)
    n = len(out["words"])
    ex = out["explanations"]
    assert set(ex) >= {"gradcam", "saliency", "ace", "attention"}
    for method in ("gradcam", "saliency", "ace"):
        assert len(ex[method]["words"]) == n
        grid = np.array(ex[method]["caption"]["heatmap"])
        assert grid.ndim == 2 and grid.shape[0] <= 64 and 0 <= grid.min() and grid.max() <= 1
        assert ex[method]["caption"]["overlay"].startswith("data:image/png;base64,")
    assert ex["ace"]["concepts"], "segments of a scene match some concepts"
    assert all(c["patches"] for c in ex["ace"]["concepts"])
    adv = ex["ace"]["adversarial"]
    assert {"new_caption", "changed_words", "all_pixels", "salient_pixels"} <= set(adv)
    assert "attribution" in ex["attention"]["note"]
