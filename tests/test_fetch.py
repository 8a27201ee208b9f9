"""Tests for source_code.data.fetch against a local HTTP server (no real hosts)."""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import http.server
import importlib.util
import io
import re
import tarfile
import threading
import zipfile
from pathlib import Path

import pytest

from conftest import zip_bytes
from source_code.data import fetch as F


# --------------------------------------------------------------------------- #
# Local server
# --------------------------------------------------------------------------- #
class _State:
    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.cut_after: dict[str, int] = {}  # path -> bytes to send before cutting (once)
        self.ignore_range: set[str] = set()
        self.errors: dict[str, int] = {}  # path -> HTTP status to answer
        self.requests: list[tuple[str, str | None]] = []  # (path, Range header)
        self.lock = threading.Lock()


class _Handler(http.server.BaseHTTPRequestHandler):
    state: _State  # set on a subclass per server

    def log_message(self, *args):  # keep test output clean
        pass

    def do_GET(self):  # noqa: N802 - http.server API
        st = self.state
        path = self.path.split("?", 1)[0]
        rng = self.headers.get("Range")
        with st.lock:
            st.requests.append((path, rng))
            status = st.errors.get(path)
            body = st.files.get(path)
            cut = st.cut_after.pop(path, None)
        if status is not None:
            self.send_error(status)
            return
        if body is None:
            self.send_error(404)
            return
        start = 0
        m = re.fullmatch(r"bytes=(\d+)-", rng or "")
        if m and path not in st.ignore_range:
            start = int(m.group(1))
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        payload = body[start:]
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if cut is not None:
            self.wfile.write(payload[:cut])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(payload)


@pytest.fixture
def server():
    state = _State()
    handler = type("Handler", (_Handler,), {"state": state})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


@pytest.fixture(autouse=True)
def _fast_retries(monkeypatch):
    monkeypatch.setattr(F, "RETRY_BACKOFF_S", 0.0)


# --------------------------------------------------------------------------- #
# Fixture archives
# --------------------------------------------------------------------------- #
def _flickr_text_zip() -> bytes:
    token = "".join(
        f"{i:04d}_img.jpg#{k}\ta caption number {k} for image {i}\n" for i in range(40) for k in range(5)
    )
    return zip_bytes(
        {
            "Flickr8k.token.txt": token.encode(),
            "Flickr_8k.trainImages.txt": b"".join(f"{i:04d}_img.jpg\n".encode() for i in range(30)),
            "Flickr_8k.testImages.txt": b"".join(f"{i:04d}_img.jpg\n".encode() for i in range(30, 40)),
            "__MACOSX/._Flickr8k.token.txt": b"\x00\x05\x16\x07junk",
        }
    )


def _glove_zip() -> bytes:
    import random

    rng = random.Random(0)
    words = ["the", "a", "dog", "runs", "on", "grass"] + [f"w{i}" for i in range(2000)]
    lines = "".join(w + " " + " ".join(f"{rng.uniform(-1, 1):.5f}" for _ in range(10)) + "\n" for w in words)
    return zip_bytes({"glove.6B.10d.txt": lines.encode()})


def _incompressible(n: int, seed: int = 1) -> bytes:
    out = bytearray()
    counter = 0
    while len(out) < n:
        out += hashlib.sha256(f"{seed}-{counter}".encode()).digest()
        counter += 1
    return bytes(out[:n])


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def _resource(name, files, dest, extract=True):
    return F.Resource(name=name, files=tuple(files), dest=str(dest), extract=extract, description="test")


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.rglob("*") if p.name.endswith(".part") or p.name.startswith(".extract-"))


# --------------------------------------------------------------------------- #
# download()
# --------------------------------------------------------------------------- #
def test_download_and_fetch_good_with_extraction(server, tmp_path, monkeypatch):
    text_zip, glove_zip = _flickr_text_zip(), _glove_zip()
    server.files["/d/Flickr8k_text.zip"] = text_zip
    server.files["/d/glove.6B.zip"] = glove_zip
    dest = tmp_path / "flickr"
    monkeypatch.setattr(
        F,
        "RESOURCES",
        {
            "tiny": _resource(
                "tiny",
                [
                    F.RemoteFile(server.url + "/d/Flickr8k_text.zip", "Flickr8k_text.zip", md5=md5(text_zip),
                                 size=len(text_zip)),
                    F.RemoteFile(server.url + "/d/glove.6B.zip", "glove.6B.zip",
                                 sha256=hashlib.sha256(glove_zip).hexdigest()),
                ],
                dest,
            )
        },
    )
    paths = F.fetch("tiny", progress=False, timeout=5)
    assert paths == [dest / "Flickr8k_text.zip", dest / "glove.6B.zip"]
    assert (dest / "Flickr8k_text.zip").read_bytes() == text_zip
    assert (dest / "glove.6B.zip").read_bytes() == glove_zip
    assert (dest / "Flickr8k.token.txt").read_text().startswith("0000_img.jpg#0\t")
    assert (dest / "Flickr_8k.trainImages.txt").is_file()
    assert (dest / "glove.6B.10d.txt").read_text().startswith("the ")
    assert not (dest / "__MACOSX").exists()  # resource-fork junk is skipped
    assert (dest / ".extracted-Flickr8k_text.zip").is_file()
    assert (dest / ".extracted-glove.6B.zip").is_file()
    assert _leftovers(dest) == []


def test_download_with_progress_bar_and_directory_dest(server, tmp_path, capsys):
    data = _incompressible(200_000)
    server.files["/w/efficientnetv2-b0_notop.h5"] = data
    out = F.download(server.url + "/w/efficientnetv2-b0_notop.h5", tmp_path, checksum=md5(data), progress=True,
                     timeout=5)
    assert out == tmp_path / "efficientnetv2-b0_notop.h5"
    assert out.read_bytes() == data
    assert "efficientnetv2-b0_notop.h5" in capsys.readouterr().err  # tqdm bar on stderr


def test_resume_after_connection_cut(server, tmp_path):
    data = _incompressible(300_000)
    server.files["/big.h5"] = data
    server.cut_after["/big.h5"] = 100_000
    target = tmp_path / "big.h5"
    out = F.download(server.url + "/big.h5", target, checksum=md5(data), algorithm="md5", progress=False,
                     retries=3, timeout=5)
    assert out.read_bytes() == data
    ranges = [r for p, r in server.requests if p == "/big.h5"]
    assert len(ranges) == 2
    assert ranges[0] is None
    assert ranges[1] is not None and re.fullmatch(r"bytes=\d+-", ranges[1])
    assert int(ranges[1][6:-1]) > 0
    assert not (tmp_path / "big.h5.part").exists()


def test_resume_from_part_left_by_an_earlier_run(server, tmp_path):
    data = _incompressible(150_000, seed=2)
    server.files["/f.bin"] = data
    (tmp_path / "f.bin.part").write_bytes(data[:60_000])
    out = F.download(server.url + "/f.bin", tmp_path / "f.bin", checksum=hashlib.sha256(data).hexdigest(),
                     progress=False, timeout=5)
    assert out.read_bytes() == data
    assert server.requests == [("/f.bin", "bytes=60000-")]


def test_server_ignoring_range_restarts_from_zero(server, tmp_path):
    data = _incompressible(120_000, seed=3)
    server.files["/f.bin"] = data
    server.ignore_range.add("/f.bin")
    (tmp_path / "f.bin.part").write_bytes(b"garbage that must be discarded" * 100)
    out = F.download(server.url + "/f.bin", tmp_path / "f.bin", checksum=md5(data), progress=False, timeout=5)
    assert out.read_bytes() == data
    assert server.requests[0][1] is not None  # a Range was asked, the 200 answer won


def test_complete_part_answered_416_is_verified_not_redownloaded(server, tmp_path):
    data = _incompressible(50_000, seed=4)
    server.files["/f.bin"] = data
    (tmp_path / "f.bin.part").write_bytes(data)
    out = F.download(server.url + "/f.bin", tmp_path / "f.bin", checksum=md5(data), progress=False, timeout=5)
    assert out.read_bytes() == data
    assert server.requests == [("/f.bin", "bytes=50000-")]


def test_network_failure_keeps_part_for_resume(server, tmp_path):
    data = _incompressible(100_000, seed=5)
    server.files["/f.bin"] = data
    server.cut_after["/f.bin"] = 30_000
    with pytest.raises(F.FetchError) as info:
        F.download(server.url + "/f.bin", tmp_path / "f.bin", checksum=md5(data), progress=False, retries=1,
                   timeout=5)
    assert "failed after 1 attempt" in str(info.value) and "resume" in str(info.value)
    part = tmp_path / "f.bin.part"
    kept = part.stat().st_size
    assert 0 < kept < len(data)
    assert not (tmp_path / "f.bin").exists()
    # The next run resumes from the kept bytes.
    out = F.download(server.url + "/f.bin", tmp_path / "f.bin", checksum=md5(data), progress=False, timeout=5)
    assert out.read_bytes() == data
    assert server.requests[-1] == ("/f.bin", f"bytes={kept}-")
    assert not part.exists()


def test_keyboard_interrupt_keeps_part(server, tmp_path, monkeypatch):
    data = _incompressible(200_000, seed=7)
    server.files["/f.bin"] = data

    class InterruptingBar:
        def __init__(self, *a, **k):
            pass

        def update(self, n):
            raise KeyboardInterrupt

        def close(self):
            pass

    monkeypatch.setattr(F, "tqdm", InterruptingBar)
    with pytest.raises(KeyboardInterrupt):
        F.download(server.url + "/f.bin", tmp_path / "f.bin", checksum=md5(data), progress=False, timeout=5)
    part = tmp_path / "f.bin.part"
    assert part.is_file() and 0 < part.stat().st_size < len(data)
    assert part.read_bytes() == data[: part.stat().st_size]
    assert not (tmp_path / "f.bin").exists()


def test_connection_refused_is_a_clear_error(tmp_path):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/x.zip"
    with pytest.raises(F.FetchError) as info:
        F.download(url, tmp_path / "x.zip", progress=False, retries=2, timeout=2)
    assert url in str(info.value) and "2 attempt" in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_checksum_mismatch_removes_everything(server, tmp_path):
    data = _incompressible(80_000, seed=6)
    server.files["/f.zip"] = data
    wrong = "0" * 32
    with pytest.raises(F.FetchError) as info:
        F.download(server.url + "/f.zip", tmp_path / "f.zip", checksum=wrong, progress=False, timeout=5)
    msg = str(info.value)
    assert "md5" in msg and wrong in msg and md5(data) in msg
    assert list(tmp_path.iterdir()) == []


def test_size_mismatch_removes_everything(server, tmp_path):
    server.files["/f.bin"] = b"x" * 1000
    with pytest.raises(F.VerificationError, match="expected 999 bytes, got 1000"):
        F.download(server.url + "/f.bin", tmp_path / "f.bin", size=999, progress=False, timeout=5)
    assert list(tmp_path.iterdir()) == []


def test_corrupt_zip_without_checksum_is_refused(server, tmp_path):
    good = _glove_zip()
    bad = bytearray(good)
    bad[len(bad) // 3] ^= 0xFF  # flip a byte inside the compressed data
    server.files["/g.zip"] = bytes(bad)
    with pytest.raises(F.FetchError, match="zip"):
        F.download(server.url + "/g.zip", tmp_path / "g.zip", progress=False, timeout=5)
    assert list(tmp_path.iterdir()) == []


def test_http_404_is_a_clear_error_and_leaves_nothing(server, tmp_path):
    (tmp_path / "missing.zip.part").write_bytes(b"stale partial")
    url = server.url + "/missing.zip"
    with pytest.raises(F.FetchError) as info:
        F.download(url, tmp_path / "missing.zip", checksum="1" * 32, progress=False, timeout=5)
    assert "404" in str(info.value) and url in str(info.value)
    assert list(tmp_path.iterdir()) == []
    assert len(server.requests) == 1  # 404 is not retried


def test_http_500_is_retried(server, tmp_path):
    server.errors["/f.bin"] = 503
    with pytest.raises(F.FetchError, match="503"):
        F.download(server.url + "/f.bin", tmp_path / "f.bin", progress=False, retries=2, timeout=5)
    assert len(server.requests) == 2


def test_bad_checksum_strings_are_rejected(tmp_path):
    with pytest.raises(F.FetchError, match="hash algorithm"):
        F.download("http://127.0.0.1:9/x", tmp_path / "x", checksum="abc", progress=False)
    with pytest.raises(F.FetchError, match="malformed"):
        F.download("http://127.0.0.1:9/x", tmp_path / "x", checksum="z" * 32, algorithm="md5", progress=False)


# --------------------------------------------------------------------------- #
# extract()
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("evil", ["../evil.txt", "sub/../../evil.txt", "/tmp/evil-abs.txt", "C:/evil.txt"])
def test_zip_slip_is_refused(tmp_path, evil):
    archive = tmp_path / "bad.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("ok.txt", b"fine")
        zf.writestr(zipfile.ZipInfo(evil), b"pwned")
    dest = tmp_path / "out"
    with pytest.raises(F.FetchError, match="refusing"):
        F.extract(archive, dest)
    assert list(dest.iterdir()) == []  # nothing extracted, no temp dir, no marker
    assert not (tmp_path / "evil.txt").exists()


def test_tar_slip_and_links_are_refused(tmp_path):
    def make(name, add):
        path = tmp_path / name
        with tarfile.open(path, "w:gz") as tf:
            add(tf)
        return path

    def member(tf, name, data=b"x"):
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))

    def link(tf, name, target):
        info = tarfile.TarInfo(name)
        info.type = tarfile.SYMTYPE
        info.linkname = target
        tf.addfile(info)

    for archive in (
        make("a.tar.gz", lambda tf: member(tf, "../evil.txt")),
        make("b.tar.gz", lambda tf: link(tf, "ln", "../../etc/passwd")),
        make("c.tar.gz", lambda tf: link(tf, "ln", "/etc/passwd")),
    ):
        dest = tmp_path / ("out-" + archive.name)
        with pytest.raises(F.FetchError, match="refusing"):
            F.extract(archive, dest)
        assert list(dest.iterdir()) == []


def test_tar_gz_extraction_and_marker_skip(tmp_path):
    archive = tmp_path / "pack.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        for name, data in {"top/a.txt": b"A", "top/sub/b.txt": b"B"}.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    dest = tmp_path / "out"
    assert F.extract(archive, dest) == dest
    assert (dest / "top" / "sub" / "b.txt").read_bytes() == b"B"
    assert (dest / ".extracted-pack.tar.gz").is_file()
    (dest / "top" / "a.txt").write_bytes(b"edited")
    F.extract(archive, dest)  # marker present: not extracted again
    assert (dest / "top" / "a.txt").read_bytes() == b"edited"
    F.extract(archive, dest, force=True)  # merged back into place
    assert (dest / "top" / "a.txt").read_bytes() == b"A"
    assert _leftovers(dest) == []


def test_extract_rejects_non_archives(tmp_path):
    junk = tmp_path / "weights.h5"
    junk.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\x00" * 100)
    with pytest.raises(F.FetchError, match="extract"):
        F.extract(junk, tmp_path / "out")


# --------------------------------------------------------------------------- #
# fetch(): mirror, skip, force, fallbacks
# --------------------------------------------------------------------------- #
def test_mirror_url_mapping():
    assert F.mirror_url("https://m.example/datasets/", "glove.6B.zip") == "https://m.example/datasets/glove.6B.zip"
    assert F.mirror_url("http://h:8/p", "a.zip") == "http://h:8/p/a.zip"


def test_fetch_with_mirror(server, tmp_path, monkeypatch):
    data = _glove_zip()
    server.files["/mirror/sub/glove.6B.zip"] = data
    monkeypatch.setattr(
        F,
        "RESOURCES",
        {"g": _resource("g", [F.RemoteFile("https://unreachable.invalid/data/glove.6B.zip", "glove.6B.zip",
                                           md5=md5(data))], tmp_path / "default")},
    )
    dest = tmp_path / "elsewhere"
    paths = F.fetch("g", dest=dest, mirror=server.url + "/mirror/sub/", extract=False, progress=False, timeout=5)
    assert paths == [dest / "glove.6B.zip"]
    assert paths[0].read_bytes() == data
    assert [p for p, _ in server.requests] == ["/mirror/sub/glove.6B.zip"]
    assert not (dest / ".extracted-glove.6B.zip").exists()  # extract=False
    assert not (tmp_path / "default").exists()


def test_fallback_to_listed_mirror(server, tmp_path, monkeypatch):
    data = _glove_zip()
    server.files["/hf/glove.6B.zip"] = data
    remote = F.RemoteFile(server.url + "/gone/glove.6B.zip", "glove.6B.zip", md5=md5(data),
                          mirrors=(server.url + "/hf/glove.6B.zip",))
    monkeypatch.setattr(F, "RESOURCES", {"g": _resource("g", [remote], tmp_path)})
    F.fetch("g", progress=False, timeout=5)
    assert [p for p, _ in server.requests] == ["/gone/glove.6B.zip", "/hf/glove.6B.zip"]
    assert (tmp_path / "glove.6B.10d.txt").is_file()


def test_already_present_file_is_skipped_unless_forced(server, tmp_path, monkeypatch):
    data = _glove_zip()
    server.files["/glove.6B.zip"] = data
    monkeypatch.setattr(
        F, "RESOURCES",
        {"g": _resource("g", [F.RemoteFile(server.url + "/glove.6B.zip", "glove.6B.zip", md5=md5(data))], tmp_path)},
    )
    F.fetch("g", progress=False, timeout=5)
    assert len(server.requests) == 1
    (tmp_path / "glove.6B.10d.txt").write_text("user edit")
    F.fetch("g", progress=False, timeout=5)  # verified copy + marker: nothing to do
    assert len(server.requests) == 1
    assert (tmp_path / "glove.6B.10d.txt").read_text() == "user edit"
    F.fetch("g", force=True, progress=False, timeout=5)
    assert len(server.requests) == 2
    assert (tmp_path / "glove.6B.10d.txt").read_text().startswith("the ")


def test_present_but_corrupt_file_is_downloaded_again(server, tmp_path, monkeypatch):
    data = _incompressible(10_000)
    server.files["/w.h5"] = data
    (tmp_path / "w.h5").write_bytes(b"truncated")
    monkeypatch.setattr(
        F, "RESOURCES",
        {"w": _resource("w", [F.RemoteFile(server.url + "/w.h5", "w.h5", md5=md5(data))], tmp_path, extract=False)},
    )
    F.fetch("w", progress=False, timeout=5)
    assert (tmp_path / "w.h5").read_bytes() == data
    assert server.requests == [("/w.h5", None)]


def test_unknown_resource():
    with pytest.raises(F.FetchError, match="unknown resource 'nope'.*glove"):
        F.fetch("nope", progress=False)


# --------------------------------------------------------------------------- #
# Keras weights
# --------------------------------------------------------------------------- #
def test_keras_weights_go_to_keras_home(server, tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "kh"))
    real = F.RESOURCES["efficientnetv2l"]
    assert real.default_dest() == tmp_path / "kh" / "models"
    assert real.extract is False
    (remote,) = real.files
    assert remote.filename == "efficientnetv2-l_notop.h5"
    assert remote.url == F.KERAS_EFFICIENTNET_V2_BASE + "efficientnetv2-l_notop.h5"

    data = _incompressible(64_000, seed=9)
    server.files["/kw/efficientnetv2-l_notop.h5"] = data
    fake = dataclasses.replace(real, files=(dataclasses.replace(remote, md5=md5(data)),))
    monkeypatch.setattr(F, "RESOURCES", {"efficientnetv2l": fake})
    paths = F.fetch("efficientnetv2l", mirror=server.url + "/kw", progress=False, timeout=5)
    assert paths == [tmp_path / "kh" / "models" / "efficientnetv2-l_notop.h5"]
    assert paths[0].read_bytes() == data


def test_keras_cache_dir_without_keras_home(monkeypatch, tmp_path):
    monkeypatch.delenv("KERAS_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert F.keras_cache_dir() == tmp_path / ".keras" / "models"


def test_keras_entries_match_installed_keras_source():
    """The URLs/hashes are the ones keras.applications uses (read as text: no TF import)."""
    spec = importlib.util.find_spec("keras")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("keras not installed")
    src = Path(list(spec.submodule_search_locations)[0]) / "src" / "applications" / "efficientnet_v2.py"
    if not src.is_file():
        pytest.skip("keras source layout differs")
    text = src.read_text()
    assert F.KERAS_EFFICIENTNET_V2_BASE in text
    for name, key in [("efficientnetv2l", "-l"), ("efficientnetv2s", "-s"), ("efficientnetv2b0", "b0")]:
        m = re.search(r'"%s":\s*\(\s*"([0-9a-f]+)",\s*"([0-9a-f]+)",?\s*\)' % re.escape(key), text)
        assert m, key
        (remote,) = F.RESOURCES[name].files
        assert remote.md5 == m.group(2)  # the no-top hash
        assert remote.algorithm == "md5"


def test_registry_is_well_formed():
    assert {"flickr8k", "glove", "efficientnetv2l", "efficientnetv2s", "efficientnetv2b0"} <= set(F.RESOURCES)
    for name, res in F.RESOURCES.items():
        assert res.name == name and res.files and res.description
        for remote in res.files:
            assert remote.url.startswith("https://") and remote.url.endswith("/" + remote.filename)
            if remote.checksum is not None:
                assert len(remote.checksum) == {"md5": 32, "sha256": 64}[remote.algorithm]
                assert remote.checksum_source
    flickr = F.RESOURCES["flickr8k"]
    assert [f.filename for f in flickr.files] == ["Flickr8k_Dataset.zip", "Flickr8k_text.zip"]
    assert flickr.default_dest() == Path("data/flickr8k") and flickr.extract
    assert all(f.url.startswith("https://github.com/jbrownlee/Datasets/releases/download/Flickr8k/")
               for f in flickr.files)
    glove = F.RESOURCES["glove"]
    assert glove.default_dest() == Path("data/glove") and glove.extract
    assert glove.files[0].url == "https://nlp.stanford.edu/data/glove.6B.zip"
    assert glove.files[0].mirrors == ("https://huggingface.co/stanfordnlp/glove/resolve/main/glove.6B.zip",)


# --------------------------------------------------------------------------- #
# CLI
# --------------------------------------------------------------------------- #
def _parser():
    parser = argparse.ArgumentParser(prog="fetch")
    F.add_fetch_arguments(parser)
    return parser


def test_cli_arguments_parse():
    args = _parser().parse_args(["glove", "--dest", "d", "--mirror", "http://m/", "--force", "--no-extract"])
    assert (args.name, args.dest, args.mirror, args.force, args.extract) == ("glove", "d", "http://m/", True, False)
    defaults = _parser().parse_args(["glove"])
    assert defaults.extract is True and defaults.force is False and defaults.timeout == F.DEFAULT_TIMEOUT


def test_run_fetch_success_and_failures(server, tmp_path, monkeypatch, capsys):
    text_zip = _flickr_text_zip()
    server.files["/ok/Flickr8k_text.zip"] = text_zip
    monkeypatch.setattr(
        F,
        "RESOURCES",
        {
            "tiny": _resource("tiny", [F.RemoteFile(server.url + "/ok/Flickr8k_text.zip", "Flickr8k_text.zip",
                                                    md5=md5(text_zip))], tmp_path / "default"),
            "broken": _resource("broken", [F.RemoteFile(server.url + "/nothing/here.zip", "here.zip",
                                                        md5="2" * 32)], tmp_path / "b"),
            "wrongsum": _resource("wrongsum", [F.RemoteFile(server.url + "/ok/Flickr8k_text.zip",
                                                            "Flickr8k_text.zip", md5="3" * 32)], tmp_path / "w"),
        },
    )
    dest = tmp_path / "cli"
    assert F.run_fetch(_parser().parse_args(["tiny", "--dest", str(dest), "--quiet"])) == 0
    out, err = capsys.readouterr()
    assert str(dest / "Flickr8k_text.zip") in out
    assert (dest / "Flickr8k.token.txt").is_file()

    assert F.run_fetch(_parser().parse_args(["tiny", "--dest", str(tmp_path / "packed"), "--no-extract",
                                             "--quiet"])) == 0
    assert not (tmp_path / "packed" / "Flickr8k.token.txt").exists()
    capsys.readouterr()

    assert F.run_fetch(_parser().parse_args(["broken", "--quiet", "--timeout", "5"])) == 1
    _, err = capsys.readouterr()
    assert "404" in err and "/nothing/here.zip" in err and "Traceback" not in err

    assert F.run_fetch(_parser().parse_args(["wrongsum", "--quiet"])) == 1
    _, err = capsys.readouterr()
    assert "checksum mismatch" in err and "3" * 32 in err and "Traceback" not in err
    assert not (tmp_path / "w" / "Flickr8k_text.zip").exists()

    assert F.run_fetch(_parser().parse_args(["nope"])) != 0
    _, err = capsys.readouterr()
    assert "unknown resource" in err and "tiny" in err and "Traceback" not in err

    assert F.run_fetch(_parser().parse_args([])) != 0
    assert "NAME" in capsys.readouterr().err

    assert F.run_fetch(_parser().parse_args(["--list"])) == 0
    assert "broken" in capsys.readouterr().out


def test_run_fetch_keyboard_interrupt(monkeypatch, capsys):
    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(F, "fetch", interrupted)
    assert F.run_fetch(_parser().parse_args(["glove"])) == 130
    err = capsys.readouterr().err
    assert "resume" in err and "Traceback" not in err


def test_main_entry_point(server, tmp_path, monkeypatch, capsys):
    data = _incompressible(5_000)
    server.files["/m/w.h5"] = data
    monkeypatch.setattr(
        F, "RESOURCES",
        {"w": _resource("w", [F.RemoteFile("https://unreachable.invalid/w.h5", "w.h5", md5=md5(data))], tmp_path,
                        extract=False)},
    )
    assert F.main(["w", "--mirror", server.url + "/m", "--quiet"]) == 0
    assert (tmp_path / "w.h5").read_bytes() == data
