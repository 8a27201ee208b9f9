"""What a click costs next to a caption, through the running server.

For each bundle: `python app.py` is started, then the same frames are sent to
``/api/caption`` and to ``/api/explain`` with ``methods=gradcam`` (the compact
default answer: heatmaps, no PNG overlays), interleaved so both see the same
machine state. Prints the medians, their ratio and the answer sizes, and writes
them to a JSON result file (``--json``).

    python bench/explain_vs_caption.py --bundles objects shapes --requests 60 \
        --json docs/results/explain_vs_caption.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))
from load import free_port, multipart, request, start_server, stop_server, wait_until_healthy  # noqa: E402

TARGET_RATIO, TARGET_BYTES = 1.3, 64 * 1024


def frames(world: str, n: int) -> list[bytes]:
    """PNG frames of the bundle's own world, at 320 px (a webcam-sized upload)."""
    import io

    from PIL import Image
    sys.path.insert(0, str(REPO))
    from source_code.data.worlds import scene_generator
    generate = scene_generator(world)
    out = []
    for i in range(n):
        buf = io.BytesIO()
        Image.fromarray(generate(60_000_000 + i, image_size=320).image).save(buf, "PNG")
        out.append(buf.getvalue())
    return out


def timed(port: int, path: str, png: bytes, fields: dict) -> tuple[float, int]:
    body, content_type = multipart(fields, {"image": ("frame.png", png)})
    t0 = time.perf_counter()
    answer = request(port, "POST", path, body, content_type, timeout=120)
    ms = 1000 * (time.perf_counter() - t0)
    if answer.status != 200:
        raise SystemExit(f"{path} answered {answer.status}: {answer.body[:200]!r}")
    return ms, len(answer.body)


def measure(bundle: str, requests: int) -> dict:
    from source_code.model.bundles import resolve_bundle
    path = resolve_bundle(bundle)
    world = json.loads((Path(path) / "config.json").read_text()).get("world", "shapes")
    pool = frames(world, 8)
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        proc = start_server(path, port, Path(tmp) / "server.log")
        try:
            wait_until_healthy(port, proc, timeout=300)
            for png in pool[:2]:        # past any first-call cost
                timed(port, "/api/caption", png, {})
                timed(port, "/api/explain", png, {"methods": "gradcam"})
            caption, explain, sizes = [], [], []
            for i in range(requests):
                png = pool[i % len(pool)]
                caption.append(timed(port, "/api/caption", png, {})[0])
                ms, size = timed(port, "/api/explain", png, {"methods": "gradcam"})
                explain.append(ms)
                sizes.append(size)
        finally:
            stop_server(proc)
    med_c, med_e = statistics.median(caption), statistics.median(explain)
    return {"bundle": bundle, "world": world, "requests": requests,
            "caption_median_ms": round(med_c, 1), "explain_gradcam_median_ms": round(med_e, 1),
            "ratio": round(med_e / med_c, 3), "answer_bytes_max": max(sizes),
            "answer_bytes_median": int(statistics.median(sizes))}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bundles", nargs="+", default=["objects", "shapes"])
    p.add_argument("--requests", type=int, default=60)
    p.add_argument("--json", default=None, help="write the results here")
    args = p.parse_args(argv)
    rows = [measure(b, args.requests) for b in args.bundles]
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores")
    print(f"{'bundle':10s} {'caption ms':>11s} {'explain ms':>11s} {'ratio':>7s} {'max bytes':>10s}")
    for r in rows:
        print(f"{r['bundle']:10s} {r['caption_median_ms']:11.1f} {r['explain_gradcam_median_ms']:11.1f} "
              f"{r['ratio']:7.2f} {r['answer_bytes_max']:10d}")
        print(f"  targets: ratio <= {TARGET_RATIO}: {'met' if r['ratio'] <= TARGET_RATIO else 'MISSED'}; "
              f"answer <= 64 KB: {'met' if r['answer_bytes_max'] <= TARGET_BYTES else 'MISSED'}")
    if args.json:
        from source_code.files import write_json
        write_json(args.json, {"machine": f"{platform.machine()}, {os.cpu_count()} cores",
                               "results": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
