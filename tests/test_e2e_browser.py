"""The whole product in a real browser: Chromium's fake camera plays a synthetic scene,
the page captures a frame, the server captions and explains it, and the caption shown
must be the scene's (up to the order of a two-object caption).

Runs against the bundled default model (models/shapes). CAPTION_E2E_BUNDLE=DIR runs it
against another bundle, and then only checks that some caption is shown. Skipped when
Debian's Chromium or Playwright is missing, except under CI=true, where that fails.
"""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from source_code.data.synthetic import canonical_caption, generate_scene

from browser import CHROMIUM, camera_browser, write_y4m  # shared with bench/live.py
from conftest import unavailable

REPO = Path(__file__).resolve().parent.parent
SHAPES_BUNDLE = REPO / "models" / "shapes"

SCREENSHOT = REPO / "docs" / "screenshot.png"
SCENE_SEED = 50_000_002          # held out from training; two large objects side by side
FRAME_SIDE = 320
STARTUP_TIMEOUT = 180            # seconds: loading and warming up the model
EXPLAIN_TIMEOUT_MS = 120_000


def _unavailable(reason: str):
    unavailable(reason, "the browser test must run")


def _bundle() -> tuple[Path, bool]:
    """(bundle dir, whether it is the default model, whose caption is checked word by word)."""
    override = os.environ.get("CAPTION_E2E_BUNDLE")
    if override:
        return Path(override), False
    if not (SHAPES_BUNDLE / "config.json").exists():
        pytest.fail(f"the bundled default model is missing: {SHAPES_BUNDLE} "
                    "(python -m source_code train-default builds it; CAPTION_E2E_BUNDLE=DIR "
                    "runs this test against another bundle)")
    return SHAPES_BUNDLE, True


def require_playwright():
    """Playwright's sync_playwright, or a skip (a failure under CI=true) saying what is missing."""
    if not CHROMIUM.exists():
        _unavailable(f"Debian's Chromium is not installed at {CHROMIUM}")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("Playwright for Python is not installed")
    return sync_playwright


@pytest.fixture(scope="module")
def browser_tools():
    return require_playwright()


@pytest.fixture(scope="module")
def scene():
    return generate_scene(SCENE_SEED, image_size=160, jpeg_quality=0)


@pytest.fixture()
def server(browser_tools, shared_shapes_server):
    """``python app.py`` on _bundle(), started with served(); test_e2e_live uses the same
    process (tests/conftest.py shares it: one model load and warm-up for both modules).
    Function-scoped: each test asks the shared server, which is running whenever a test
    asks (it is stopped between tests only when the next one does not need it)."""
    return shared_shapes_server.get()


@pytest.fixture(scope="module")
def browser(browser_tools, scene, tmp_path_factory):
    frame = np.asarray(Image.fromarray(scene.image).resize((FRAME_SIDE, FRAME_SIDE), Image.BILINEAR))
    clip = write_y4m(tmp_path_factory.mktemp("camera") / "scene.y4m", frame)
    with camera_browser(browser_tools, clip) as b:
        yield b


def test_y4m_writer_round_trips(tmp_path):
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[...] = (255, 0, 0)
    data = write_y4m(tmp_path / "red.y4m", rgb, frames=2).read_bytes()
    header, rest = data.split(b"\n", 1)
    assert header == b"YUV4MPEG2 W4 H4 F10:1 Ip A0:0 C420jpeg"
    frame = rest[len(b"FRAME\n"): len(b"FRAME\n") + 24]
    assert rest.count(b"FRAME\n") == 2
    y, u, v = frame[0], frame[16], frame[20]
    assert (y, u, v) == (81, 90, 240)      # BT.601 limited-range red


@pytest.mark.slow
def test_camera_capture_caption_and_evidence(server, browser, scene, tmp_path):
    page = browser.new_page(viewport={"width": 1440, "height": 960})
    console_errors = []
    page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: console_errors.append(str(e)))
    page.goto(server["base"] + "/")
    page.wait_for_function("document.getElementById('model-status').textContent.startsWith('model ')"
                           " && !document.getElementById('model-status').textContent.includes('loading')")

    page.click("#start-camera")
    page.wait_for_function("() => { const v = document.getElementById('preview');"
                           " return v && v.readyState >= 2 && v.videoWidth > 0; }", timeout=30_000)
    page.wait_for_timeout(300)          # let a few frames through
    assert page.is_enabled("#capture")

    with page.expect_response(lambda r: r.url.endswith("/api/explain"), timeout=EXPLAIN_TIMEOUT_MS) as info:
        page.click("#capture")
    response = info.value
    assert response.status == 200, response.text()[:500]
    result = response.json()
    page.wait_for_selector("#caption .caption-word", timeout=30_000)

    # The frame the server saw is the fake camera's, whole.
    assert result["image"] == {"width": FRAME_SIDE, "height": FRAME_SIDE}
    # The model picker names the bundle being served.
    if page.query_selector("#bundle-picker") and server["is_default"]:
        assert page.eval_on_selector("#bundle-picker", "el => el.value") == "shapes"

    shown = " ".join(page.inner_text("#caption").split())
    assert shown == result["caption"]
    if server["is_default"]:
        assert canonical_caption(shown) == canonical_caption(scene.caption), (shown, scene.caption)
    else:
        assert shown, "the page shows no caption"
        warnings.warn(f"CAPTION_E2E_BUNDLE is set: caption {shown!r} not compared with {scene.caption!r}")

    def src(element_id):
        return page.get_attribute(f"#{element_id}", "src") or ""

    for method in ("gradcam", "saliency"):
        assert src(f"overlay-{method}").startswith("data:image/png"), method
    if "ace" in result["explanations"]:
        assert src("overlay-ace").startswith("data:image/png")
        assert page.is_visible("#ace-section")
        if "adversarial" in result["explanations"]["ace"]:
            assert page.is_visible("#adversarial-section")
            assert page.inner_text("#adv-caption").strip()
    else:   # PENDING until ACE lands in the pipeline: the page must say so, not break
        warnings.warn("PENDING: the server's answer has no 'ace' section; #overlay-ace not checked")
        assert "not available" in page.inner_text("#card-ace")
    if "attention" in result["explanations"]:
        assert page.is_visible("#card-attention")
        assert "not an attribution" in page.inner_text("#card-attention")
    assert page.locator("#timings tr").count() >= 3
    assert not page.is_visible("#error")

    # Selecting a word shows that word's evidence; saliency for it is fetched on demand.
    before = {m: src(f"overlay-{m}") for m in ("gradcam", "saliency")}
    word = page.locator("#caption .caption-word").nth(min(2, len(result["words"]) - 1))
    word.click()
    assert "selected" in (word.get_attribute("class") or "")
    page.wait_for_function("(old) => document.getElementById('overlay-gradcam').src !== old",
                           arg=before["gradcam"], timeout=10_000)
    page.wait_for_function("(old) => { const c = document.getElementById('card-saliency');"
                           " return document.getElementById('overlay-saliency').src !== old"
                           " && !c.classList.contains('stale'); }",
                           arg=before["saliency"], timeout=EXPLAIN_TIMEOUT_MS)
    assert src("overlay-gradcam").startswith("data:image/png")
    assert "Evidence for" in page.inner_text("#selection-label")
    assert not page.is_visible("#error")
    if "ace" in result["explanations"]:
        # ... and re-ranks the concept cards for that word: its significant concepts in the
        # answer's order, the others folded away in their <details>
        ranked = result["explanations"]["ace"]["words"][min(2, len(result["words"]) - 1)]["concepts"]
        assert ranked, "the shapes bank has concepts in every frame of its world"
        shown = page.eval_on_selector_all("#ace-concepts .ace-card", "cs => cs.map(c => c.dataset.concept)")
        folded = page.eval_on_selector_all("#ace-segments .ace-card", "cs => cs.map(c => c.dataset.concept)")
        assert shown == [c["id"] for c in ranked if c["significant"]]
        assert folded == [c["id"] for c in ranked if not c["significant"]]
        # a significant concept whose TCAV score lies below one half says it lowers the word
        lowering = page.eval_on_selector_all("#ace-concepts .chip.sig.lowers", "cs => cs.length")
        assert lowering == sum(c["lowers"] for c in ranked)
        assert not page.is_visible("#ace-segments .ace-card") or not folded

    # The trust score of the clicked word's Grad-CAM: its deletion curve on this frame.
    page.wait_for_function("() => document.getElementById('trust-verdict').textContent"
                           ".toLowerCase().includes('deleting the top')", timeout=EXPLAIN_TIMEOUT_MS)
    assert f"p({result['words'][min(2, len(result['words']) - 1)]})" in page.inner_text("#trust-verdict")
    assert 0 <= float(page.get_attribute("#trust-plot", "data-auc")) <= 1
    # ... and every word's score arrives in the background, so the next click needs no request
    page.wait_for_function("(n) => { const s = (document.getElementById('trust-section').dataset"
                           ".scored || '').split(' '); return [...Array(n).keys()]"
                           ".every((i) => s.includes(`gradcam:${i}`)); }",
                           arg=len(result["words"]), timeout=EXPLAIN_TIMEOUT_MS)

    # "Why this word and not that one?": the word's alternatives, one click from a contrast.
    page.wait_for_selector("#word-panel:not([hidden]) #alternatives .chip", timeout=10_000)
    chip = page.locator("#alternatives .chip").first
    alternative = chip.inner_text().split()[0]
    chip.click()        # the contrast arrives as its own /api/explain answer
    page.wait_for_function("(alt) => document.getElementById('score-contrastive').textContent"
                           ".includes(alt)", arg=f"“{alternative}”", timeout=EXPLAIN_TIMEOUT_MS)
    assert src("overlay-contrastive").startswith("data:image/png")

    # The user's own caption: scored and explained word by word; unknown words refused.
    own = "a small green triangle" if result["words"][:3] != ["a", "small", "green"] \
        else "a large blue circle"
    page.fill("#own-caption", own)
    page.click("#own-caption-submit")
    page.wait_for_function("(own) => document.getElementById('caption').innerText.trim()"
                           ".replace(/\\s+/g, ' ') === own", arg=own, timeout=EXPLAIN_TIMEOUT_MS)
    assert page.locator("#caption .caption-word.unlikely").count() >= 1   # not the model's words
    page.fill("#own-caption", "a purple unicorn")
    page.click("#own-caption-submit")
    page.wait_for_selector("#error:not([hidden])", timeout=30_000)
    assert "vocabulary" in page.inner_text("#error")
    page.fill("#own-caption", result["caption"])        # back to the model's own caption
    with page.expect_response(lambda r: r.url.endswith("/api/explain"),
                              timeout=EXPLAIN_TIMEOUT_MS):
        page.click("#own-caption-submit")
    page.wait_for_timeout(300)

    # Saving happens in the browser: the JSON holds the result and the frame.
    with page.expect_download() as download:
        page.click("#download-json")
    saved = json.loads(Path(download.value.path()).read_text())
    assert saved["result"]["caption"] == result["caption"]
    assert saved["frame"].startswith("data:image/png;base64,")
    with page.expect_download() as download:
        page.click("#download-png")
    assert Path(download.value.path()).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    SCREENSHOT.parent.mkdir(exist_ok=True)
    page.screenshot(path=str(tmp_path / "screenshot.png"), full_page=True)
    page.screenshot(path=str(SCREENSHOT), full_page=True)
    refused = [e for e in console_errors if "status of 400" in e]
    assert len(refused) == 1, console_errors       # the caption with unknown words, only
    assert not [e for e in console_errors if e not in refused], console_errors
    page.close()


@pytest.mark.slow
def test_camera_errors_are_explained(server, browser):
    page = browser.new_page()
    # An insecure origin: no navigator.mediaDevices at all.
    page.add_init_script("Object.defineProperty(navigator, 'mediaDevices', {value: undefined});")
    page.goto(server["base"] + "/")
    page.click("#start-camera")
    assert "localhost or over HTTPS" in page.inner_text("#error")
    page.close()

    page = browser.new_page()
    page.add_init_script("navigator.mediaDevices.getUserMedia = () => "
                         "Promise.reject(new DOMException('denied', 'NotAllowedError'));")
    page.goto(server["base"] + "/")
    page.click("#start-camera")
    assert "permission was denied" in page.inner_text("#error")
    page.close()


@pytest.mark.slow
def test_server_errors_are_shown_in_plain_words(server, browser, tmp_path):
    tiny = tmp_path / "dot.png"
    Image.new("RGB", (1, 1), (200, 0, 0)).save(tiny)
    page = browser.new_page()
    page.goto(server["base"] + "/")
    page.set_input_files("#upload-input", str(tiny))
    page.wait_for_selector("#error:not([hidden])", timeout=30_000)
    assert "too small" in page.inner_text("#error")
    page.close()
