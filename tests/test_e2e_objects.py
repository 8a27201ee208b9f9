"""The default bundle in a real browser: Chromium's fake camera shows a real photograph
of a person, and the page's caption must name a person; shown a star field (a frame
from outside the objects world), the page must warn that the caption is a guess.

Skipped like test_e2e_browser when Chromium or Playwright is missing (failing under CI=true).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from browser import fake_camera_chromium, write_y4m
from load import served
from test_e2e_browser import require_playwright

REPO = Path(__file__).resolve().parent.parent
OBJECTS_BUNDLE = REPO / "models" / "objects"
FRAME_SIDE = 320
PERSON_NOUNS = {"person"}


def _photo(source: str) -> np.ndarray:
    from source_code.evaluation.photos import load_photo
    image = Image.fromarray(load_photo(source))
    return np.asarray(image.resize((FRAME_SIDE, FRAME_SIDE), Image.BILINEAR))


@pytest.fixture(scope="module")
def playwright():
    with require_playwright()() as p:
        yield p


@pytest.fixture(scope="module")
def server(playwright, tmp_path_factory):
    if not (OBJECTS_BUNDLE / "config.json").exists():
        pytest.fail(f"the default bundle is missing: {OBJECTS_BUNDLE}")
    log_path = tmp_path_factory.mktemp("server") / "server.log"
    with served(None, log_path) as running:   # no --bundle: the default is what is tested
        yield running


def _capture(playwright, server, frame: np.ndarray, tmp_path) -> tuple[dict, object, object]:
    clip = write_y4m(tmp_path / "camera.y4m", frame)
    browser = fake_camera_chromium(playwright, clip)
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(server["base"] + "/")
    page.wait_for_function("document.getElementById('model-status').textContent.startsWith('model ')"
                           " && !document.getElementById('model-status').textContent.includes('loading')")
    page.click("#start-camera")
    page.wait_for_function("() => { const v = document.getElementById('preview');"
                           " return v && v.readyState >= 2 && v.videoWidth > 0; }", timeout=30_000)
    page.wait_for_timeout(300)
    with page.expect_response(lambda r: r.url.endswith("/api/explain"), timeout=120_000) as info:
        page.click("#capture")
    assert info.value.status == 200, info.value.text()[:500]
    page.wait_for_selector("#caption .caption-word", timeout=30_000)
    return info.value.json(), page, browser


@pytest.mark.slow
def test_the_default_bundle_is_served_and_listed(server):
    health = server["health"]
    assert health["model"]["name"] == "objects"
    assert {b["name"] for b in health["bundles"]} >= {"objects", "shapes"}


@pytest.mark.slow
def test_a_real_photo_of_a_person_is_called_a_person(playwright, server, tmp_path):
    result, page, browser = _capture(playwright, server, _photo("matplotlib:grace_hopper.jpg"), tmp_path)
    try:
        shown = " ".join(page.inner_text("#caption").split())
        assert shown == result["caption"]
        assert PERSON_NOUNS & set(shown.split()), shown
        assert result["familiar"] is True
        assert not page.is_visible("#unfamiliar")
    finally:
        browser.close()


@pytest.mark.slow
def test_a_star_field_is_flagged_as_unfamiliar(playwright, server, tmp_path):
    result, page, browser = _capture(playwright, server, _photo("skimage:hubble_deep_field.jpg"), tmp_path)
    try:
        assert result["familiar"] is False, result
        assert page.is_visible("#unfamiliar")
        assert "only a guess" in page.inner_text("#unfamiliar")
    finally:
        browser.close()


CONCEPTS_SCREENSHOT = REPO / "docs" / "concepts_objects.png"
# "a building left of a train": a validation seed, never a test one; the first from
# 90,000,500 that the shipped bundle captions right through the fake camera's 4:2:0
# colour and whose two nouns' concepts it names (the bank names 0.83 of object words,
# so some scenes miss: this test checks the page, the figure is bench/ace_concepts.py's)
NAMED_SCENE_SEED = 90_000_500


@pytest.mark.slow
def test_the_concept_cards_name_the_objects_of_the_caption(playwright, server, tmp_path):
    """An objects scene on the camera: clicking each object word of the caption puts a
    significant concept named after that object on the first card."""
    from source_code.data.objects_world import generate_object_scene
    scene = generate_object_scene(NAMED_SCENE_SEED, image_size=FRAME_SIDE, n_objects=2)
    result, page, browser = _capture(playwright, server, scene.image, tmp_path)
    try:
        assert result["caption"] == scene.caption, result["caption"]
        ace = result["explanations"]["ace"]
        nouns = [t for t, w in enumerate(result["words"]) if scene.word_kind(w) == "object"]
        assert len(nouns) == 2
        for t in nouns:
            word = result["words"][t]
            first = next(c for c in ace["words"][t]["concepts"] if c["significant"])
            page.locator("#caption .caption-word").nth(t).click()
            page.wait_for_function(
                "(id) => { const c = document.querySelector('#ace-concepts .ace-card');"
                " return c && c.dataset.concept === id; }", arg=first["id"], timeout=10_000)
            name = page.inner_text("#ace-concepts .ace-card .concept-head strong")
            assert word in name.split(), (word, name)
            assert "significant" in page.inner_text("#ace-concepts .ace-card .concept-facts")
        page.locator("#ace-section").screenshot(path=str(tmp_path / "concepts.png"))
        page.locator("#ace-section").screenshot(path=str(CONCEPTS_SCREENSHOT))
    finally:
        browser.close()
