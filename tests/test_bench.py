"""The benchmarks run and print their tables (timings themselves are not asserted:
they are the benchmarks' output, measured on whatever machine runs them)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _start(work: Path, *args) -> subprocess.Popen:
    """``python ARGS`` in the repository, its output in files under ``work`` (not pipes:
    a run that nobody reads yet must not stall on a full pipe)."""
    work.mkdir(parents=True, exist_ok=True)
    with open(work / "stdout.txt", "w") as out, open(work / "stderr.txt", "w") as err:
        proc = subprocess.Popen([sys.executable, *args], cwd=REPO, stdout=out, stderr=err,
                                text=True)
    proc.work = work
    return proc


def _finish(proc: subprocess.Popen, timeout=600):
    try:
        proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, (proc.work / "stderr.txt").read_text()[-2000:]
    return (proc.work / "stdout.txt").read_text()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Both benchmarks of this module, started together (each is mostly one process's
    TensorFlow start-up, model loading and compiling): {name: (work folder, process)}.
    Neither test asserts a timing against a fixed bound, so sharing the machine
    changes what they print, not what is checked."""
    root = tmp_path_factory.mktemp("bench")
    started = {
        "latency": (root / "latency", _start(
            root / "latency", "bench/latency.py", "--model", "default", "--runs", "1",
            "--json", str(root / "t.json"))),
        "decode": (root / "decode", _start(
            root / "decode", "bench/decode_vs_backbone.py", "--variant", "b0", "--size", "64",
            "--vocab", "60", "--units", "16", "--embed-dim", "8", "--max-length", "6",
            "--typical-length", "4", "--runs", "1")),
    }
    try:
        yield root, started
    finally:
        for _, proc in started.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.mark.slow
def test_decode_benchmark_prints_both_targets(runs):
    _, started = runs
    out = _finish(started["decode"][1])
    assert "beam-3 decode, 4-token caption" in out
    assert out.count("target beam-3 <= 5 % of a forward") == 2


@pytest.mark.slow
def test_latency_benchmark_on_the_default_bundle(runs):
    root, started = runs
    out = _finish(started["latency"][1])
    for step in ("backbone forward", "Grad-CAM, caption + all words", "ACE at request time",
                 "adversarial check", "full explain (default methods)"):
        assert step in out, step
    assert "full explain <= 1.5 x (F + FB)" in out
    t = json.loads((root / "t.json").read_text())
    assert t["caption words"] > 0 and t["full explain (default methods)"] > t["backbone forward"]
