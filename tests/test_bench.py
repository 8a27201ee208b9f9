"""The benchmarks run and print their tables (timings themselves are not asserted:
they are the benchmarks' output, measured on whatever machine runs them)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import finish_logged, need_gcompris, need_opencv_samples, start_logged, stop_logged


def _start(work: Path, *args) -> subprocess.Popen:
    """``python ARGS`` in the repository (see ``start_logged``)."""
    return start_logged(work, [sys.executable, *args])


def _finish(proc: subprocess.Popen, timeout=600) -> str:
    done = finish_logged(proc, timeout)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


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
        stop_logged(proc for _, proc in started.values())


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


@pytest.mark.slow
def test_train_step_benchmark_times_the_three_variants(tmp_path):
    out = tmp_path / "step.json"
    proc = _start(tmp_path / "step", "bench/train_step.py", "--bundle", "objects", "--batch", "4",
                  "--runs", "1", "--json", str(out))
    printed = _finish(proc)        # stops the run on any failure too
    assert "textbook / channel shift" in printed
    result = json.loads(out.read_text())
    assert set(result["seconds_per_step"]) == {
        "no Grad-CAM loss", "Grad-CAM loss, textbook dA", "Grad-CAM loss, channel shift",
        "no Grad-CAM loss, bfloat16 cell products",
        "Grad-CAM loss, channel shift, bfloat16 cell products"}
    assert set(result["float32_over_bfloat16_cells"]) == {"no Grad-CAM loss",
                                                          "Grad-CAM loss, channel shift"}
    assert all(s > 0 for s in result["seconds_per_step"].values())


@pytest.mark.slow
def test_objects_errors_benchmark_accounts_for_every_object(tmp_path):
    """Every object of the validation scenes lands in exactly one kind, one size band
    and one scene size; shares are shares."""
    out = tmp_path / "errors.json"
    proc = _start(tmp_path / "errors", "bench/objects_errors.py", "--scenes", "6", "--json",
                  str(out))
    _finish(proc)
    result = json.loads(out.read_text())
    total = sum(v["objects"] for v in result["by_scene"].values())
    assert total >= 6
    for table in ("by_kind", "by_longer_side_px"):
        assert sum(v["objects"] for v in result[table].values()) == total
    shares = [v["named"] for t in ("by_kind", "by_scene") for v in result[t].values()
              if v["named"] is not None]
    assert shares and all(0 <= s <= 1 for s in shares)
    assert result["seeds"][0] == 80_000_000 and 0 <= result["exact_match"] <= 1


@pytest.mark.slow
def test_bank_batching_benchmark_compares_the_same_segments(tmp_path):
    """Both ways embed the same segments (the same patches, within float tolerance) and
    the ratio is the two ways' own times."""
    out = tmp_path / "bank.json"
    proc = _start(tmp_path / "bank", "bench/bank_batching.py", "--bundle", "shapes",
                  "--scenes", "6", "--repeats", "1", "--json", str(out))
    assert "batched / one at a time" in _finish(proc)
    result = json.loads(out.read_text())
    one, batched = result["ms_a_scene"].values()
    assert result["speed_up"] == pytest.approx(one / batched, rel=0.05)
    assert result["patches_embedded"] > 0 and result["largest_embedding_difference"] < 1e-3


def test_resolution_probe_averages_each_object_under_its_mask():
    """An object's vector is the mean of the cells its mask covers, weighted by cover:
    a mask on exactly two cells of a 4 x 4 grid gives their mean, whatever the others."""
    import numpy as np
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
    import resolution_probe
    from source_code.data.objects_world import ObjectScene, WorldObject

    import tensorflow as tf

    def net(x, training=False):      # cell (i, j) of a 4 x 4 grid holds i * 4 + j
        cells = tf.reshape(tf.range(16, dtype=tf.float32), (1, 4, 4, 1))
        return tf.repeat(cells, tf.shape(x)[0], 0)

    mask = np.zeros((64, 64), bool)
    mask[16:32, 0:32] = True             # cells (1, 0) and (1, 1) at 16 px a cell
    obj = WorldObject("cup", "emoji:cup", mask, (0, 16, 32, 32))
    scene = ObjectScene(np.zeros((64, 64, 3), np.uint8), "a cup", [obj], None, 0)
    vectors, rows = resolution_probe.object_vectors(net, 64, [scene])
    assert vectors.shape == (1, 1) and vectors[0, 0] == pytest.approx((4 + 5) / 2)
    assert rows == [("cup", 32 * 224 / 64, 1)]


@pytest.mark.slow
def test_resolution_probe_reports_each_settings_grid(tmp_path):
    out = tmp_path / "probe.json"
    proc = _start(tmp_path / "probe", "bench/resolution_probe.py", "--train", "40", "--val", "12",
                  "--settings", "224 (7x7)", "224 dilated (14x14)", "--json", str(out))
    assert "objects named" in _finish(proc)
    result = json.loads(out.read_text())["settings"]
    assert [r["grid"] for r in result.values()] == [7, 14]
    assert all(0 <= r["accuracy"] <= 1 and r["objects"] > 12 for r in result.values())


@pytest.mark.slow
def test_familiarity_statistics_benchmark_scores_every_statistic(tmp_path):
    """Every statistic gets a row per quantile (both quantiles for the pair), rates are
    shares, balanced accuracy is their mean, and the out-of-world frames are broken down
    by every kind the two pooled validation sets have."""
    need_gcompris()
    need_opencv_samples()
    out = tmp_path / "familiarity.json"
    proc = _start(tmp_path / "familiarity", "bench/familiarity_statistics.py", "--scenes", "8",
                  "--negatives", "40", "--sets", "validation,opencv", "--json", str(out))
    assert "noun_cell_and_probe" in _finish(proc)
    result = json.loads(out.read_text())
    assert set(result["best"]) == {"noun_cell", "noun_top3", "noun_frame", "any_class_cell",
                                   "object_probe", "noun_cell_and_probe"}
    assert len(result["rows"]["noun_cell"]) == 9 and len(result["rows"]["noun_cell_and_probe"]) == 81
    for rows in result["rows"].values():
        for row in rows:
            familiar, unfamiliar = row["familiar_in_world"], row["unfamiliar_out_of_world"]
            assert 0 <= familiar <= 1 and 0 <= unfamiliar <= 1
            assert row["balanced_accuracy"] == pytest.approx((familiar + unfamiliar) / 2, abs=1e-4)
            assert set(row["out_of_world_familiar_by_kind"]) == {"planet", "text", "stars",
                                                                  "blobs", "noise", "opencv"}
    best = result["best"]["noun_cell"]
    assert best["balanced_accuracy"] == max(r["balanced_accuracy"] for r in result["rows"]["noun_cell"])


def test_pair_halves_shows_each_photo_alone_where_the_pair_puts_it():
    """The left-alone frame is the pair's left half with a blank right half, and the
    other way round; every noun a pair misses is put down to one cause."""
    import numpy as np
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
    import pair_halves
    rng = np.random.default_rng(0)
    left, right = (rng.integers(0, 256, (60, 80, 3), dtype=np.uint8) for _ in range(2))
    pair, left_alone, right_alone = pair_halves.pair_frames(left, right)
    half = pair.shape[1] // 2
    assert np.array_equal(left_alone[:, :half], pair[:, :half])
    assert np.array_equal(right_alone[:, half:], pair[:, half:])
    assert (left_alone[:, half:] == 128).all() and (right_alone[:, :half] == 128).all()
    rows = [dict(both_named=False, left_in_pair=True, right_in_pair=False, left_alone=True,
                 right_alone=True),
            dict(both_named=False, left_in_pair=False, right_in_pair=False, left_alone=False,
                 right_alone=True),
            dict(both_named=True, left_in_pair=True, right_in_pair=True, left_alone=False,
                 right_alone=True)]
    result = pair_halves.summarise(rows)
    assert result["missed_nouns"] == {"to_the_other_photo": 2, "at_half_size": 1}
    assert result["both_named"] == pytest.approx(1 / 3, abs=1e-4) and result["both_named_alone"] == pytest.approx(1 / 3, abs=1e-4)
    assert result["left_in_pair"] == pytest.approx(2 / 3, abs=1e-4) and result["right_in_pair"] == pytest.approx(1 / 3, abs=1e-4)
