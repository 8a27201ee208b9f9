"""The benchmarks run and print their tables (timings themselves are not asserted:
they are the benchmarks' output, measured on whatever machine runs them)."""
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _run(*args, timeout=600):
    out = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True,
                         timeout=timeout)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def test_decode_benchmark_prints_both_targets():
    out = _run("bench/decode_vs_backbone.py", "--variant", "b0", "--size", "64", "--vocab", "60",
               "--units", "16", "--embed-dim", "8", "--max-length", "6", "--typical-length", "4",
               "--runs", "1")
    assert "beam-3 decode, 4-token caption" in out
    assert out.count("target beam-3 <= 5 % of a forward") == 2


def test_latency_benchmark_on_the_default_bundle(tmp_path):
    import json
    out = _run("bench/latency.py", "--model", "default", "--runs", "1",
               "--json", str(tmp_path / "t.json"))
    for step in ("backbone forward", "Grad-CAM, caption + all words", "ACE at request time",
                 "adversarial check", "full explain (default methods)"):
        assert step in out, step
    assert "full explain <= 1.5 x (F + FB)" in out
    t = json.loads((tmp_path / "t.json").read_text())
    assert t["caption words"] > 0 and t["full explain (default methods)"] > t["backbone forward"]
