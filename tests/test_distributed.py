"""Distributed training with the strategies a CPU can run: MirroredStrategy over two
logical CPU devices and MultiWorkerMirroredStrategy with a one-worker TF_CONFIG.
Both must be set up before TensorFlow initialises, so each runs in a subprocess."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from source_code.data.synthetic import generate_scene, write_flickr8k_layout

from conftest import REPO, finish_logged, start_logged, stop_logged
from load import free_port  # bench/load.py: one free-port helper
TINY = ["--backbone", "slim", "--input-size", "64", "--weights", "none", "--width", "0.25",
        "--depth", "0.25", "--last-stride", "1", "--units", "32", "--min-count", "1",
        "--batch-size", "8", "--epochs", "1", "--quiet"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("flickr8k_layout")
    write_flickr8k_layout(root, 24, image_size=64, progress=False)
    return root


def _start(script: str, work: Path, env_extra: dict | None = None) -> subprocess.Popen:
    """The script in a subprocess (see ``start_logged``)."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(REPO), **(env_extra or {}))
    return start_logged(work, [sys.executable, "-c", textwrap.dedent(script)], env)


def _finish(proc: subprocess.Popen, timeout: float = 480) -> dict:
    """The RESULT line of a ``_start``ed script (timeout: a hang guard; the two runs of
    this module share the machine, each taking about twice as long as alone)."""
    done = finish_logged(proc, timeout)
    assert done.returncode == 0, done.stderr[-4000:]
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")]
    assert lines, done.stdout[-2000:] + done.stderr[-2000:]
    return json.loads(lines[-1][len("RESULT "):])


MIRRORED_SCRIPT = """
    import json
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import numpy as np
    from source_code.data.datasets import load_dataset
    from source_code.data.synthetic import generate_scene
    from source_code.model.backbone import BackboneSpec
    from source_code.model.captioner import Captioner
    from source_code.training.train import TrainConfig, train

    data = load_dataset("flickr8k", {dataset!r})
    out, runs = {out!r}, {{}}
    for strategy in ("default", "mirrored"):
        cfg = TrainConfig(backbone=BackboneSpec("slim", 64, None, 0.25, 0.25, 1),
                          decoder={{"kind": "attention", "units": 32, "embed_dim": 16,
                                    "dropout": 0.0}},
                          epochs=1, batch_size=8, min_word_count=1, warmup_steps=1,
                          strategy=strategy)
        trained = train(data, f"{{out}}/{{strategy}}", cfg, progress=False)
        runs[strategy] = (trained, [np.asarray(w) for w in trained.decoder.get_weights()])
    trained, weights = runs["mirrored"]
    images = [generate_scene(700 + i, image_size=64).image for i in range(3)]
    reloaded = Captioner.load(f"{{out}}/mirrored")
    try:
        train(data, f"{{out}}/odd", TrainConfig(batch_size=7, strategy="mirrored"), progress=False)
        odd_batch = "accepted"
    except ValueError as exc:
        odd_batch = str(exc)
    print("RESULT " + json.dumps({{
        "card": reloaded.config["training"],
        "default_loss": runs["default"][0].config["training"]["history"][0]["loss"],
        "max_weight_diff": max(float(np.abs(a - b).max())
                               for a, b in zip(runs["default"][1], weights)),
        "trained": [c.text for c in trained.caption(images)],
        "reloaded": [c.text for c in reloaded.caption(images)],
        "odd_batch": odd_batch,
    }}))
"""

MULTIWORKER_SCRIPT = """
    import json
    from source_code.cli import main
    print("RESULT " + json.dumps({{"code": main({args!r})}}))
"""


@pytest.fixture(scope="module")
def runs(dataset, tmp_path_factory):
    """Both subprocesses of this module, started together (each is mostly one process's
    TensorFlow start-up, tracing and compiling, on one core of the two): {test: (output
    folder, started process)}; each test waits for its own."""
    mirrored = tmp_path_factory.mktemp("mirrored")
    bundle = tmp_path_factory.mktemp("multiworker") / "bundle"
    tf_config = {"cluster": {"worker": [f"127.0.0.1:{free_port()}"]},
                 "task": {"type": "worker", "index": 0}}
    args = ["train", "--data", str(dataset), "--out", str(bundle), "--decoder", "merge",
            "--finetune", "--strategy", "multiworker", *TINY]
    logs = tmp_path_factory.mktemp("logs")
    started = {"mirrored": (mirrored, _start(MIRRORED_SCRIPT.format(dataset=str(dataset),
                                                                  out=str(mirrored)),
                                             logs / "mirrored")),
               "multiworker": (bundle, _start(MULTIWORKER_SCRIPT.format(args=args),
                                              logs / "multiworker",
                                              {"TF_CONFIG": json.dumps(tf_config)}))}
    try:
        yield started
    finally:
        stop_logged(proc for _, proc in started.values())


@pytest.mark.slow
def test_mirrored_over_two_cpu_devices_trains_like_one_device(runs):
    """Same data, same seed, no dropout: two replicas (each averaging its half of the
    batch) end where one device does, up to the per-replica token weighting."""
    out, proc = runs["mirrored"]
    result = _finish(proc)
    card = result["card"]
    assert card["strategy"] == "mirrored" and card["replicas"] == 2
    assert card["history"][0]["loss"] == pytest.approx(result["default_loss"], rel=1e-3)
    assert result["max_weight_diff"] < 2e-2
    assert result["reloaded"] == result["trained"]
    assert "does not split evenly over 2 replicas" in result["odd_batch"]
    assert (out / "mirrored" / "decoder.weights.h5").is_file()


@pytest.mark.slow
def test_multiworker_with_one_worker_through_the_cli(runs):
    """End to end (backbone trained, augmentation inside the replica step) with
    ``train --strategy multiworker`` and TF_CONFIG naming this host as worker 0."""
    bundle, proc = runs["multiworker"]
    result = _finish(proc)
    assert result["code"] == 0
    for name in ("config.json", "vocab.txt", "decoder.weights.h5", "backbone.weights.h5"):
        assert (bundle / name).is_file()
    card = json.loads((bundle / "config.json").read_text())["training"]
    assert card["strategy"] == "multiworker" and card["replicas"] == 1
    assert len(card["history"]) == 1
    assert not (bundle.with_name("bundle.work") / "worker-0").exists()   # the chief saves in place

    from source_code.model.captioner import Captioner
    caption = Captioner.load(bundle).caption(generate_scene(800, image_size=64).image)[0]
    assert isinstance(caption.text, str) and caption.logprob < 0


def test_strategy_option_is_validated():
    from source_code.cli import build_parser
    from source_code.training.train import make_strategy

    args = build_parser().parse_args(["train", "--data", "d", "--out", "o"])
    assert args.strategy == "default"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--data", "d", "--out", "o", "--strategy", "tpu"])
    assert make_strategy("default") is None
    with pytest.raises(ValueError, match="strategy must be one of"):
        make_strategy("tpu")
