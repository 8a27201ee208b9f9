"""Live mode in a real browser: Chromium's fake camera plays a clip where one shape sits
on the left for three seconds, then on the right; the page explains the stream frame
after frame, and the Grad-CAM drawn over the preview must follow the shape. A second
viewer asking for live mode meanwhile is told to wait (503 + Retry-After), not queued.

Runs on the shapes bundle (the faithfulness lab: a single shape, exact ground truth).
Skipped like test_e2e_browser when Chromium or Playwright is missing (failing under CI=true).
"""
from __future__ import annotations

import time

import numpy as np
import pytest
from PIL import Image

from source_code.data.synthetic import generate_scene
from browser import camera_browser, write_y4m
from test_e2e_browser import browser_tools, server  # noqa: F401 (fixtures)

FRAME_SIDE = 320
SECONDS_EACH_SIDE = 3
ONE_SHAPE_ON_THE_LEFT = 50_000_012   # one small shape in the top-left quarter


def moving_clip() -> np.ndarray:
    """[N, S, S, 3]: the scene, then its mirror image (the shape jumps to the right)."""
    scene = generate_scene(ONE_SHAPE_ON_THE_LEFT, image_size=160, jpeg_quality=0)
    assert len(scene.objects) == 1 and scene.objects[0].center[0] < 0.4 * 160, scene.caption
    left = np.asarray(Image.fromarray(scene.image).resize((FRAME_SIDE, FRAME_SIDE), Image.BILINEAR))
    right = left[:, ::-1]
    n = 10 * SECONDS_EACH_SIDE
    return np.stack([left] * n + [right] * n)


@pytest.fixture(scope="module")
def live_browser(browser_tools, tmp_path_factory):
    clip = write_y4m(tmp_path_factory.mktemp("camera") / "moving.y4m", moving_clip())
    with camera_browser(browser_tools, clip) as b:
        yield b


def start_camera(page, base):
    page.goto(base + "/")
    page.wait_for_function("() => document.getElementById('model-status').textContent.startsWith('model ')"
                           " && !document.getElementById('model-status').textContent.includes('loading')")
    page.click("#start-camera")
    page.wait_for_function("() => { const v = document.getElementById('preview');"
                           " return v && v.readyState >= 2 && v.videoWidth > 0; }", timeout=30_000)


@pytest.mark.slow
def test_live_mode_follows_a_moving_shape_and_keeps_one_viewer(server, live_browser):
    page = live_browser.new_page(viewport={"width": 1280, "height": 900})
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    start_camera(page, server["base"])
    page.click("#live")
    page.wait_for_function("() => Number(document.getElementById('live-overlay').dataset.frames || 0) >= 3",
                           timeout=60_000)
    assert page.inner_text("#live-caption").strip()

    # A second viewer is refused at once while the first one streams.
    other = live_browser.new_page()
    start_camera(other, server["base"])
    other.click("#live")
    other.wait_for_selector("#error:not([hidden])", timeout=30_000)
    assert "another viewer" in other.inner_text("#error").lower()
    other.close()

    peaks, t0 = [], time.time()
    while time.time() - t0 < 4 * SECONDS_EACH_SIDE:
        peak = page.get_attribute("#live-overlay", "data-peak-x")
        if peak is not None:
            peaks.append(float(peak))
        page.wait_for_timeout(100)
    frames = int(page.get_attribute("#live-overlay", "data-frames"))
    assert frames >= 10, f"only {frames} live frames in {4 * SECONDS_EACH_SIDE} s"
    # The shape spends three seconds on each side: the evidence must have been on both.
    assert min(peaks) < 0.4 and max(peaks) > 0.6, peaks

    # Pausing explains the last live frame fully: every word can be explored.
    with page.expect_response(lambda r: r.url.endswith("/api/explain"), timeout=120_000):
        page.click("#live")
    page.wait_for_selector("#caption .caption-word", timeout=60_000)
    page.wait_for_function("() => document.getElementById('overlay-gradcam').src.startsWith('data:image/png')",
                           timeout=30_000)
    assert not errors, errors
    page.close()
