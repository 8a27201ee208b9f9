"""A real browser with a fake camera, for the end-to-end tests and the live benchmark:
Debian's Chromium, driven by Playwright, whose camera plays a .y4m clip."""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import numpy as np

CHROMIUM = Path("/usr/bin/chromium")


def _yuv420_planes(rgb: np.ndarray) -> list[np.ndarray]:
    """Y, Cb, Cr planes of one RGB frame (4:2:0, BT.601 limited range, as browsers read it)."""
    h, w = rgb.shape[:2]
    assert h % 2 == 0 and w % 2 == 0
    r, g, b = (rgb[..., i].astype(np.float64) for i in range(3))
    y = 16 + (65.481 * r + 128.553 * g + 24.966 * b) / 255
    cb = 128 + (-37.797 * r - 74.203 * g + 112.0 * b) / 255
    cr = 128 + (112.0 * r - 93.786 * g - 18.214 * b) / 255

    def half(c):  # 2 x 2 averages: the chroma planes of 4:2:0
        return c.reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))

    return [np.clip(np.rint(p), 0, 255).astype(np.uint8) for p in (y, half(cb), half(cr))]


def write_y4m(path: Path, rgb: np.ndarray, frames: int = 10) -> Path:
    """A YUV4MPEG2 clip at 10 frames/s: ``rgb`` [H, W, 3] shown still for ``frames``
    frames, or a sequence [N, H, W, 3] played once (the fake camera loops the file)."""
    sequence = [rgb] * frames if rgb.ndim == 3 else list(rgb)
    h, w = sequence[0].shape[:2]
    with open(path, "wb") as f:
        f.write(f"YUV4MPEG2 W{w} H{h} F10:1 Ip A0:0 C420jpeg\n".encode("ascii"))
        for frame in sequence:
            f.write(b"FRAME\n")
            for p in _yuv420_planes(frame):
                f.write(p.tobytes())
    return path


def fake_camera_chromium(playwright, clip: Path):
    """Debian's Chromium whose camera plays ``clip`` (a .y4m file), permission granted."""
    return playwright.chromium.launch(executable_path=str(CHROMIUM), args=[
        "--no-sandbox", "--disable-gpu", "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream", f"--use-file-for-fake-video-capture={clip}",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--no-first-run"])


@contextmanager
def camera_browser(sync_playwright, clip: Path):
    """``fake_camera_chromium`` for the block, closed afterwards (sync_playwright:
    Playwright's factory, passed in so that callers decide how its absence is handled)."""
    with sync_playwright() as p:
        browser = fake_camera_chromium(p, clip)
        try:
            yield browser
        finally:
            browser.close()


def page_with_camera(browser, base: str, viewport=(1440, 960)):
    """A new page of the app at ``base``, its model loaded and the camera started."""
    page = browser.new_page(viewport={"width": viewport[0], "height": viewport[1]})
    page.goto(base + "/")
    page.wait_for_function("() => document.getElementById('model-status').textContent"
                           ".startsWith('model ')")
    page.click("#start-camera")
    page.wait_for_function("() => { const v = document.getElementById('preview');"
                           " return v && v.readyState >= 2 && v.videoWidth > 0; }")
    return page
