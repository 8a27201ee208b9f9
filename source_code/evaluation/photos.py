"""Real photographs from installed packages: a test set only (never trained on).

``python -m source_code evaluate-photos [--bundle B]`` captions each photo and
its webcam-like variants (mirrored, zoomed, dimmed, JPEG), counts a frame as
right when its caption names one of the nouns a person would accept, puts two
photos side by side and asks for both nouns, and checks familiarity: true for
real photos of the bundle's world, false for frames from outside it (a star
field, text pages, microscope slides, ...).
"""
from __future__ import annotations

import io
import itertools
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from ..data.objects_world import caption_nouns

# (source, what it shows, the nouns a person would accept)
IN_WORLD = [
    ("skimage:chelsea.png", "a tabby cat", {"cat"}),
    ("skimage:coffee.png", "a cup of coffee on a saucer", {"cup"}),
    ("skimage:astronaut.png", "an astronaut (a woman) with a flag", {"person"}),
    ("skimage:camera.png", "a man with a camera on a tripod (grey)", {"person"}),
    ("skimage:rocket.jpg", "a rocket on its launch pad", {"rocket"}),
    ("skimage:motorcycle_left.png", "a motorcycle", {"motorcycle"}),
    ("sklearn:china.jpg", "a temple building", {"building"}),
    ("sklearn:flower.jpg", "a flower", {"flower"}),
    ("matplotlib:grace_hopper.jpg", "Grace Hopper, a portrait", {"person"}),
]
OUT_OF_WORLD = [
    ("skimage:hubble_deep_field.jpg", "a star field"),
    ("skimage:text.png", "printed text"),
    ("skimage:page.png", "a scanned text page"),
    ("skimage:ihc.png", "a microscope slide (immunohistochemistry)"),
    ("skimage:cell.png", "a microscope image of a cell"),
    ("skimage:retina.jpg", "a retina scan"),
    ("skimage:microaneurysms.png", "a retinal angiogram"),
    ("skimage:moon.png", "the moon's surface"),
    ("skimage:coins.png", "old coins on a table (grey)"),
    ("skimage:chessboard_RGB.png", "a chessboard pattern"),
    ("skimage:phantom.png", "a medical imaging phantom"),
    ("skimage:gravel.png", "gravel texture"),
]
VARIANTS = ("original", "mirrored", "zoomed", "dimmed", "jpeg")
PHOTO_SETS = ("test", "validation", "opencv")
OPENCV_EXAMPLES = Path("/usr/share/doc/opencv-doc/examples")
OUT_OF_WORLD_VARIANTS = ("original", "mirrored", "dimmed")


def _package_dir(kind: str) -> Path:
    if kind == "skimage":
        import skimage
        return Path(skimage.__file__).parent / "data"
    if kind == "sklearn":
        import sklearn.datasets
        return Path(sklearn.datasets.__file__).parent / "images"
    if kind == "matplotlib":
        import matplotlib
        return Path(matplotlib.get_data_path()) / "sample_data"
    if kind == "opencv":        # Debian's opencv-doc: validation photos only
        return OPENCV_EXAMPLES
    raise ValueError(f"unknown photo source {kind!r}")


@lru_cache(maxsize=64)
def load_photo(source: str) -> np.ndarray:
    """``package:file`` -> RGB uint8; also the validation sources (``gcompris:`` photos and
    ``made:`` frames, see ``validation_photos.py``)."""
    kind, name = source.split(":", 1)
    if kind == "gcompris":
        from ..data.gcompris import load_image
        return load_image(source)
    if kind == "made":
        from .validation_photos import made_frame
        return made_frame(source)
    with Image.open(_package_dir(kind) / name) as im:
        return np.asarray(ImageOps.exif_transpose(im).convert("RGB"))


def variant(image: np.ndarray, kind: str) -> np.ndarray:
    """The webcam-like copies a frame is also tried as."""
    im = Image.fromarray(image)
    if kind == "original":
        return image
    if kind == "mirrored":
        return np.asarray(ImageOps.mirror(im))
    if kind == "zoomed":   # 25 % closer: the centre 80 % of each side
        w, h = im.size
        return np.asarray(im.crop((w // 10, h // 10, w - w // 10, h - h // 10)))
    if kind == "dimmed":
        return (image.astype(np.float32) * 0.55).astype(np.uint8)
    if kind == "jpeg":
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=25)
        return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
    raise ValueError(kind)


def side_by_side(a: np.ndarray, b: np.ndarray, side: int = 448) -> np.ndarray:
    """Two photos in the two halves of one square frame (each letterboxed on grey)."""
    canvas = Image.new("RGB", (side, side), (128, 128, 128))
    for k, img in enumerate((a, b)):
        im = Image.fromarray(img)
        im.thumbnail((side // 2, side), Image.LANCZOS)
        canvas.paste(im, (k * side // 2 + (side // 2 - im.width) // 2, (side - im.height) // 2))
    return np.asarray(canvas)


def all_available(entries, what: str):
    """``entries`` when every one can be read; else a clear OSError (a set that choices
    are made on must not silently shrink)."""
    readable = available(entries)
    if len(readable) < len(entries):
        missing = sorted(set(e[0] for e in entries) - set(e[0] for e in readable))
        raise OSError(f"{len(missing)} {what} could not be read (first: {missing[0]}): "
                      f"install Debian's gcompris-qt-data and opencv-doc, and "
                      f"PySide6-Essentials (requirements.txt)")
    return entries


def available(entries):
    out = []
    for entry in entries:
        try:
            load_photo(entry[0])
            out.append(entry)
        except (OSError, ImportError, ValueError):
            continue
    return out


def _frames(captioner, images):
    pixels = captioner.preprocess(images)
    fmap = captioner.features(pixels)
    parts = captioner.cell_parts(fmap)
    return captioner.decode_parts(parts, beam_width=3), captioner.familiar(fmap.numpy(), parts)


def evaluate_photos(captioner, variants=VARIANTS, photo_set: str = "test") -> dict:
    """The test photos (``photo_set="test"``: every pair of different nouns) or a set of
    validation photos (``"validation"``: GCompris's, ``"opencv"``: OpenCV's samples;
    ``validation_photos.PAIRS`` drawn pairs), which must all be readable."""
    rows, right, familiar_in = [], 0, 0
    in_world_all, out_of_world, pair_ids = photo_entries(photo_set)
    in_world = (available(in_world_all) if photo_set == "test"
                else all_available(in_world_all, "validation photos"))
    known = set(captioner.vocab.tokens)
    for source, what, nouns in in_world:
        frames = [variant(load_photo(source), v) for v in variants]
        captions, fam = _frames(captioner, frames)
        for v, cap, (ok_fam, score) in zip(variants, captions, fam):
            ok = bool(set(caption_nouns(cap.text)) & nouns)
            right += ok
            familiar_in += ok_fam
            rows.append({"photo": source, "shows": what, "accept": sorted(nouns), "variant": v,
                         "noun_in_vocabulary": bool(nouns & known),
                         "caption": cap.text, "right": ok, "familiar": ok_fam,
                         "familiarity": score})
    pairs = []
    for (sa, _, na), (sb, _, nb) in (pair_ids(in_world) if pair_ids else
                                     itertools.combinations(in_world, 2)):
        if na & nb:
            continue      # two photos of the same noun say nothing about naming both
        (cap,), ((fam, score),) = _frames(captioner, [side_by_side(load_photo(sa), load_photo(sb))])
        said = set(caption_nouns(cap.text))
        pairs.append({"left": sa, "right": sb, "caption": cap.text,
                      "both_named": bool(said & na and said & nb), "familiar": fam,
                      "nouns_in_vocabulary": bool(na & known and nb & known)})
    out_rows, unfamiliar_out = [], 0
    for source, what in (available(out_of_world) if photo_set == "test"
                         else all_available(out_of_world, "out-of-world validation frames")):
        frames = [variant(load_photo(source), v) for v in OUT_OF_WORLD_VARIANTS]
        captions, fam = _frames(captioner, frames)
        for v, cap, (ok_fam, score) in zip(OUT_OF_WORLD_VARIANTS, captions, fam):
            unfamiliar_out += not ok_fam
            out_rows.append({"photo": source, "shows": what, "variant": v, "caption": cap.text,
                             "familiar": ok_fam, "familiarity": score})
    n, m = max(len(rows), 1), max(len(out_rows), 1)
    sayable = [r for r in rows if r["noun_in_vocabulary"]]
    return {"bundle": str(getattr(captioner, "bundle_dir", "")), "photo_set": photo_set,
            "noun_right": right / n, "frames": len(rows),
            "noun_right_per_noun": per_noun_rates(rows),
            # photos whose object the model has a word for (a rocket cannot be named
            # by a model without "rocket")
            "noun_right_in_vocabulary": sum(r["right"] for r in sayable) / max(len(sayable), 1),
            "frames_in_vocabulary": len(sayable),
            "pairs_both_named": sum(p["both_named"] for p in pairs) / max(len(pairs), 1),
            "pairs": len(pairs),
            "pairs_both_named_in_vocabulary": (
                sum(p["both_named"] for p in pairs if p["nouns_in_vocabulary"])
                / max(sum(p["nouns_in_vocabulary"] for p in pairs), 1)),
            "pairs_in_vocabulary": sum(p["nouns_in_vocabulary"] for p in pairs),
            "familiar_in_world": familiar_in / n,
            "unfamiliar_out_of_world": unfamiliar_out / m, "out_of_world_frames": len(out_rows),
            "in_world_rows": rows, "pair_rows": pairs, "out_of_world_rows": out_rows}


def photo_entries(photo_set: str):
    """(in-world entries, out-of-world entries, pairs: None for all, or a function of
    the in-world entries giving the pairs to try)."""
    if photo_set == "test":
        return IN_WORLD, OUT_OF_WORLD, None
    from . import validation_photos as v
    if photo_set == "validation":
        return v.IN_WORLD_VALIDATION, v.OUT_OF_WORLD_VALIDATION, v.validation_pair_entries
    if photo_set == "opencv":
        return v.OPENCV_IN_WORLD, v.OPENCV_OUT_OF_WORLD, v.validation_pair_entries
    raise ValueError(f"unknown photo set {photo_set!r}: {', '.join(PHOTO_SETS)}")


def per_noun_rates(rows: list[dict]) -> dict[str, float]:
    """{accepted noun(s): share of its frames named right}; a photo set's nouns are
    unevenly represented (28 fish), so choices read the mean of these."""
    groups: dict[str, list[bool]] = {}
    for r in rows:
        groups.setdefault("/".join(r["accept"]), []).append(r["right"])
    return {k: round(float(np.mean(v)), 4) for k, v in sorted(groups.items())}


def format_photo_report(result: dict) -> str:
    lines = [f"{'photo':32s} {'variant':9s} {'ok':3s} {'fam':5s} caption"]
    for r in result["in_world_rows"]:
        lines.append(f"{r['photo']:32s} {r['variant']:9s} {'yes' if r['right'] else 'NO':3s} "
                     f"{r['familiarity'] if r['familiarity'] is not None else '-':<5} {r['caption']}")
    lines.append("")
    for r in result["out_of_world_rows"]:
        lines.append(f"{r['photo']:32s} {r['variant']:9s} {'':3s} "
                     f"{r['familiarity'] if r['familiarity'] is not None else '-':<5} {r['caption']}"
                     f"{'' if r['familiar'] else '  (unfamiliar)'}")
    lines.append("")
    lines.append(f"object noun right: {result['noun_right']:.3f} of {result['frames']} frames "
                 f"({result['noun_right_in_vocabulary']:.3f} of the {result['frames_in_vocabulary']} "
                 f"whose noun is in the vocabulary); "
                 f"both nouns in side-by-side pairs: {result['pairs_both_named']:.3f} of {result['pairs']} "
                 f"({result['pairs_both_named_in_vocabulary']:.3f} of the {result['pairs_in_vocabulary']} "
                 f"in the vocabulary)")
    lines.append(f"familiar, real in-world photos: {result['familiar_in_world']:.3f}; "
                 f"unfamiliar, out-of-world frames: {result['unfamiliar_out_of_world']:.3f} "
                 f"of {result['out_of_world_frames']}")
    return "\n".join(lines)
