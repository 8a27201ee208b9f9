"""The web app through Flask's test client: the JSON contract of DESIGN.md, every bad
input, the bounded work queue, the loading state, security headers, the no-JavaScript
form and the sample scenes. The model is a tiny random-weight bundle: captions are
gibberish, but the plumbing is the real one."""
from __future__ import annotations

import base64
import io
import struct
import threading
import time
import zlib

import numpy as np
import pytest
from PIL import Image

from source_code.data.synthetic import generate_scene
from source_code.explain.pipeline import Explainer
from source_code.model.captioner import Captioner
from source_code.web import create_app
from source_code.web.routes import SAMPLE_SEEDS

from conftest import make_tiny_captioner

MAX_UPLOAD = 10 * 1024 * 1024


# -- images --------------------------------------------------------------------------------
def encode(im: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def scene_png(seed: int = 1) -> bytes:
    return encode(Image.fromarray(generate_scene(seed, image_size=96, jpeg_quality=0).image))


def bomb_png() -> bytes:
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b""))
            + chunk(b"IEND", b""))


def truncated_jpeg() -> bytes:
    rng = np.random.default_rng(0)
    data = encode(Image.fromarray(rng.integers(0, 256, (120, 120, 3), dtype=np.uint8)), "JPEG")
    return data[: len(data) // 2]


def exif_rotated_jpeg() -> bytes:
    im = Image.fromarray(generate_scene(2, image_size=96, jpeg_quality=0).image[:, :64])  # 64 x 96
    exif = im.getexif()
    exif[0x0112] = 6
    return encode(im, "JPEG", quality=95, exif=exif.tobytes())


ODD_BUT_VALID = {
    "greyscale": lambda: encode(Image.fromarray(generate_scene(3, 64).image).convert("L")),
    "rgba": lambda: encode(Image.fromarray(generate_scene(4, 64).image).convert("RGBA")),
    "16-bit": lambda: encode(Image.fromarray((np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16))),
    "cmyk-jpeg": lambda: encode(Image.fromarray(generate_scene(5, 64).image).convert("CMYK"), "JPEG"),
    "exif-rotated": exif_rotated_jpeg,
    "palette": lambda: encode(Image.fromarray(generate_scene(6, 64).image).convert("P")),
}


# -- fixtures -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def explainer(tiny_bundle, tmp_path_factory):
    ex = Explainer(Captioner.load(tiny_bundle))
    probe = generate_scene(1, image_size=96, jpeg_quality=0).image
    if not ex.caption(probe)["words"]:
        # An empty caption has nothing to explain: use random weights that write words.
        path = tmp_path_factory.mktemp("bundles") / "tiny-wordy"
        make_tiny_captioner(seed=2).save(path)
        ex = Explainer(Captioner.load(path))
    assert ex.caption(probe)["words"], "the test model must write a non-empty caption"
    return ex


@pytest.fixture(scope="module")
def app(explainer):
    return create_app({"MAX_CONTENT_LENGTH": MAX_UPLOAD, "QUEUE_SIZE": 2}, explainer=explainer)


@pytest.fixture()
def client(app):
    return app.test_client()


def post(client, url, image: bytes | None = None, field: str = "image", filename="frame.png",
         **form):
    data = dict(form)
    if image is not None:
        data[field] = (io.BytesIO(image), filename)
    return client.post(url, data=data, content_type="multipart/form-data")


def assert_good_caption(client):
    res = post(client, "/api/caption", scene_png())
    assert res.status_code == 200, res.get_json()
    assert res.get_json()["words"]


def assert_error(res, status, *fragments):
    assert res.status_code == status, (res.status_code, res.get_data(as_text=True)[:300])
    body = res.get_json()
    assert set(body) == {"error"} and isinstance(body["error"], str) and body["error"]
    for fragment in fragments:
        assert fragment in body["error"], body["error"]
    return body["error"]


def assert_map(m, where="", overlay=False):
    """A MAP of the contract: a heatmap grid in [0, 1]; a PNG overlay only when asked."""
    assert isinstance(m, dict) and "heatmap" in m, where
    grid = np.asarray(m["heatmap"], dtype=float)
    assert grid.ndim == 2 and 1 <= grid.shape[0] <= 64 and 1 <= grid.shape[1] <= 64, where
    assert grid.min() >= 0.0 and grid.max() <= 1.0, where
    if not overlay:
        assert "overlay" not in m, where
        return
    assert m["overlay"].startswith("data:image/png;base64,"), where
    png = base64.b64decode(m["overlay"].split(",", 1)[1])
    assert png[:8] == b"\x89PNG\r\n\x1a\n", where


# -- the contract --------------------------------------------------------------------------------
def test_healthz(client):
    res = client.get("/healthz")
    assert res.status_code == 200
    body = res.get_json()
    assert body["status"] == "ok"
    assert body["model"]["name"].startswith("tiny") and "backbone" in body["model"]


def test_healthz_lists_the_shipped_bundles(client):
    bundles = {b["name"]: b for b in client.get("/healthz").get_json()["bundles"]}
    assert {"objects", "shapes"} <= set(bundles)
    assert bundles["objects"]["default"] and not bundles["shapes"]["default"]


def test_caption_says_how_familiar_the_frame_is(client):
    body = post(client, "/api/caption", scene_png()).get_json()
    assert isinstance(body["familiar"], bool)
    assert body["familiarity"] is None or 0.0 <= body["familiarity"] <= 1.0


@pytest.mark.parametrize("name", ["nope", "../models/shapes", "/etc", ""])
def test_the_model_picker_takes_shipped_names_only(client, name):
    res = client.post("/api/bundle", json={"name": name})
    assert_error(res, 400, "unknown bundle")
    assert client.get("/healthz").get_json()["model"]["name"].startswith("tiny")


def test_the_model_picker_switches_to_another_shipped_bundle(explainer):
    client = create_app({"QUEUE_SIZE": 2}, explainer=explainer).test_client()
    res = client.post("/api/bundle", json={"name": "shapes"})
    assert res.status_code == 202 and res.get_json() == {"status": "loading", "bundle": "shapes"}
    deadline = time.time() + 120
    while client.get("/healthz").status_code != 200 and time.time() < deadline:
        time.sleep(0.2)
    body = client.get("/healthz").get_json()
    assert body["model"]["name"] == "shapes" and body["bundle"].endswith("shapes")
    assert post(client, "/api/caption", scene_png()).status_code == 200
    assert 'value="shapes" title=' in client.get("/").get_data(as_text=True)


def test_the_model_picker_marks_a_bundle_served_by_name(explainer):
    """`app.py --bundle shapes` serves the bundle by name: the picker must show it."""
    import re
    page = create_app({"QUEUE_SIZE": 2, "BUNDLE": "shapes"}, explainer=explainer).test_client().get("/")
    picker = page.get_data(as_text=True).split('id="bundle-picker"', 1)[1].split("</select>", 1)[0]
    assert re.findall(r'<option value="(\w+)"[^>]*\bselected\b', picker) == ["shapes"]


def test_caption(client):
    res = post(client, "/api/caption", scene_png())
    assert res.status_code == 200
    body = res.get_json()
    assert {"caption", "words", "logprob", "beam_width", "timings_ms"} <= set(body)
    assert body["caption"] == " ".join(body["words"]) and body["words"]
    assert res.headers["Cache-Control"] == "no-store"


def test_explain_gradcam_and_saliency(client):
    res = post(client, "/api/explain", scene_png(), methods="gradcam,saliency,attention")
    assert res.status_code == 200
    body = res.get_json()
    words = body["words"]
    assert body["caption"] == " ".join(words) and words
    ex = body["explanations"]
    assert {"gradcam", "saliency"} <= set(ex) and "ace" not in ex
    for method in ("gradcam", "saliency"):
        assert_map(ex[method]["caption"], method)
        assert len(ex[method]["words"]) == len(words)
    for i, m in enumerate(ex["gradcam"]["words"]):
        assert_map(m, f"gradcam word {i}")
    assert ex["saliency"]["words"] == [None] * len(words)      # none asked for
    attention = ex.get("attention")                            # the tiny model attends
    assert attention and "not an attribution" in attention["note"]
    assert_map(attention["caption"])
    assert len(attention["words"]) == len(words)
    assert {"gradcam", "saliency", "total"} <= set(body["timings_ms"])
    assert any(step.startswith("backbone") for step in body["timings_ms"])


def test_methods_lists_the_registry(client):
    res = client.get("/api/methods")
    assert res.status_code == 200
    methods = {m["name"]: m for m in res.get_json()["methods"]}
    assert {"gradcam", "gradcam_pp", "attention", "saliency", "smoothgrad",
            "integrated_gradients", "contrastive", "ace"} <= set(methods)
    for m in methods.values():
        assert m["label"] and m["hint"] and isinstance(m["options"], list)
    assert methods["gradcam"]["default"] and not methods["gradcam_pp"]["default"]
    attack = {o["name"]: o for o in methods["ace"]["options"]}["attack"]
    assert attack["choices"] == ["fgsm", "pgd"]


def test_default_answer_is_compact_and_overlays_come_when_asked(client):
    compact = post(client, "/api/explain", scene_png(), methods="gradcam")
    assert compact.status_code == 200
    assert len(compact.get_data()) < 64 * 1024
    assert "overlay" not in compact.get_json()["explanations"]["gradcam"]["caption"]
    full = post(client, "/api/explain", scene_png(), methods="gradcam", overlays="1")
    for m in [full.get_json()["explanations"]["gradcam"]["caption"],
              *full.get_json()["explanations"]["gradcam"]["words"]]:
        assert_map(m, overlay=True)
    assert_error(post(client, "/api/explain", scene_png(), overlays="maybe"), 400, "overlays")


def test_the_adversarial_check_sends_only_the_image_the_page_shows(client):
    """The attacked whole image is shown; the salient-pixels one (about 100 KB) comes
    only with overlays=1."""
    for overlays, expected in (("0", {"all_pixels"}), ("1", {"all_pixels", "salient_pixels"})):
        adv = post(client, "/api/explain", scene_png(), methods="ace",
                   overlays=overlays).get_json()["explanations"]["ace"]["adversarial"]
        with_image = {k for k in ("all_pixels", "salient_pixels") if "perturbed_image" in adv[k]}
        assert with_image == expected
        assert adv["all_pixels"]["perturbed_image"].startswith("data:image/png;base64,")


@pytest.mark.parametrize("method", ["gradcam_pp", "smoothgrad", "integrated_gradients"])
def test_every_registered_map_method_is_reachable(client, method):
    res = post(client, "/api/explain", scene_png(), methods=method, words="0")
    assert res.status_code == 200, res.get_json()
    section = res.get_json()["explanations"][method]
    assert_map(section["caption"], method)
    assert_map(section["words"][0], method)


def test_word_scores_give_each_words_probability_and_alternatives(client):
    body = post(client, "/api/explain", scene_png(), methods="gradcam").get_json()
    scores = body["word_scores"]
    assert [s["word"] for s in scores] == body["words"]
    for s, m in zip(scores, body["explanations"]["gradcam"]["words"]):
        assert 0 < s["p"] <= 1 and abs(np.log(s["p"]) - s["logprob"]) < 1e-3
        assert abs(s["logprob"] - m["score"]) < 1e-3     # the same s_t Grad-CAM explains
        assert s["word"] not in [a["word"] for a in s["alternatives"]]
        assert all(a["word"] not in ("<end>", "<pad>", "<start>", "<unk>") for a in s["alternatives"])


def test_contrastive_against_the_runner_up_and_a_chosen_word(client):
    body = post(client, "/api/explain", scene_png(), methods="contrastive").get_json()
    words, section = body["words"], body["explanations"]["contrastive"]
    assert_map(section["caption"])
    for s, m in zip(body["word_scores"], section["words"]):
        assert_map(m)
        assert m["alternative"] == s["alternatives"][0]["word"] and not m["chosen"]
        assert abs(m["score"] - (np.log(m["p_word"]) - np.log(m["p_alternative"]))) < 1e-2
    other = next(w for w in ("circle", "square", "red") if w != words[0])
    chosen = post(client, "/api/explain", scene_png(), methods="contrastive",
                  caption=body["caption"], contrast=f"0:{other}").get_json()
    first = chosen["explanations"]["contrastive"]["words"][0]
    assert first["alternative"] == other and first["chosen"]
    assert_error(post(client, "/api/explain", scene_png(), methods="contrastive",
                      contrast="0:zebra"), 400, "not in the model's vocabulary")
    assert_error(post(client, "/api/explain", scene_png(), methods="contrastive",
                      contrast="nonsense"), 400, "index:word")


def test_explain_your_own_caption(client):
    res = post(client, "/api/explain", scene_png(), methods="gradcam",
               caption="A large red circle above a small blue square")
    assert res.status_code == 200, res.get_json()
    body = res.get_json()
    assert body["words"] == "a large red circle above a small blue square".split()
    assert len(body["explanations"]["gradcam"]["words"]) == 9
    assert all(isinstance(s["model_choice"], bool) for s in body["word_scores"])
    assert abs(sum(s["logprob"] for s in body["word_scores"]) - body["logprob"]) < 1e-2
    assert_error(post(client, "/api/explain", scene_png(), caption="a purple unicorn"),
                 400, "not in the model's vocabulary", "purple", "unicorn")


def test_gradcam_of_the_caption_alone_equals_the_full_one(client):
    full = post(client, "/api/explain", scene_png(), methods="gradcam").get_json()
    fast = post(client, "/api/explain", scene_png(), methods="gradcam",
                gradcam_scope="caption").get_json()
    a = np.asarray(full["explanations"]["gradcam"]["caption"]["heatmap"])
    b = np.asarray(fast["explanations"]["gradcam"]["caption"]["heatmap"])
    assert np.abs(a - b).max() <= 2e-3      # grids are rounded to 1/1000
    assert fast["explanations"]["gradcam"]["words"] == [None] * len(fast["words"])
    assert abs(full["explanations"]["gradcam"]["caption"]["score"]
               - fast["explanations"]["gradcam"]["caption"]["score"]) < 1e-3


def test_trust_scores_for_the_words_asked(client):
    body = post(client, "/api/explain", scene_png(), methods="gradcam,saliency", words="1",
                faithfulness="1").get_json()
    for method in ("gradcam", "saliency"):
        section = body["explanations"][method]
        trust = section["words"][1]["faithfulness"]
        assert len(trust["fractions"]) == len(trust["probability"]) == len(trust["random_probability"])
        assert trust["fractions"][0] == 0 and trust["fractions"][-1] == 1
        assert 0 <= trust["auc"] <= 1 and 0 <= trust["random_auc"] <= 1
        assert f"p({body['words'][1]})" in trust["verdict"]
        assert "faithfulness" not in section["caption"]
        assert "faithfulness" not in (section["words"][0] or {})
    assert "faithfulness" in body["timings_ms"]
    caption_only = post(client, "/api/explain", scene_png(), methods="gradcam",
                        faithfulness="1").get_json()
    assert "p(caption)" in caption_only["explanations"]["gradcam"]["caption"]["faithfulness"]["verdict"]


def test_the_pgd_attack_is_reachable(client):
    res = post(client, "/api/explain", scene_png(), methods="ace", attack="pgd")
    assert res.status_code == 200
    assert res.get_json()["explanations"]["ace"]["adversarial"]["method"] == "pgd"


def test_explain_saliency_only_for_the_words_asked(client):
    res = post(client, "/api/explain", scene_png(), methods="saliency", words="0,2")
    assert res.status_code == 200
    body = res.get_json()
    assert set(body["explanations"]) == {"saliency"}
    maps = body["explanations"]["saliency"]["words"]
    assert len(maps) == len(body["words"]) >= 3
    for i, m in enumerate(maps):
        if i in (0, 2):
            assert_map(m, f"saliency word {i}")
        else:
            assert m is None


def test_explain_all_words(client):
    res = post(client, "/api/explain", scene_png(), methods="saliency", words="all")
    assert res.status_code == 200
    sal = res.get_json()["explanations"]["saliency"]
    assert sal["method"] == "vanilla"
    assert all(m is not None for m in sal["words"])


def test_explain_with_another_saliency_method(client):
    res = post(client, "/api/explain", scene_png(), methods="saliency", words="1",
               saliency_method="smoothgrad")
    assert res.status_code == 200
    sal = res.get_json()["explanations"]["saliency"]
    assert sal["method"] == "smoothgrad"
    assert_map(sal["caption"])
    assert [m is not None for m in sal["words"]].count(True) == 1


def test_explain_default_methods_include_ace_and_the_adversarial_check(client):
    res = post(client, "/api/explain", scene_png())
    assert res.status_code == 200
    body = res.get_json()
    ex = body["explanations"]
    assert {"gradcam", "saliency", "ace"} <= set(ex)
    ace = ex["ace"]
    assert_map(ace["caption"], "ace caption")
    assert len(ace["words"]) == len(body["words"])
    assert isinstance(ace["concepts"], list)
    for concept in ace["concepts"]:
        assert {"id", "name", "patches"} <= set(concept)
    adv = ace["adversarial"]
    assert isinstance(adv["new_caption"], str) and isinstance(adv["changed_words"], list)
    assert_map(adv["all_pixels"]["perturbation"], "perturbation")


def test_explain_without_the_adversarial_check(client):
    res = post(client, "/api/explain", scene_png(), methods="ace", adversarial="0")
    assert res.status_code == 200
    assert "adversarial" not in res.get_json()["explanations"]["ace"]


@pytest.mark.parametrize("form, fragment", [
    ({"methods": "gradcam,magic"}, "unknown method"),
    ({"methods": "gradcam", "words": "99"}, "out of range"),
    ({"methods": "gradcam", "words": "first"}, "not an integer"),
    ({"methods": "saliency", "saliency_method": "guessing"}, "unknown saliency method"),
    ({"methods": "ace", "attack": "laser"}, "unknown attack"),
    ({"methods": "gradcam", "adversarial": "maybe"}, "adversarial"),
])
def test_bad_options_are_400(client, form, fragment):
    assert_error(post(client, "/api/explain", scene_png(), **form), 400, fragment)
    assert_good_caption(client)


# -- bad and odd uploads ---------------------------------------------------------------------------
BAD_UPLOADS = {
    "empty file": (dict(image=b""), 400, "empty"),
    "missing field": (dict(image=None, methods="gradcam"), 400, "no image"),
    "wrong field name": (dict(image=b"x", field="photo"), 400, "'image'"),
    "not an image": (dict(image=b"GIF89a but not really " * 10), 400, "not an image"),
    "truncated jpeg": (dict(image=truncated_jpeg()), 400, "truncated"),
    "decompression bomb": (dict(image=bomb_png()), 413, "pixels"),
    "1x1 image": (dict(image=encode(Image.new("RGB", (1, 1)))), 400, "too small"),
}


@pytest.mark.parametrize("url", ["/api/caption", "/api/explain"])
@pytest.mark.parametrize("case", list(BAD_UPLOADS))
def test_bad_upload_is_refused_and_the_next_request_works(client, url, case):
    kwargs, status, fragment = BAD_UPLOADS[case]
    kwargs = dict(kwargs)
    image = kwargs.pop("image")
    res = post(client, url, image, **kwargs)
    message = assert_error(res, status, fragment)
    assert "Traceback" not in message and "PIL" not in message
    assert_good_caption(client)


def test_empty_body(client):
    assert_error(client.post("/api/caption"), 400, "multipart")
    assert_error(client.post("/api/explain", data=b"", content_type="multipart/form-data; boundary=x"),
                 400, "no image")
    assert_good_caption(client)


def test_image_sent_as_text_field(client):
    res = client.post("/api/caption", data={"image": "not a file"}, content_type="multipart/form-data")
    assert_error(res, 400, "file upload")


def test_json_body_is_refused(client):
    assert_error(client.post("/api/caption", json={"image": "aGVsbG8="}), 400, "multipart")


def test_upload_over_the_size_limit_is_413(client):
    huge = b"\xff\xd8\xff" + bytes(MAX_UPLOAD + 1024)
    res = post(client, "/api/caption", huge)
    assert_error(res, 413, "too large")
    assert_good_caption(client)


@pytest.mark.parametrize("kind", list(ODD_BUT_VALID))
def test_odd_but_valid_images_are_captioned(client, kind):
    res = post(client, "/api/caption", ODD_BUT_VALID[kind]())
    assert res.status_code == 200, res.get_json()
    assert res.get_json()["words"]


def test_exif_rotation_reaches_the_model(client):
    res = post(client, "/api/explain", exif_rotated_jpeg(), methods="gradcam", adversarial="0")
    assert res.status_code == 200
    assert res.get_json()["image"] == {"width": 96, "height": 64}   # stored 64 wide, 96 tall


def test_uploads_stay_in_memory(client, monkeypatch):
    """Werkzeug spools file parts over 500 KB to temporary files; ours must not."""
    import werkzeug.formparser as formparser

    def no_disk(*args, **kwargs):
        raise AssertionError("an upload was spooled to disk")

    monkeypatch.setattr(formparser, "SpooledTemporaryFile", no_disk)
    monkeypatch.setattr(formparser, "TemporaryFile", no_disk, raising=False)
    rng = np.random.default_rng(1)
    big = encode(Image.fromarray(rng.integers(0, 256, (600, 600, 3), dtype=np.uint8)))
    assert len(big) > 600 * 1024
    res = post(client, "/api/caption", big)
    assert res.status_code == 200, res.get_json()


# -- queue, loading, failures ------------------------------------------------------------------------
class FakeCaptioner:
    card = {"name": "fake"}
    input_size = 32


class BlockingExplainer:
    """Captions only when released; counts who is inside."""

    def __init__(self):
        self.captioner = FakeCaptioner()
        self.release = threading.Event()
        self.entered = threading.Event()
        self.warm_release = threading.Event()
        self.warm_release.set()

    def caption(self, image):
        self.entered.set()
        assert self.release.wait(30), "the test never released the explainer"
        return {"caption": "a fake caption", "words": ["a", "fake", "caption"], "timings_ms": {}}

    def explain(self, image, **kwargs):
        self.last_kwargs = kwargs
        return {"caption": "a fake caption", "words": ["a", "fake", "caption"],
                "explanations": {}, "timings_ms": {}}

    def warm_up(self):
        assert self.warm_release.wait(30)


def test_queue_full_is_503_with_retry_after():
    explainer = BlockingExplainer()
    app = create_app({"QUEUE_SIZE": 1, "RETRY_AFTER_BUSY": 7}, explainer=explainer)
    queue = app.extensions["captioning"].queue
    results = []

    def call():
        results.append(post(app.test_client(), "/api/caption", scene_png()).status_code)

    threads = [threading.Thread(target=call) for _ in range(2)]   # one running, one waiting
    for t in threads:
        t.start()
    deadline = time.time() + 20
    while queue.pending < 2 and time.time() < deadline:
        time.sleep(0.01)
    assert queue.pending == 2 and explainer.entered.is_set()
    res = post(app.test_client(), "/api/caption", scene_png())
    assert_error(res, 503, "busy")
    assert res.headers["Retry-After"] == "7"
    explainer.release.set()
    for t in threads:
        t.join(20)
    assert results == [200, 200]
    assert queue.pending == 0
    assert post(app.test_client(), "/api/caption", scene_png()).status_code == 200


def test_loading_state_is_503_until_the_model_is_warm():
    explainer = BlockingExplainer()
    explainer.release.set()
    explainer.warm_release.clear()
    app = create_app({"WARM_UP": True}, explainer=explainer)
    client = app.test_client()
    res = client.get("/healthz")
    assert res.status_code == 503 and res.get_json() == {"status": "loading"}
    assert int(res.headers["Retry-After"]) > 0
    res = post(client, "/api/caption", scene_png())
    assert_error(res, 503, "loading")
    assert int(res.headers["Retry-After"]) > 0
    assert client.get("/").status_code == 200                   # the page is up meanwhile
    explainer.warm_release.set()
    deadline = time.time() + 20
    while client.get("/healthz").status_code != 200 and time.time() < deadline:
        time.sleep(0.02)
    body = client.get("/healthz").get_json()
    assert body["status"] == "ok" and body["model"] == {"name": "fake"}
    assert post(client, "/api/caption", scene_png()).status_code == 200


def test_a_bundle_that_fails_to_load_is_reported_without_its_path(tmp_path):
    app = create_app({"BUNDLE": str(tmp_path / "no-such-bundle")})
    client = app.test_client()
    deadline = time.time() + 20
    while app.extensions["captioning"].model.status == "loading" and time.time() < deadline:
        time.sleep(0.02)
    res = client.get("/healthz")
    assert res.status_code == 503
    body = res.get_json()
    assert body["status"] == "error" and "no-such-bundle" not in body["error"]
    assert_error(post(client, "/api/caption", scene_png()), 503, "failed to load")


class RaisingExplainer(BlockingExplainer):
    def caption(self, image):
        raise RuntimeError("boom in /srv/secret/model.py line 42")

    def explain(self, image, **kwargs):
        raise RuntimeError("boom in /srv/secret/model.py line 42")


@pytest.mark.parametrize("url", ["/api/caption", "/api/explain"])
def test_500_has_no_traceback_or_paths(url, caplog):
    app = create_app({}, explainer=RaisingExplainer())
    res = post(app.test_client(), url, scene_png())
    text = res.get_data(as_text=True)
    assert_error(res, 500, "internal error")
    for leak in ("Traceback", "boom", "/srv", "secret", ".py", "RuntimeError"):
        assert leak not in text
    assert res.headers["X-Content-Type-Options"] == "nosniff"
    assert any("boom" in (r.exc_text or "") for r in caplog.records), "the log keeps the details"


# -- headers, routes, page -----------------------------------------------------------------------------
@pytest.mark.parametrize("method, url", [("get", "/"), ("get", "/healthz"), ("get", "/static/app.js"),
                                         ("get", "/nowhere"), ("post", "/api/caption"),
                                         ("get", "/samples/0.png")])
def test_security_headers_on_every_response(client, method, url):
    res = getattr(client, method)(url)
    assert res.headers["X-Content-Type-Options"] == "nosniff"
    assert res.headers["X-Frame-Options"] == "DENY"
    csp = res.headers["Content-Security-Policy"]
    for part in ("default-src 'self'", "script-src 'self'", "style-src 'self'",
                 "img-src 'self' data: blob:", "media-src", "frame-ancestors 'none'"):
        assert part in csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp


def test_404_and_405_are_json(client):
    assert_error(client.get("/no/such/page"), 404, "not found")
    assert_error(client.get("/api/explain"), 405, "GET")
    assert_error(client.put("/api/caption"), 405)


def test_page_has_the_stable_ids_and_a_no_js_form(client):
    res = client.get("/")
    assert res.status_code == 200 and res.mimetype == "text/html"
    html = res.get_data(as_text=True)
    for element_id in ("start-camera", "capture", "upload-input", "caption", "overlay-gradcam",
                       "overlay-saliency", "overlay-ace", "error", "timings"):
        assert f'id="{element_id}"' in html, element_id
    assert 'method="post"' in html and 'enctype="multipart/form-data"' in html
    assert 'action="/explain"' in html and 'name="image"' in html
    assert "<script>" not in html and "style=" not in html       # CSP: no inline code
    for asset, kind in (("/static/app.js", "javascript"), ("/static/style.css", "text/css")):
        assert asset in html
        r = client.get(asset)
        assert r.status_code == 200 and kind in r.content_type


def test_no_js_form_renders_the_result(client):
    res = post(client, "/explain", scene_png(), methods="gradcam,saliency", adversarial="0")
    assert res.status_code == 200 and res.mimetype == "text/html"
    html = res.get_data(as_text=True)
    caption = post(client, "/api/caption", scene_png()).get_json()["words"]
    for word in set(caption):
        assert f">{word}</button>" in html
    for method in ("gradcam", "saliency"):
        assert f'id="overlay-{method}" alt="' in html
        after = html.split(f'id="overlay-{method}"', 1)[1][:300]
        assert 'src="data:image/png;base64,' in after
    assert 'id="frame" alt="the explained frame"\n             src="data:image/png' in html


def test_no_js_form_with_a_sample_scene(client):
    res = client.post("/explain", data={"sample": "1", "methods": "gradcam", "adversarial": "0"})
    assert res.status_code == 200
    html = res.get_data(as_text=True)
    reference = generate_scene(SAMPLE_SEEDS[1], image_size=160, jpeg_quality=0).caption
    assert f"reference: {reference}" in html


def test_no_js_form_errors_are_shown_on_the_page(client):
    res = post(client, "/explain", b"not an image at all")
    assert res.status_code == 400 and res.mimetype == "text/html"
    html = res.get_data(as_text=True)
    assert 'id="error" class="alert" role="alert" >this file is not an image' in html
    assert client.post("/explain", data={"sample": "99"}).status_code == 400
    assert client.get("/explain").status_code == 302


def test_samples(client):
    res = client.get("/api/samples")
    assert res.status_code == 200
    samples = res.get_json()["samples"]
    assert len(samples) == len(SAMPLE_SEEDS) >= 3
    for n, s in enumerate(samples):
        assert s["id"] == n and s["url"] == f"/samples/{n}.png?world=shapes"
        assert s["caption"] == generate_scene(SAMPLE_SEEDS[n], image_size=160, jpeg_quality=0).caption
    png = client.get(samples[0]["url"])
    assert png.status_code == 200 and png.mimetype == "image/png"
    im = Image.open(io.BytesIO(png.data))
    assert im.size == (160, 160) and im.mode == "RGB"
    np.testing.assert_array_equal(
        np.asarray(im), generate_scene(SAMPLE_SEEDS[0], image_size=160, jpeg_quality=0).image)


@pytest.mark.parametrize("url", [f"/samples/{len(SAMPLE_SEEDS)}.png", "/samples/-1.png",
                                 "/samples/abc.png", "/samples/..%2F..%2Fapp.py",
                                 "/samples/../app.py", "/samples/0.jpg", "/samples/"])
def test_bad_sample_numbers_are_404(client, url):
    res = client.get(url)
    assert res.status_code == 404
    assert res.get_json()["error"]
