"""Faults and exposure, against the real `python app.py` where it matters: clients that
vanish mid-upload or mid-request, slow and stalled clients, requests while the model is
loading, bundles that are missing, corrupt or unsafe (a Keras Lambda layer, pickles) at
start, a model that fails its first run, a full disk when results are saved, and what
the server exposes (loopback only, unless asked)."""
from __future__ import annotations

import errno
import json
import os
import pickle
import shutil
import socket
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from source_code.web import create_app

from test_app_process import load_app_module
from test_web_api import post, scene_png

REPO = Path(__file__).resolve().parent.parent
import load as bench  # bench/load.py: server start/stop, HTTP helpers

IDLE_TIMEOUT = 2           # the server's --idle-timeout here; the sweep runs every second


def caption_request(port: int, timeout: float = 30) -> bench.Answer:
    body, ctype = bench.multipart({}, {"image": ("scene.png", scene_png())})
    return bench.request(port, "POST", "/api/caption", body, ctype, timeout=timeout)


def raw_upload_head(port: int, content_length: int | None = None) -> tuple[socket.socket, bytes]:
    """A connected socket that has sent the head of a caption upload (announcing
    ``content_length`` bytes, by default the true length), and the body to send."""
    body, ctype = bench.multipart({}, {"image": ("scene.png", scene_png())})
    length = len(body) if content_length is None else content_length
    sock = socket.create_connection((bench.HOST, port), timeout=30)
    sock.sendall(f"POST /api/caption HTTP/1.1\r\nHost: {bench.HOST}\r\nContent-Type: {ctype}\r\n"
                 f"Content-Length: {length}\r\nConnection: close\r\n\r\n".encode())
    return sock, body


def read_all(sock: socket.socket) -> bytes:
    chunks = []
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


@pytest.fixture(scope="module")
def server(tiny_bundle, tmp_path_factory):
    """`python app.py` on the tiny bundle. While it starts, connections are probed: they
    must be refused at once (the port opens only when the model is ready), never hang."""
    port = bench.free_port()
    log = tmp_path_factory.mktemp("server") / "server.log"
    proc = bench.start_server(tiny_bundle, port, log, "--threads", "4", "--queue-size", "2",
                              "--idle-timeout", str(IDLE_TIMEOUT))
    probes = []                                  # (seconds a refused connect took)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and proc.poll() is None:
            t0 = time.monotonic()
            try:
                socket.create_connection((bench.HOST, port), timeout=5).close()
                break
            except ConnectionRefusedError:
                probes.append(time.monotonic() - t0)
                time.sleep(0.1)
        bench.wait_until_healthy(port, proc, timeout=30)
        yield SimpleNamespace(port=port, proc=proc, log=log, startup_probes=probes)
    finally:
        bench.stop_server(proc)
    text = log.read_text(errors="replace")
    assert "Traceback" not in text, text[-3000:]


# -- exposure -------------------------------------------------------------------------------------
def test_loopback_only_by_default(server):
    import psutil
    assert load_app_module().build_parser().parse_args([]).host == "127.0.0.1"
    listening = [c.laddr for c in psutil.Process(server.proc.pid).net_connections("inet")
                 if c.status == psutil.CONN_LISTEN]
    assert listening and all(addr.ip in ("127.0.0.1", "::1") for addr in listening), listening


def test_before_the_model_is_ready_connections_are_refused_at_once(server):
    assert server.startup_probes, "the server was listening before its model was loaded"
    assert max(server.startup_probes) < 1.0


# -- clients that vanish, crawl or stall ----------------------------------------------------------
def test_clients_that_disconnect_mid_upload(server):
    for i in range(12):
        sock, body = raw_upload_head(server.port, content_length=5_000_000)
        sock.sendall(body[: len(body) // 2])
        if i % 2:           # half of them reset the connection instead of closing it
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        sock.close()
    for _ in range(4):      # a complete request, then gone before the answer is written
        sock, body = raw_upload_head(server.port)
        sock.sendall(body)
        sock.close()
    # the abandoned complete requests still run (the queue may answer 503 meanwhile)
    answers = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        answer = caption_request(server.port)
        answers.append(answer.status)
        if answer.status != 503:
            break
        assert answer.headers.get("retry-after")
        time.sleep(0.5)
    assert answers[-1] == 200 and answer.json()["words"], answers
    assert set(answers) <= {200, 503}, answers
    assert server.proc.poll() is None


def test_a_slow_client_is_served_and_others_are_not_held_up(server):
    result = {}

    def slow_client():
        sock, body = raw_upload_head(server.port)
        step = len(body) // 8 + 1
        for start in range(0, len(body), step):       # 8 pieces, 0.4 s apart: ~3 s in all
            time.sleep(0.4)
            sock.sendall(body[start:start + step])
        result["answer"] = read_all(sock)
        sock.close()

    slow = threading.Thread(target=slow_client)
    slow.start()
    others = []
    for _ in range(4):
        t0 = time.monotonic()
        answer = caption_request(server.port)
        others.append((answer.status, time.monotonic() - t0))
    slow.join(30)
    assert not slow.is_alive()
    assert all(status == 200 and seconds < 10 for status, seconds in others), others
    assert result["answer"].startswith(b"HTTP/1.1 200"), result["answer"][:200]


def test_a_stalled_upload_is_closed_after_the_idle_timeout(server):
    stalled = []
    for _ in range(20):
        sock, body = raw_upload_head(server.port, content_length=1_000_000)
        sock.sendall(body[:1000])
        stalled.append(sock)
    t0 = time.monotonic()
    assert caption_request(server.port).status == 200      # the others do not block anyone
    closed_after = []
    for sock in stalled:
        sock.settimeout(IDLE_TIMEOUT + 10)
        try:
            assert read_all(sock) == b""                   # closed without an answer
        except ConnectionResetError:
            pass
        closed_after.append(time.monotonic() - t0)
        sock.close()
    assert max(closed_after) < IDLE_TIMEOUT + 6, closed_after


# -- loading ----------------------------------------------------------------------------------------
def test_requests_while_the_model_loads_get_503_with_retry_after(tiny_bundle):
    app = create_app({"BUNDLE": str(tiny_bundle), "WARM_UP": True})
    client = app.test_client()
    answers = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        res = post(client, "/api/caption", scene_png())
        answers.append(res.status_code)
        if res.status_code == 200:
            break
        assert res.status_code == 503 and "loading" in res.get_json()["error"]
        assert int(res.headers["Retry-After"]) > 0
        time.sleep(0.05)
    assert answers[0] == 503 and answers[-1] == 200, answers
    assert client.get("/healthz").get_json()["status"] == "ok"


# -- bundles at start -----------------------------------------------------------------------------------
class LeavesAMark:
    """Unpickling this creates ``path``: proof that a pickle was executed."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def lambda_model_h5(path: Path, marker: Path):
    import keras
    mark = str(marker)          # run, the layer would create this file
    model = keras.Sequential([keras.Input((4,)),
                              keras.layers.Lambda(lambda x: x + len(open(mark, "w").name))])
    model.save(path.with_suffix(".tmp.h5"))          # the legacy whole-model HDF5 format
    os.replace(path.with_suffix(".tmp.h5"), path)
    marker.unlink(missing_ok=True)                   # building the model here ran the layer


def lambda_model_keras(path: Path, marker: Path):
    import keras
    model = keras.Sequential([keras.Input((4,)), keras.layers.Lambda(lambda x: x * 2)])
    model.save(path)


def corrupt(case: str, bundle: Path, marker: Path):
    config = json.loads((bundle / "config.json").read_text())
    if case == "missing folder":
        shutil.rmtree(bundle)
    elif case == "empty folder":
        for p in bundle.iterdir():
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    elif case == "config is not JSON":
        (bundle / "config.json").write_text('{"format": 1, "backbone": ')
    elif case == "config from the future":
        (bundle / "config.json").write_text(json.dumps(dict(config, format=99)))
    elif case == "weights are not HDF5":
        (bundle / "decoder.weights.h5").write_bytes(b"\x00" * 100)
    elif case == "weights cut short":
        data = (bundle / "decoder.weights.h5").read_bytes()
        (bundle / "decoder.weights.h5").write_bytes(data[: len(data) // 2])
    elif case == "vocabulary of the wrong size":
        (bundle / "vocab.txt").write_text("<pad>\n<start>\n<end>\n<unk>\na\n")
    elif case == "decoder weights are a Lambda model":
        lambda_model_h5(bundle / "decoder.weights.h5", marker)
    elif case == "a .keras model with a Lambda layer":
        lambda_model_keras(bundle / "model.keras", marker)
    elif case == "a Lambda layer in config.json":
        config["decoder"]["layers"] = [{"class_name": "Lambda", "config": {
            "function": {"class_name": "__lambda__", "config": {"code": "..."}}}}]
        (bundle / "config.json").write_text(json.dumps(config))
    elif case == "a pickle":
        (bundle / "extra.pkl").write_bytes(pickle.dumps(LeavesAMark(marker)))
    elif case == "a pickle named as text":
        (bundle / "notes.txt").write_bytes(pickle.dumps(LeavesAMark(marker)))
    elif case == "a pickle in the concept bank":
        (bundle / "concepts").mkdir(exist_ok=True)
        np.savez(bundle / "concepts" / "bank.npz",
                 centroids=np.array([LeavesAMark(marker)], dtype=object), cavs=np.zeros((1, 2)))
        (bundle / "concepts" / "bank.json").write_text(json.dumps(
            {"names": [], "word_scores": {}, "info": {}, "patches": {}}))
    elif case == "a concept patch outside the bank":
        (bundle / "concepts").mkdir(exist_ok=True)
        np.savez(bundle / "concepts" / "bank.npz", centroids=np.zeros((1, 2), np.float32),
                 cavs=np.zeros((1, 2), np.float32))
        (bundle / "concepts" / "bank.json").write_text(json.dumps(
            {"names": ["c01"], "word_scores": {}, "info": {},
             "patches": {"c01": ["../../../../etc/passwd"]}}))
    else:
        raise ValueError(case)


BAD_BUNDLES = {        # case -> what the one error line must say
    "missing folder": "not a directory",
    "empty folder": "missing config.json",
    "config is not JSON": "unreadable config.json",
    "config from the future": "format 99",
    "weights are not HDF5": "weights",
    "weights cut short": "weights",
    "vocabulary of the wrong size": "vocab.txt has 5 tokens",
    "decoder weights are a Lambda model": "whole Keras model with a Lambda layer",
    "a .keras model with a Lambda layer": "model.keras is a kind of file that can carry code",
    "a Lambda layer in config.json": "serialized Keras object (a Lambda layer)",
    "a pickle": "extra.pkl is a kind of file that can carry code",
    "a pickle named as text": "notes.txt is a pickle",
    "a pickle in the concept bank": "bank.npz holds pickled objects",
    "a concept patch outside the bank": "patch outside its patches folder",
}


@pytest.mark.parametrize("case", list(BAD_BUNDLES))
def test_a_bad_bundle_at_start_is_one_clear_line_and_exit_2(case, tiny_bundle, tmp_path, capfd):
    bundle, marker = tmp_path / "bundle", tmp_path / "code-ran"
    shutil.copytree(tiny_bundle, bundle)
    corrupt(case, bundle, marker)
    capfd.readouterr()
    code = load_app_module().main(["--port", str(bench.free_port()), "--bundle", str(bundle)])
    err = capfd.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2, err[-2000:]
    assert len(errors) == 1 and BAD_BUNDLES[case] in errors[0], err[-2000:]
    assert "Traceback" not in err
    assert not marker.exists(), "loading the bundle executed code from it"


def test_a_model_that_fails_its_first_run_is_one_clear_line(tiny_bundle, monkeypatch, capfd):
    from source_code.web import service as web

    def broken(explainer):
        raise RuntimeError("Graph execution error:\n\ndetails over many lines")

    monkeypatch.setattr(web, "warm_up", broken)
    code = load_app_module().main(["--port", str(bench.free_port()), "--bundle", str(tiny_bundle)])
    err = capfd.readouterr().err
    assert code == 2
    assert [line for line in err.splitlines() if line.startswith("error:")] == [
        f"error: the model bundle {tiny_bundle} loaded but failed its first run: "
        "RuntimeError: Graph execution error:"]
    assert "Traceback" not in err


# -- a full disk ------------------------------------------------------------------------------------------
def test_a_full_disk_while_explain_saves_leaves_no_partial_files(tiny_bundle, tmp_path,
                                                                 monkeypatch, capsys):
    from source_code import cli
    image = tmp_path / "scene.png"
    image.write_bytes(scene_png())
    args = ["explain", str(image), "--bundle", str(tiny_bundle), "--methods", "gradcam",
            "--no-adversarial"]
    real_write_bytes, writes = Path.write_bytes, []

    def disk_full_on_second_file(self, data):
        writes.append(self.name)
        if len(writes) >= 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))
        return real_write_bytes(self, data)

    monkeypatch.setattr(Path, "write_bytes", disk_full_on_second_file)
    new_out = tmp_path / "new"
    assert cli.main([*args, "--out", str(new_out)]) == 1
    err = capsys.readouterr().err
    assert "No space left on device" in err and "nothing was written" in err
    assert not new_out.exists()                       # not even the folder it created

    old_out = tmp_path / "old"
    old_out.mkdir()
    (old_out / "earlier.txt").write_text("kept")
    writes.clear()
    assert cli.main([*args, "--out", str(old_out)]) == 1
    assert sorted(p.name for p in old_out.iterdir()) == ["earlier.txt"]

    monkeypatch.setattr(Path, "write_bytes", real_write_bytes)
    assert cli.main([*args, "--out", str(old_out)]) == 0
    names = sorted(p.name for p in old_out.iterdir())
    assert "explanation.json" in names and "gradcam_caption.png" in names
    assert not [n for n in names if n.startswith(".")]


def test_the_server_writes_nothing_so_a_full_disk_cannot_break_it(tiny_bundle, monkeypatch):
    from source_code.explain.pipeline import Explainer
    from source_code.model.captioner import Captioner
    client = create_app({}, explainer=Explainer(Captioner.load(tiny_bundle))).test_client()
    assert post(client, "/api/explain", scene_png(), adversarial="0").status_code == 200  # warm
    real_open, real_os_open = open, os.open

    def full_disk_open(file, mode="r", *args, **kwargs):
        if any(flag in mode for flag in "wax+"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(file))
        return real_open(file, mode, *args, **kwargs)

    def full_disk_os_open(path, flags, *args, **kwargs):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real_os_open(path, flags, *args, **kwargs)

    monkeypatch.setattr("builtins.open", full_disk_open)
    monkeypatch.setattr(os, "open", full_disk_os_open)
    res = post(client, "/api/caption", scene_png())
    assert res.status_code == 200, res.get_json()
    res = post(client, "/api/explain", scene_png(), words="all", adversarial="0")
    assert res.status_code == 200, res.get_json()
