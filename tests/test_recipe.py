"""The README's "Train on real data" recipe, end to end through the CLI, on fixture data.

A local HTTP mirror on 127.0.0.1 serves archives shaped like the real ones
(Flickr8k_Dataset.zip with ``Flicker8k_Dataset/*.jpg`` and macOS resource forks,
Flickr8k_text.zip with the token and split files, glove.6B.zip), made here from a
few synthetic scenes described in Flickr8k's style. The registry's checksums are
swapped for the fixture files' (what a mirror with other files needs); the real
registry is untouched. Then: fetch -> train -> evaluate -> build-concepts ->
export -> load and caption. Only the sizes differ from the documented commands
(a tiny slim backbone with random weights stands in for
EfficientNetV2L with ImageNet weights; one epoch).
"""
import dataclasses
import functools
import hashlib
import http.server
import io
import json
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import zip_bytes
from source_code.cli import main
from source_code.data import fetch as F
from source_code.data.synthetic import generate_scene

N_IMAGES = 16
SPLIT = {"train": range(0, 10), "dev": range(10, 13), "test": range(13, 16)}
TINY = ["--backbone", "slim", "--weights", "none", "--input-size", "64", "--width", "0.25",
        "--depth", "0.25", "--last-stride", "1", "--units", "32", "--min-count", "1",
        "--batch-size", "8", "--quiet"]


def _image_name(i: int) -> str:
    return f"{1000268201 + 7919 * i}_{hashlib.sha1(str(i).encode()).hexdigest()[:10]}.jpg"


def _describe(scene) -> list[str]:
    """Five captions in Flickr8k's style (sentence case, spaced full stop)."""
    objs = scene.objects
    first = objs[0]
    one = f"{first.color} {first.shape}"
    caps = [scene.caption[0].upper() + scene.caption[1:] + " ."]
    if len(objs) == 1:
        caps += [f"A {first.size} {one} on a plain background .",
                 f"There is a {one} in the picture .",
                 f"A {one} is drawn on a light background .",
                 f"One {first.size} {first.shape} that is {first.color} ."]
    else:
        two = f"{objs[1].color} {objs[1].shape}"
        caps += [f"A {one} and a {two} on a plain background .",
                 f"There is a {one} next to a {two} .",
                 f"Two shapes : a {one} and a {two} .",
                 f"A {first.size} {first.shape} is {scene.relation} the {objs[1].shape} ."]
    return caps


def _write_mirror(root: Path) -> dict[str, bytes]:
    images, tokens = {}, []
    for i in range(N_IMAGES):
        scene = generate_scene(4000 + i, image_size=96)
        name = _image_name(i)
        buf = io.BytesIO()   # Flickr photos are landscape: 4:3, not the square input
        Image.fromarray(scene.image).resize((96, 72), Image.BILINEAR).save(buf, format="JPEG", quality=92)
        images[f"Flicker8k_Dataset/{name}"] = buf.getvalue()
        images[f"__MACOSX/Flicker8k_Dataset/._{name}"] = b"\x00\x05\x16\x07resource fork"
        tokens += [f"{name}#{k}\t{c}" for k, c in enumerate(_describe(scene))]
    split_file = {s: "".join(_image_name(i) + "\n" for i in r).encode() for s, r in SPLIT.items()}
    text = {"Flickr8k.token.txt": ("\n".join(tokens) + "\n").encode(),
            "Flickr8k.lemma.token.txt": ("\n".join(t.lower() for t in tokens) + "\n").encode(),
            "Flickr_8k.trainImages.txt": split_file["train"],
            "Flickr_8k.devImages.txt": split_file["dev"],
            "Flickr_8k.testImages.txt": split_file["test"],
            "readme.txt": b"Flickr8k text files (fixture)\n",
            "__MACOSX/._Flickr8k.token.txt": b"\x00\x05\x16\x07junk"}
    words = sorted({w.lower() for t in tokens for w in t.split("\t")[1].split()} - {"circle"})
    rng = np.random.default_rng(0)
    glove = "".join(f"{w} " + " ".join(f"{v:.5f}" for v in rng.normal(0, 0.4, 50)) + "\n"
                    for w in ["the", ",", "."] + words)
    files = {"Flickr8k_Dataset.zip": zip_bytes(images), "Flickr8k_text.zip": zip_bytes(text),
             "glove.6B.zip": zip_bytes({"glove.6B.50d.txt": glove.encode()})}
    root.mkdir(parents=True)
    for name, data in files.items():
        (root / name).write_bytes(data)
    return files


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    requests: list

    def log_message(self, *args):
        pass

    def do_GET(self):  # noqa: N802 - http.server API
        self.requests.append(self.path)
        super().do_GET()


@pytest.fixture
def mirror(tmp_path, monkeypatch):
    """A mirror of fixture archives on 127.0.0.1 and the registry pointed at their md5s."""
    files = _write_mirror(tmp_path / "mirror")
    handler = type("Handler", (_QuietHandler,), {"requests": []})
    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(handler, directory=str(tmp_path / "mirror")))
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    for name in ("flickr8k", "glove"):
        res = F.RESOURCES[name]
        remotes = tuple(dataclasses.replace(r, md5=hashlib.md5(files[r.filename]).hexdigest(),
                                            sha256=None, size=len(files[r.filename]))
                        for r in res.files)
        monkeypatch.setitem(F.RESOURCES, name, dataclasses.replace(res, files=remotes))
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/", handler.requests
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


# A random-weight model's concept scores can be nearly constant: scipy says so.
@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Precision loss occurred in moment calculation")
def test_real_data_recipe_end_to_end(mirror, tmp_path, monkeypatch, capsys):
    url, requests = mirror
    monkeypatch.chdir(tmp_path)   # the recipe's relative paths: data/..., models/..., exports/...

    # 1. fetch the data set and the word vectors (default destinations)
    assert main(["fetch", "flickr8k", "--mirror", url, "--quiet"]) == 0
    assert main(["fetch", "glove", "--mirror", url, "--quiet"]) == 0
    assert sorted(requests) == ["/Flickr8k_Dataset.zip", "/Flickr8k_text.zip", "/glove.6B.zip"]
    data, glove = Path("data/flickr8k"), Path("data/glove/glove.6B.50d.txt")
    assert len(list((data / "Flicker8k_Dataset").glob("*.jpg"))) == N_IMAGES
    assert (data / "Flickr8k.token.txt").is_file() and glove.is_file()
    assert not (data / "__MACOSX").exists()
    assert main(["fetch", "flickr8k", "--mirror", url, "--quiet"]) == 0   # verified: no download
    assert len(requests) == 3
    capsys.readouterr()

    # 2. train with the backbone frozen, as documented: features computed once and
    #    cached (resumable), the decoder trained on them. (End-to-end training of the
    #    same layout, --finetune, is covered by test_training_cli.py.)
    bundle = Path("models/flickr8k")
    assert main(["train", "--data", str(data), "--glove", str(glove), "--out", str(bundle),
                 "--epochs", "1", *TINY]) == 0
    cache = json.loads(Path("models/flickr8k.work/features_train/progress.json").read_text())
    assert cache["done"] == 10
    card = json.loads((bundle / "config.json").read_text())
    assert card["training"]["dataset"] == "flickr8k" and card["training"]["train_images"] == 10
    assert card["glove"]["dim"] == 50 and card["glove"]["file"] == "glove.6B.50d.txt"
    assert 0.8 < card["glove"]["coverage"] < 1.0          # "circle" is not in the vectors
    assert "train --data data/flickr8k" in card["training_command"]
    capsys.readouterr()

    # 3. evaluate on the official test split: BLEU-1..4 and CIDEr as JSON
    assert main(["evaluate", "--bundle", str(bundle), "--data", str(data), "--split", "test",
                 "--quiet"]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert scores["images"] == 3
    assert {"bleu1", "bleu2", "bleu3", "bleu4", "cider"} <= set(scores)
    assert all(0.0 <= scores[k] <= 1.0 for k in ("bleu1", "bleu2", "bleu3", "bleu4"))

    # 4. the ACE concept bank from the data set's images
    assert main(["build-concepts", "--bundle", str(bundle), "--data", str(data), "--images", "8",
                 "--clusters", "3", "--random-sets", "3", "--quiet"]) == 0
    assert (bundle / "concepts").is_dir() and any((bundle / "concepts").iterdir())
    capsys.readouterr()

    # 5. export for TensorFlow Serving
    export = Path("exports/captioner/1")
    assert main(["export", "--bundle", str(bundle), "--out", str(export)]) == 0
    assert (export / "saved_model.pb").is_file()
    capsys.readouterr()

    # 6. what the app does with the bundle: load it and caption a fetched photo
    import tensorflow as tf

    from source_code.model.captioner import Captioner
    from source_code.imaging import decode_image

    captioner = Captioner.load(bundle)
    assert (bundle / "concepts").is_dir()   # kept by build-concepts' save
    photo = data / "Flicker8k_Dataset" / _image_name(14)
    image = decode_image(photo.read_bytes())
    caption = captioner.caption(image, beam_width=3)[0]
    assert all(w in captioner.vocab for w in caption.words)
    assert main(["caption", str(photo), "--bundle", str(bundle)]) == 0
    assert capsys.readouterr().out.strip() == caption.text
    served = tf.saved_model.load(str(export)).signatures["caption_pixels"](
        pixels=captioner.preprocess(image))
    assert served["caption"].numpy()[0].decode() == caption.text
