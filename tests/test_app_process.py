"""`python app.py` as a person runs it: a real waitress server in a subprocess on a free
loopback port, and the one-line failure for a bundle that cannot be loaded."""
from __future__ import annotations

import importlib.util
import json
import logging
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from conftest import REPO, finish_logged, start_logged, stop_logged
from load import free_port, served, server_env  # bench/load.py: one server helper
STARTUP_TIMEOUT = 120


def get(url: str, timeout: float = 10):
    """(status, headers, body bytes), for any status."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as res:
            return res.status, res.headers, res.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers, err.read()


def post_image(url: str, png: bytes):
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"f.png\"\r\n"
            f"Content-Type: image/png\r\n\r\n").encode() + png + f"\r\n--{boundary}--\r\n".encode()
    req = urllib.request.Request(url, data=body, method="POST",
                                 headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    try:
        with urllib.request.urlopen(req, timeout=60) as res:
            return res.status, json.loads(res.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


@pytest.fixture()
def server_log(tmp_path):
    return tmp_path / "server.log"


@pytest.mark.slow
def test_app_serves_and_stops(tiny_bundle, server_log):
    with served(tiny_bundle, server_log, "--threads", "4", "--queue-size", "2") as running:
        base, port, proc, health = (running[k] for k in ("base", "port", "proc", "health"))
        assert health["status"] == "ok"
        assert health["model"]["name"] == "tiny-attention"

        status, headers, page = get(f"{base}/")
        assert status == 200 and b'id="start-camera"' in page
        assert headers["X-Frame-Options"] == "DENY" and "nosniff" in headers["X-Content-Type-Options"]

        status, _, png = get(f"{base}/samples/0.png")
        assert status == 200 and png[:4] == b"\x89PNG"
        status, body = post_image(f"{base}/api/caption", png)
        assert status == 200 and "caption" in body and "words" in body
        status, body = post_image(f"{base}/api/caption", b"not an image")
        assert status == 400 and "not an image" in body["error"]
    log = server_log.read_text(errors="replace")
    assert "loading model" in log
    assert f"open http://127.0.0.1:{port} in your browser" in log
    assert log.index("loading model") < log.index("open http://")
    assert proc.returncode == 0, log[-2000:]
    assert "Traceback" not in log


def start_failing(work: Path, *args) -> subprocess.Popen:
    """``python app.py ARGS`` that should fail at start-up (see ``start_logged``)."""
    return start_logged(work, [sys.executable, "app.py", "--port", str(free_port()), *args],
                        server_env())


def finish_failing(proc: subprocess.Popen, timeout: float = 180):
    """(its returncode, stdout and stderr, the stderr lines starting "error:") of a
    ``start_failing`` run (timeout: a hang guard)."""
    done = finish_logged(proc, timeout)
    return done, [line for line in done.stderr.splitlines() if line.startswith("error:")]


@pytest.fixture(scope="module")
def failing_starts(tiny_bundle, tmp_path_factory):
    """Both failing starts of this module, run at once (each is mostly one process
    importing TensorFlow): {"corrupt": (process, bundle dir), "missing": (...)}."""
    root = tmp_path_factory.mktemp("failing")
    broken = root / "broken"
    shutil.copytree(tiny_bundle, broken)
    (broken / "decoder.weights.h5").write_bytes(b"these are not weights")
    missing = root / "nothing-here"
    started = {"corrupt": (start_failing(root / "corrupt-run", "--bundle", str(broken)), broken),
               "missing": (start_failing(root / "missing-run", "--bundle", str(missing)), missing)}
    try:
        yield started
    finally:
        stop_logged(proc for proc, _ in started.values())


def test_corrupt_bundle_is_one_clear_line(failing_starts):
    started, broken = failing_starts["corrupt"]
    proc, errors = finish_failing(started)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    assert len(errors) == 1 and str(broken) in errors[0], proc.stderr
    assert "weights" in errors[0]


def test_missing_bundle_is_one_clear_line(failing_starts):
    started, missing = failing_starts["missing"]
    proc, errors = finish_failing(started)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert errors == [f"error: model bundle not found: {missing} is not a directory"], proc.stderr


# -- the command line, in process (no server is started) ------------------------------------------
def load_app_module():
    spec = importlib.util.spec_from_file_location("serve_app", REPO / "app.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_loopback_detection():
    app_module = load_app_module()
    for host in ("127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost", "LOCALHOST"):
        assert app_module.is_loopback(host), host
    for host in ("0.0.0.0", "::", "192.168.1.20", "example.org"):
        assert not app_module.is_loopback(host), host


def test_environment_and_the_non_loopback_warning(monkeypatch, tmp_path, caplog, capfd):
    app_module = load_app_module()
    missing = tmp_path / "env-bundle"
    monkeypatch.setenv("CAPTION_BUNDLE", str(missing))
    monkeypatch.setenv("CAPTION_HOST", "0.0.0.0")
    monkeypatch.setenv("CAPTION_PORT", "4999")
    args = app_module.build_parser().parse_args([])
    assert (args.host, args.port, args.bundle) == ("0.0.0.0", 4999, str(missing))
    with caplog.at_level(logging.INFO):
        assert app_module.main([]) == 2              # warns, then fails on the missing bundle
    warning = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert "0.0.0.0" in warning and "explicit choice" in warning
    assert "localhost or over HTTPS" in warning
    assert str(missing) in capfd.readouterr().err


def test_bad_port_from_the_environment(monkeypatch):
    app_module = load_app_module()
    monkeypatch.setenv("CAPTION_PORT", "forty-two")
    with pytest.raises(SystemExit) as info:
        app_module.build_parser()
    assert info.value.code == 2
