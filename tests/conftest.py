"""Shared fixtures: a tiny random-weight bundle for fast unit tests, and the bundled
default model for integration tests."""
from __future__ import annotations

import io
import os
import zipfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

REPO = Path(__file__).resolve().parent.parent
# bench/ holds helpers the end-to-end tests share with the benchmarks (browser, load).
sys.path.insert(0, str(REPO / "bench"))
SHAPES_BUNDLE = REPO / "models" / "shapes"
SYNTH_WORDS = ["a", "small", "large", "red", "green", "blue", "yellow", "circle", "square",
               "triangle", "left", "right", "of", "above", "below"]


def start_logged(work: Path, argv: list, env: dict | None = None) -> subprocess.Popen:
    """``argv`` run in the repository, its output in files under ``work`` (not pipes: a
    run that nobody reads yet must not stall on a full pipe). Several start at once."""
    work.mkdir(parents=True, exist_ok=True)
    with open(work / "stdout.txt", "w") as out, open(work / "stderr.txt", "w") as err:
        proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=out, stderr=err, text=True)
    proc.work = work
    return proc


def finish_logged(proc: subprocess.Popen, timeout: float) -> SimpleNamespace:
    """A ``start_logged`` run's returncode, stdout and stderr, once it ends (timeout: a
    hang guard, past which it is killed)."""
    try:
        proc.wait(timeout=timeout)
    finally:
        stop_logged([proc])
    return SimpleNamespace(returncode=proc.returncode,
                           stdout=(proc.work / "stdout.txt").read_text(),
                           stderr=(proc.work / "stderr.txt").read_text())


def stop_logged(procs) -> None:
    """Kill the runs still going (a fixture's teardown)."""
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def zip_bytes(members: dict[str, bytes]) -> bytes:
    """A zip archive (deflated) of {member name: data}, in memory: fixture downloads."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


class MarkovDecoder:
    """A hand-made decoder for the searches: the next-token distribution depends on the
    previous token only (``step(tokens, state, memory)`` as the searches call it)."""

    def __init__(self, table):
        import tensorflow as tf
        self.vocab_size = len(table)
        self.logp = tf.math.log(tf.constant(table, tf.float32) + 1e-12)

    def initial_state(self, memory):
        import tensorflow as tf
        z = tf.zeros([tf.shape(memory[0])[0], 1])
        return z, z

    def step(self, tokens, state, memory):
        import tensorflow as tf
        return tf.gather(self.logp, tokens), state, tf.zeros([tf.shape(tokens)[0], 1])


def make_tiny_captioner(kind: str = "attention", input_size: int = 64, seed: int = 0):
    import keras

    from source_code.model.backbone import BackboneSpec
    from source_code.model.captioner import Captioner
    from source_code.text.vocabulary import Vocabulary

    keras.utils.set_random_seed(seed)
    vocab = Vocabulary(["<pad>", "<start>", "<end>", "<unk>"] + SYNTH_WORDS)
    spec = BackboneSpec("slim", input_size, None, 0.25, 0.25, 1)
    return Captioner.build(vocab, spec, {"kind": kind, "units": 32, "embed_dim": 16}, 10,
                           extra_config={"name": f"tiny-{kind}"})


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory):
    """A saved tiny attention bundle (random weights): fast, for plumbing tests."""
    path = tmp_path_factory.mktemp("bundles") / "tiny"
    make_tiny_captioner(seed=2).save(path)   # seed 2 writes non-empty captions
    return path


@pytest.fixture(scope="session")
def shapes_captioner():
    from source_code.model.captioner import Captioner

    if not (SHAPES_BUNDLE / "config.json").exists():
        pytest.fail(f"the bundled shapes model is missing: {SHAPES_BUNDLE}")
    return Captioner.load(SHAPES_BUNDLE)


class _SharedServer:
    """One ``python app.py`` on the bundled shapes model, shared by the browser tests that
    start it the same way (test_e2e_browser, test_e2e_live): started by the first test
    that asks for it, stopped as soon as the next test does not ask for it (see
    ``pytest_runtest_teardown``), and started again if a later test asks again."""

    def __init__(self, tmp_path_factory):
        self._tmp = tmp_path_factory
        self._context = None
        self.running = None

    def get(self):
        if self.running is None:
            from load import served  # bench/load.py: one helper starts, waits for and stops app.py
            from test_e2e_browser import STARTUP_TIMEOUT, _bundle

            bundle, is_default = _bundle()
            log_path = self._tmp.mktemp("server") / "server.log"
            context = served(bundle, log_path, timeout=STARTUP_TIMEOUT)
            running = context.__enter__()
            self._context = context
            self.running = {**running, "is_default": is_default, "log": log_path}
        return self.running

    def stop(self):
        context, self._context, self.running = self._context, None, None
        if context is not None:
            context.__exit__(None, None, None)


@pytest.fixture(scope="session")
def shared_shapes_server(tmp_path_factory):
    """The shared ``_SharedServer`` (ask for ``server`` in the browser test modules)."""
    shared = _SharedServer(tmp_path_factory)
    _SHARED_SERVERS.append(shared)
    try:
        yield shared
    finally:
        shared.stop()
        _SHARED_SERVERS.remove(shared)


_SHARED_SERVERS: list = []


def pytest_runtest_teardown(item, nextitem):
    """Stop the shared server once no following test needs it (it would otherwise sit
    idle, holding the model in memory, until the end of the session)."""
    if nextitem is None or "shared_shapes_server" not in nextitem.fixturenames:
        for shared in _SHARED_SERVERS:
            shared.stop()


def unavailable(reason: str, required: str):
    """Skip a test whose requirement is missing; under CI=true, where ``.ci/run`` installs
    every requirement, fail instead, saying why it is ``required``."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: {required})")
    pytest.skip(reason)


def need_gcompris():
    """Skip (fail under CI=true) a test that reads the validation photographs when
    Debian's gcompris-qt-data or PySide6 is missing."""
    import importlib.util
    from source_code.data.gcompris import RCC_DIR
    if RCC_DIR.is_dir() and importlib.util.find_spec("PySide6") is not None:
        return
    unavailable("the validation photographs need Debian's gcompris-qt-data and PySide6-Essentials",
                "they must be installed")


def need_opencv_samples():
    """Skip (fail under CI=true) a test that reads the second validation set when
    Debian's opencv-doc (OpenCV's sample images) is missing."""
    from source_code.evaluation.photos import OPENCV_EXAMPLES
    if not OPENCV_EXAMPLES.is_dir():
        unavailable("the second validation set needs Debian's opencv-doc", "it must be installed")
