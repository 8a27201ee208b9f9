"""Everything that parses client input, attacked: property-based fuzzing (hypothesis) of
image decoding, multipart bodies, form fields, paths and query strings, plus the corpus
of nasty files in tests/nasty_images/ (written by its generate.py). Every case must get a
4xx JSON error with a reason, or a correct result: never a 5xx, a hang, a traceback or a
file path. The app is the real one over a tiny random-weight model, so hundreds of
examples run in seconds.

The example counts are bounded for CI; FUZZ_SCALE=20 runs twenty times as many.
"""
from __future__ import annotations

import io
import json
import os
import signal
import string
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import unquote_to_bytes

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from source_code import imaging
from source_code.web import create_app
from source_code.imaging import ImageError, decode_image

from test_web_api import app, assert_error, explainer, post, scene_png  # noqa: F401 (fixtures)

REPO = Path(__file__).resolve().parent.parent
NASTY = Path(__file__).resolve().parent / "nasty_images"
EXPECTED = json.loads((NASTY / "expected.json").read_text())
SCALE = max(1, int(os.environ.get("FUZZ_SCALE", "1")))
HANG_SECONDS = 30        # one request taking longer than this counts as a hang
LEAKS = ("Traceback", 'File "', str(REPO), "site-packages", "/usr/lib", "PIL.", "Error:")


def fuzz(examples: int):
    return settings(max_examples=examples * SCALE, deadline=None, database=None,
                    suppress_health_check=list(HealthCheck))


@contextmanager
def no_hang(seconds: float = HANG_SECONDS):
    """Fail, instead of waiting forever, when the block takes longer than ``seconds``."""
    def on_alarm(signum, frame):
        raise AssertionError(f"no answer within {seconds} s: the server hangs on this input")
    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def assert_safe_answer(res, allowed=(200, 400, 413)):
    """A status from ``allowed``, JSON, the security headers, and no internals in errors."""
    text = res.get_data(as_text=True)
    assert res.status_code in allowed, (res.status_code, text[:300])
    assert res.headers["X-Content-Type-Options"] == "nosniff"
    assert res.headers["X-Frame-Options"] == "DENY"
    if res.status_code >= 400:
        body = res.get_json()
        assert isinstance(body, dict) and isinstance(body.get("error"), str) and body["error"], text[:300]
        for leak in LEAKS:
            assert leak not in text, (leak, text[:300])
    return res.get_json()


# -- image bytes: seeds, mutations ---------------------------------------------------------------
def _encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _seed_files() -> list[bytes]:
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8))
    seeds = [_encode(rgb, "PNG"), _encode(rgb, "JPEG", quality=70),
             _encode(rgb, "JPEG", progressive=True), _encode(rgb.convert("P"), "GIF"),
             _encode(rgb, "BMP"), _encode(rgb, "TIFF"), _encode(rgb, "TIFF", compression="tiff_lzw"),
             _encode(rgb, "WEBP"), _encode(rgb.convert("P"), "PNG", transparency=0),
             _encode(Image.fromarray((rng.integers(0, 65535, (20, 20))).astype(np.uint16)), "PNG"),
             _encode(rgb.convert("CMYK"), "JPEG")]
    seeds += [p.read_bytes() for p in sorted(NASTY.iterdir())
              if p.name in EXPECTED and 0 < p.stat().st_size <= 4096]
    return seeds


SEEDS = _seed_files()
EDGE_VALUES = (0, 1, 15, 16, 255, 256, 0x7FFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF)


@st.composite
def mutated_image(draw) -> bytes:
    """A valid or nasty seed file, then up to four edits: flips, cuts, insertions and
    extreme numbers written over header fields (sizes, lengths, counts)."""
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(0, 4))):
        op = draw(st.sampled_from(("flip", "cut", "insert", "delete", "number")))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip" and data:
            data[at] ^= draw(st.integers(1, 255))
        elif op == "cut":
            del data[at:]
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=64))
        elif op == "delete":
            del data[at:at + draw(st.integers(1, 64))]
        elif op == "number":
            at = draw(st.integers(0, min(64, max(0, len(data) - 4))))
            width = draw(st.sampled_from((2, 4)))
            value = draw(st.sampled_from(EDGE_VALUES)) & (0xFFFF if width == 2 else 0xFFFFFFFF)
            order = draw(st.sampled_from(("big", "little")))
            data[at:at + width] = value.to_bytes(width, order)
    return bytes(data)


image_bytes = st.one_of(mutated_image(), st.binary(max_size=1024))


# -- decoding ----------------------------------------------------------------------------------
@fuzz(1000)
@given(data=image_bytes)
def test_decoding_gives_an_rgb_frame_or_a_clear_refusal(data):
    with no_hang():
        try:
            frame = decode_image(data)
        except ImageError as exc:
            assert exc.status in (400, 413) and str(exc)
            assert not any(leak in str(exc) for leak in LEAKS), str(exc)
            return
    assert frame.dtype == np.uint8 and frame.ndim == 3 and frame.shape[2] == 3
    assert min(frame.shape[:2]) >= imaging.MIN_SIDE
    assert frame.shape[0] * frame.shape[1] <= imaging.DEFAULT_MAX_PIXELS


# -- the API with fuzzed uploads ------------------------------------------------------------------
filenames = st.one_of(st.sampled_from(["frame.png", "x.jpg", "", "../../etc/passwd", "a\\b.gif",
                                       "%00.png", "con", ".", "Ω.png"]),
                      st.text(max_size=40))


@fuzz(300)
@given(data=image_bytes, filename=filenames, url=st.sampled_from(["/api/caption", "/api/explain"]))
def test_fuzzed_uploads_get_a_result_or_a_4xx(app, data, filename, url):  # noqa: F811
    form = {"methods": "gradcam", "adversarial": "0"} if url == "/api/explain" else {}
    with no_hang():
        res = post(app.test_client(), url, data, filename=filename, **form)
    body = assert_safe_answer(res)
    if res.status_code == 200:
        assert body["caption"] == " ".join(body["words"])
        if url == "/api/explain":
            assert len(body["explanations"]["gradcam"]["words"]) == len(body["words"])


# -- form fields ----------------------------------------------------------------------------------
def comma_list(items):
    junk = st.text(alphabet=string.printable + "é\u202e\x00", max_size=12)
    return st.lists(st.one_of(st.sampled_from(items), junk), max_size=5).map(",".join)


field_values = {
    "methods": st.one_of(st.none(), comma_list(["gradcam", "saliency", "ace", "GradCAM", " ace "])),
    "words": st.one_of(st.none(), comma_list(["0", "1", "2", "all", "-1", "99", "1e3",
                                              "99999999999999999999", " 0 "])),
    "saliency_method": st.one_of(st.none(), st.sampled_from(
        ["vanilla", "smoothgrad", "integrated_gradients", "SmoothGrad", "", "ig", "x" * 500])),
    "adversarial": st.one_of(st.none(), st.sampled_from(
        ["0", "1", "true", "off", "", "2", "yes please"]), st.text(max_size=8)),
}


@fuzz(25)
@given(fields=st.fixed_dictionaries({k: v for k, v in field_values.items()}),
       extra=st.dictionaries(st.text(min_size=1, max_size=10), st.text(max_size=20), max_size=3))
def test_fuzzed_explain_fields_get_a_result_or_a_4xx(app, fields, extra):  # noqa: F811
    form = {k: v for k, v in {**extra, **fields}.items() if v is not None and k != "image"}
    if "ace" in (fields["methods"] or "") or fields["methods"] is None:
        form["adversarial"] = "0"       # keep each example cheap: FGSM is covered elsewhere
    with no_hang():
        res = post(app.test_client(), "/api/explain", scene_png(), **form)
    body = assert_safe_answer(res, allowed=(200, 400, 501))
    if res.status_code == 200:
        words = body["words"]
        for method, section in body["explanations"].items():
            assert len(section["words"]) == len(words), method


# -- raw multipart bodies and headers -------------------------------------------------------------
@st.composite
def multipart_body(draw) -> tuple[bytes, str]:
    boundary = draw(st.sampled_from(["b", "x" * 70, "a b", "é", "--", ""]))
    declared = draw(st.sampled_from([boundary, boundary + "x", "", None]))
    ctype = draw(st.sampled_from([
        f"multipart/form-data; boundary={declared}" if declared is not None else "multipart/form-data",
        f'multipart/form-data; boundary="{declared}"', "multipart/mixed; boundary=b",
        "application/x-www-form-urlencoded", "text/plain", "image/png", ""]))
    parts = []
    for _ in range(draw(st.integers(0, 3))):
        name = draw(st.sampled_from(['name="image"', 'name="image"; filename="a.png"',
                                     "name=image", 'name="methods"', 'filename="x"', "",
                                     "name*=UTF-8''image", 'name="image"; filename="' + "A" * 300 + '"']))
        headers = f"Content-Disposition: form-data; {name}"
        if draw(st.booleans()):
            headers += "\r\nContent-Type: " + draw(st.sampled_from(["image/png", "text/html", "x"]))
        content = draw(st.one_of(st.sampled_from(SEEDS[:4]), st.binary(max_size=200)))
        sep = draw(st.sampled_from(["\r\n", "\n", ""]))
        parts.append(f"--{boundary}{sep}{headers}{sep}{sep}".encode() + content + b"\r\n")
    ending = draw(st.sampled_from([f"--{boundary}--\r\n", f"--{boundary}", "", "--\r\n"]))
    body = b"".join(parts) + ending.encode() + draw(st.binary(max_size=32))
    return body, ctype


@fuzz(200)
@given(body=multipart_body(), url=st.sampled_from(["/api/caption", "/api/explain", "/explain"]))
def test_fuzzed_multipart_bodies_never_break_the_server(app, body, url):  # noqa: F811
    data, ctype = body
    with no_hang():
        res = app.test_client().post(url, data=data, headers={"Content-Type": ctype})
    if url == "/explain":           # the no-JavaScript form answers HTML
        assert res.status_code in (200, 400, 413), res.status_code
        assert "Traceback" not in res.get_data(as_text=True)
    else:
        assert_safe_answer(res)


# -- paths and query strings ------------------------------------------------------------------------
SEGMENTS = ["..", "%2e%2e", "%2E%2E", ".%2e", "%252e%252e", "%2f", "%5c", "\\", "%00", ".", "",
            "static", "samples", "api", "app.py", "etc", "passwd", "0.png", "style.css", "app.js",
            "templates", "index.html", "models", "shapes", "config.json", "\u2025", "%c0%ae%c0%ae"]
STATIC_FILES = {p.read_bytes() for p in (REPO / "static").rglob("*") if p.is_file()}


@fuzz(200)
@given(segments=st.lists(st.sampled_from(SEGMENTS), min_size=1, max_size=6),
       root=st.sampled_from(["/", "/static/", "/samples/", "/api/"]),
       query=st.one_of(st.just(""), st.sampled_from(["?file=../../app.py", "?n=-1", "?path=%2e%2e%2f",
                                                     "?" + "a=" * 200, "?\x00"]),
                       st.text(alphabet=string.printable, max_size=30).map(lambda q: "?" + q)))
@example(segments=["", ".."], root="/", query="")        # "//..": a path, not a host
def test_fuzzed_paths_never_leave_the_served_folders(app, segments, root, query):  # noqa: F811
    path = root + "/".join(segments)
    client = app.test_client()
    with no_hang():
        if path.startswith("//"):
            # The test client would read "//../x" as a URL whose host is ".."; a server
            # hands it to the app as a path (WSGI: percent-decoded, latin-1).
            res = client.get("/", query_string=query[1:], environ_overrides={
                "PATH_INFO": unquote_to_bytes(path).decode("latin-1")})
        else:
            res = client.get(path + query)
    path += query
    assert res.status_code < 500, (path, res.status_code)
    assert res.headers["X-Content-Type-Options"] == "nosniff"
    if res.status_code == 200 and res.request.path.startswith("/static/"):
        assert res.get_data() in STATIC_FILES, path          # only the static folder is served


TRAVERSALS = ["/static/../app.py", "/static/%2e%2e/app.py", "/static/..%2fapp.py",
              "/static/%2e%2e%2fapp.py", "/static/..%5capp.py", "/static/..\\app.py",
              "/static//etc/passwd", "/static/%2fetc%2fpasswd", "/static/../../../../etc/passwd",
              "/static/%252e%252e/app.py", "/static/./../source_code/web/app.py",
              "/static/%c0%ae%c0%ae/app.py", "/static/app.js%00.png",
              "/samples/..%2f..%2fapp.py", "/samples/%2e%2e/0.png", "/templates/index.html",
              "/models/shapes/config.json", "/source_code/web/app.py", "/app.py", "/.git/config"]


@pytest.mark.parametrize("path", TRAVERSALS)
def test_no_directory_traversal(app, path):  # noqa: F811
    res = app.test_client().get(path, follow_redirects=True)   # "//" -> "/" is a redirect first
    assert res.status_code in (400, 404), (path, res.status_code)
    text = res.get_data(as_text=True)
    for secret in ("create_app", "root:", "[core]", '"backbone"', "{% "):
        assert secret not in text, (path, secret)
    assert res.get_json()["error"]


# -- the corpus of nasty files ------------------------------------------------------------------------
def test_the_corpus_matches_its_generator():
    files = {p.name for p in NASTY.iterdir() if p.name not in ("expected.json", "generate.py")}
    assert files == set(EXPECTED), "run python tests/nasty_images/generate.py"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_nasty_file(app, name):  # noqa: F811
    expected = EXPECTED[name]
    data = (NASTY / name).read_bytes()
    for url in ("/api/caption", "/api/explain"):
        form = {"methods": "gradcam", "adversarial": "0"} if url == "/api/explain" else {}
        with no_hang():
            res = post(app.test_client(), url, data, filename=name, **form)
        body = assert_safe_answer(res, allowed=(expected["status"],))
        if expected["status"] == 200:
            assert body["words"], name
            if url == "/api/explain":
                width, height = expected["size"]
                assert body["image"] == {"width": width, "height": height}, name
        else:
            assert expected["fragment"] in body["error"], (name, body["error"])
            assert name not in body["error"]          # the upload's name is never echoed


# -- forced internal errors -------------------------------------------------------------------------
def test_an_internal_error_while_decoding_is_a_bare_500(explainer, monkeypatch, caplog):  # noqa: F811
    def broken(*args, **kwargs):
        raise RuntimeError(f"bug in {REPO}/source_code/imaging.py, line 99")

    monkeypatch.setattr(imaging, "_to_rgb", broken)
    client = create_app({}, explainer=explainer).test_client()
    for url in ("/api/caption", "/api/explain"):
        res = post(client, url, scene_png())
        assert_error(res, 500, "internal error")
        for leak in LEAKS + ("RuntimeError", "line 99"):
            assert leak not in res.get_data(as_text=True)
        assert res.headers["X-Content-Type-Options"] == "nosniff"
    res = post(client, "/explain", scene_png())        # the HTML page hides it as well
    assert res.status_code == 500 and "line 99" not in res.get_data(as_text=True)
    assert str(REPO) not in res.get_data(as_text=True)
    assert any("line 99" in (r.exc_text or "") for r in caplog.records), "the log keeps it"
