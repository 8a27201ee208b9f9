"""Live mode's frame rate in a real browser: Chromium's fake camera plays a clip of
the bundle's world, the page's Live button explains the stream, and the explained
frames are counted over a fixed window (after a warm-up).

    python bench/live.py --bundle objects --seconds 20 --json docs/results/live_objects.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
from browser import camera_browser, page_with_camera, write_y4m  # noqa: E402
from load import served  # noqa: E402

TARGET_FPS = 8.0
FRAME_SIDE = 320


def clip_of(world: str, seconds: int = 4) -> np.ndarray:
    """[N, S, S, 3]: a few scenes of the bundle's world, each shown for a second."""
    from source_code.data.worlds import scene_generator
    generate = scene_generator(world)
    frames = [generate(70_000_000 + i, image_size=FRAME_SIDE).image for i in range(seconds)]
    return np.stack([f for f in frames for _ in range(10)])


def live_frames_per_second(base: str, clip: Path, seconds: float, warm_up: float) -> dict:
    from playwright.sync_api import sync_playwright
    with camera_browser(sync_playwright, clip) as browser:
        page = page_with_camera(browser, base, viewport=(1280, 900))
        page.click("#live")
        page.wait_for_function("() => Number(document.getElementById('live-overlay')"
                               ".dataset.frames || 0) >= 1", timeout=120_000)
        time.sleep(warm_up)
        count = lambda: int(page.get_attribute("#live-overlay", "data-frames") or 0)  # noqa: E731
        n0, t0 = count(), time.monotonic()
        time.sleep(seconds)
        n1, t1 = count(), time.monotonic()
        page.click("#live")
    return {"frames": n1 - n0, "seconds": round(t1 - t0, 2), "fps": round((n1 - n0) / (t1 - t0), 2)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", default="objects")
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--warm-up", type=float, default=5)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    from source_code.model.bundles import resolve_bundle
    bundle = resolve_bundle(args.bundle)
    world = json.loads((Path(bundle) / "config.json").read_text()).get("world", "shapes")
    with tempfile.TemporaryDirectory() as tmp:
        clip = write_y4m(Path(tmp) / "clip.y4m", clip_of(world))
        with served(bundle, Path(tmp) / "server.log") as running:
            result = live_frames_per_second(running["base"], clip, args.seconds, args.warm_up)
    result.update(bundle=args.bundle, machine=f"{platform.machine()}, {os.cpu_count()} cores",
                  target_fps=TARGET_FPS)
    print(f"live mode, bundle {args.bundle}: {result['frames']} explained frames in "
          f"{result['seconds']} s = {result['fps']} frames/s (target >= {TARGET_FPS}: "
          f"{'met' if result['fps'] >= TARGET_FPS else 'MISSED'})")
    if args.json:
        from source_code.files import write_json
        write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
