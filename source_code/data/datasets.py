"""Readers for the caption datasets: Flickr8k, Flickr30k and MS-COCO captions.

Each reader returns a :class:`CaptionDataset`: raw caption strings per image
file name (in file order) and train/val/test lists of image file names
(sorted, disjoint).  Problems in the input files (malformed rows, images
missing on disk, split entries without captions) are reported with
``warnings.warn`` and skipped; only unusable inputs (missing files, no image
at all) raise.

Deterministic splits (when no official split is available) order the sorted
image names by ``sha256(f"{seed}:{name}")`` -- a seeded shuffle that does not
depend on the Python/numpy version -- and cut train/val/test by proportion.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
KINDS = ("flickr8k", "flickr30k", "coco", "auto")

FLICKR8K_TOKEN_FILE = "Flickr8k.token.txt"
FLICKR8K_CSV_FILE = "captions.txt"
FLICKR8K_TEXT_DIR = "Flickr8k_text"
FLICKR8K_IMAGE_DIRS = ("Flicker8k_Dataset", "Flickr8k_Dataset", "Images")
FLICKR8K_SPLIT_FILES = {
    "train": "Flickr_8k.trainImages.txt",
    "val": "Flickr_8k.devImages.txt",
    "test": "Flickr_8k.testImages.txt",
}
# 6000/1000/1000 of the official split, as proportions.
FLICKR8K_FRACTIONS = (0.75, 0.125)

FLICKR30K_CSV_FILE = "results.csv"
FLICKR30K_IMAGE_DIR = "flickr30k_images"
FLICKR30K_KARPATHY_FILE = "dataset_flickr30k.json"
# 29000/1014/1000 of the usual split (31783 images), as proportions.
FLICKR30K_FRACTIONS = (29000 / 31783, 1014 / 31783)

_MAX_ROW_WARNINGS = 50


@dataclass
class CaptionDataset:
    """Captions and splits of one dataset.

    ``captions`` maps an image file name (relative to ``image_dir``) to its raw
    caption strings; ``splits`` maps "train"/"val"/"test" to sorted, disjoint
    lists of image file names that all have captions.  An image with captions
    may belong to no split (e.g. the Flickr8k images outside the official
    split files).
    """

    name: str
    image_dir: Path
    captions: dict[str, list[str]]
    splits: dict[str, list[str]] = field(default_factory=lambda: {s: [] for s in SPLITS})

    def image_path(self, image_id: str) -> Path:
        """Path of an image of this dataset (KeyError for an unknown id)."""
        if image_id not in self.captions:
            raise KeyError(f"{image_id!r} is not an image of dataset {self.name!r}")
        return self.image_dir / image_id

    def split_captions(self, split: str) -> dict[str, list[str]]:
        """``{image: captions}`` for the images of one split."""
        return {img: self.captions[img] for img in self.splits[split]}

    def __repr__(self) -> str:
        sizes = ", ".join(f"{s}={len(v)}" for s, v in self.splits.items())
        n_caps = sum(len(c) for c in self.captions.values())
        return (f"CaptionDataset({self.name!r}, {len(self.captions)} images, "
                f"{n_caps} captions, {sizes}, image_dir={str(self.image_dir)!r})")


# -- shared helpers --------------------------------------------------------


def _seeded_order(names: Iterable[str], seed: int) -> list[str]:
    return sorted(sorted(names), key=lambda n: hashlib.sha256(f"{seed}:{n}".encode()).digest())


def _proportional_split(names: Iterable[str], fractions: tuple[float, float], seed: int) -> dict[str, list[str]]:
    """Seeded split into train/val/test by (train, val) fractions, test = rest.

    With 3 or more images, val and test get at least one image each.
    """
    order = _seeded_order(names, seed)
    total = len(order)
    n_train = int(total * fractions[0] + 0.5)
    n_val = int(total * fractions[1] + 0.5)
    if total >= 3:
        n_val = max(n_val, 1)
        n_train = min(n_train, total - n_val - 1)
    n_val = min(n_val, total - n_train)
    return {
        "train": sorted(order[:n_train]),
        "val": sorted(order[n_train : n_train + n_val]),
        "test": sorted(order[n_train + n_val :]),
    }


def _drop_missing_images(captions: dict[str, list[str]], image_dir: Path, dataset: str) -> None:
    """Remove (in place) the images absent from ``image_dir``; warn once."""
    if not image_dir.is_dir():
        raise FileNotFoundError(f"{dataset}: image folder not found: {image_dir}")
    on_disk = set(os.listdir(image_dir))
    missing = [img for img in captions if img not in on_disk and not (image_dir / img).is_file()]
    if not missing:
        return
    if len(missing) == len(captions):
        raise FileNotFoundError(
            f"{dataset}: none of the {len(captions)} captioned images is in {image_dir}"
        )
    n_caps = sum(len(captions[img]) for img in missing)
    warnings.warn(
        f"{dataset}: {len(missing)} captioned image(s) missing from {image_dir} "
        f"({n_caps} captions dropped), e.g. {sorted(missing)[:3]}",
        stacklevel=3,
    )
    for img in missing:
        del captions[img]


def _clean_splits(splits: dict[str, list[str]], captions: dict[str, list[str]], dataset: str) -> dict[str, list[str]]:
    """Keep only captioned images, make splits disjoint (first of train/val/test wins), sort."""
    seen: set[str] = set()
    out: dict[str, list[str]] = {}
    for split in SPLITS:
        names = list(dict.fromkeys(splits.get(split, [])))
        no_caps = [n for n in names if n not in captions]
        if no_caps:
            warnings.warn(
                f"{dataset}: {len(no_caps)} image(s) of the {split} split have no "
                f"captions and are dropped, e.g. {sorted(no_caps)[:3]}",
                stacklevel=3,
            )
        dup = [n for n in names if n in seen]
        if dup:
            warnings.warn(
                f"{dataset}: {len(dup)} image(s) of the {split} split are already in an "
                f"earlier split and are dropped from {split}, e.g. {sorted(dup)[:3]}",
                stacklevel=3,
            )
        keep = sorted(n for n in names if n in captions and n not in seen)
        seen.update(keep)
        out[split] = keep
    return out


class _RowWarnings:
    """Per-row warnings, capped, with a final summary."""

    def __init__(self, source: str):
        self.source = source
        self.count = 0

    def warn(self, line_no: int, why: str, line: str) -> None:
        self.count += 1
        if self.count <= _MAX_ROW_WARNINGS:
            warnings.warn(f"{self.source}: line {line_no}: {why}, skipped: {line[:120]!r}", stacklevel=4)

    def finish(self) -> None:
        if self.count > _MAX_ROW_WARNINGS:
            warnings.warn(
                f"{self.source}: {self.count} malformed rows skipped in total "
                f"({self.count - _MAX_ROW_WARNINGS} not shown)",
                stacklevel=4,
            )


def _read_text(path: Path) -> str:
    # utf-8-sig strips a byte order mark when there is one.
    with open(path, encoding="utf-8-sig", newline="") as f:
        return f.read()


def _read_name_list(path: Path) -> list[str]:
    return [ln.strip() for ln in _read_text(path).splitlines() if ln.strip()]


# -- Flickr8k --------------------------------------------------------------


def _find_flickr8k_files(root: Path) -> tuple[Path, Path]:
    """(caption file, dataset root) for a root folder or a caption file path."""
    if root.is_file():
        cap = root
        base = cap.parent.parent if cap.parent.name == FLICKR8K_TEXT_DIR else cap.parent
        return cap, base
    candidates = [
        root / FLICKR8K_TOKEN_FILE,
        root / FLICKR8K_TEXT_DIR / FLICKR8K_TOKEN_FILE,
        root / FLICKR8K_CSV_FILE,
        root / FLICKR8K_TEXT_DIR / FLICKR8K_CSV_FILE,
    ]
    for cap in candidates:
        if cap.is_file():
            return cap, root
    raise FileNotFoundError(
        f"flickr8k: no caption file in {root} (looked for "
        + ", ".join(str(c.relative_to(root)) for c in candidates) + ")"
    )


def _parse_flickr8k_tokens(path: Path) -> dict[str, list[str]]:
    """``IMG.jpg#N<TAB>caption`` lines."""
    captions: dict[str, list[str]] = {}
    bad = _RowWarnings(str(path))
    for line_no, line in enumerate(_read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        if "\t" in line:
            key, _, caption = line.partition("\t")
        else:
            parts = line.split(None, 1)
            key, caption = (parts + [""])[:2]
        image, sep, number = key.strip().rpartition("#")
        caption = caption.strip()
        if not sep or not image or not number.strip().isdigit():
            bad.warn(line_no, "expected 'IMAGE#N<TAB>caption'", line)
            continue
        if not caption:
            bad.warn(line_no, "empty caption", line)
            continue
        captions.setdefault(image, []).append(caption)
    bad.finish()
    return captions


def _parse_flickr8k_csv(path: Path) -> dict[str, list[str]]:
    """``image,caption`` CSV (captions may be quoted and contain commas)."""
    captions: dict[str, list[str]] = {}
    bad = _RowWarnings(str(path))
    reader = csv.reader(io.StringIO(_read_text(path)))
    first = True
    for row in reader:
        line_no = reader.line_num
        if not row or not any(f.strip() for f in row):
            continue
        if first:
            first = False
            if [f.strip().lower() for f in row[:2]] == ["image", "caption"]:
                continue
        if len(row) < 2:
            bad.warn(line_no, "expected 'image,caption'", ",".join(row))
            continue
        # An unquoted caption with commas is split into several fields.
        image, caption = row[0].strip(), ",".join(row[1:]).strip()
        if not image or not caption:
            bad.warn(line_no, "empty image name or caption", ",".join(row))
            continue
        captions.setdefault(image, []).append(caption)
    bad.finish()
    return captions


def load_flickr8k(root: str | os.PathLike, *, seed: int = 0) -> CaptionDataset:
    """Load Flickr8k from ``root``.

    Captions: ``Flickr8k.token.txt`` (in ``root`` or ``root/Flickr8k_text/``)
    or the Kaggle ``captions.txt`` CSV; ``root`` may also be the caption file
    itself.  Images: the first existing of ``Flicker8k_Dataset/``,
    ``Flickr8k_Dataset/``, ``Images/`` under the dataset root.  Splits: the
    official ``Flickr_8k.{train,dev,test}Images.txt`` next to the caption file
    when all three exist, else a seeded 75/12.5/12.5 % split.
    """
    cap_file, base = _find_flickr8k_files(Path(root))
    if cap_file.suffix.lower() == ".csv" or cap_file.name == FLICKR8K_CSV_FILE:
        captions = _parse_flickr8k_csv(cap_file)
    else:
        captions = _parse_flickr8k_tokens(cap_file)

    image_dir = next((base / d for d in FLICKR8K_IMAGE_DIRS if (base / d).is_dir()), None)
    if image_dir is None:
        raise FileNotFoundError(
            f"flickr8k: no image folder in {base} (looked for {', '.join(FLICKR8K_IMAGE_DIRS)})"
        )
    _drop_missing_images(captions, image_dir, "flickr8k")

    split_paths = {s: cap_file.parent / f for s, f in FLICKR8K_SPLIT_FILES.items()}
    present = [s for s, p in split_paths.items() if p.is_file()]
    if len(present) == len(SPLITS):
        splits = {s: _read_name_list(p) for s, p in split_paths.items()}
        log.info("flickr8k: using the official split files in %s", cap_file.parent)
    else:
        if present:
            warnings.warn(
                f"flickr8k: only {present} split file(s) found in {cap_file.parent}; "
                "using a deterministic split instead",
                stacklevel=2,
            )
        splits = _proportional_split(captions, FLICKR8K_FRACTIONS, seed)
    splits = _clean_splits(splits, captions, "flickr8k")
    return CaptionDataset("flickr8k", image_dir, captions, splits)


# -- Flickr30k -------------------------------------------------------------


def _parse_flickr30k_csv(path: Path) -> dict[str, list[str]]:
    captions: dict[str, list[str]] = {}
    bad = _RowWarnings(str(path))
    first = True
    for line_no, line in enumerate(_read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        fields = [f.strip() for f in line.split("|")]
        if first:
            first = False
            if fields and fields[0].lower() == "image_name":
                continue
        if len(fields) != 3:
            bad.warn(line_no, f"expected 3 '|'-separated fields, got {len(fields)}", line)
            continue
        image, number, comment = fields
        if not image:
            bad.warn(line_no, "empty image name", line)
            continue
        try:
            int(number)
        except ValueError:
            bad.warn(line_no, f"comment number {number!r} is not an integer", line)
            continue
        if not comment:
            bad.warn(line_no, "empty comment", line)
            continue
        captions.setdefault(image, []).append(comment)
    bad.finish()
    return captions


def _find_flickr30k_csv(path: Path) -> Path:
    if path.is_file():
        return path
    for cand in (path / FLICKR30K_CSV_FILE, path / FLICKR30K_IMAGE_DIR / FLICKR30K_CSV_FILE):
        if cand.is_file():
            return cand
    raise FileNotFoundError(f"flickr30k: no {FLICKR30K_CSV_FILE} in {path} or {path / FLICKR30K_IMAGE_DIR}")


def load_flickr30k(path: str | os.PathLike, *, seed: int = 0) -> CaptionDataset:
    """Load Flickr30k from ``results.csv`` or the folder holding it.

    Rows ``image_name| comment_number| comment``; malformed rows are warned
    about (with their line number) and skipped.  Images: ``flickr30k_images/``
    next to the CSV when it exists, else the CSV's folder.  Splits: the
    ``split`` field of a Karpathy ``dataset_flickr30k.json`` next to the CSV
    (or in its parent folder) when present ("restval" -> train), else a
    seeded 29000/1014/rest proportional split.
    """
    csv_path = _find_flickr30k_csv(Path(path))
    captions = _parse_flickr30k_csv(csv_path)
    if not captions:
        raise ValueError(f"flickr30k: no valid caption rows in {csv_path}")
    folder = csv_path.parent
    image_dir = folder / FLICKR30K_IMAGE_DIR if (folder / FLICKR30K_IMAGE_DIR).is_dir() else folder
    _drop_missing_images(captions, image_dir, "flickr30k")

    karpathy = next(
        (p for p in (folder / FLICKR30K_KARPATHY_FILE, folder.parent / FLICKR30K_KARPATHY_FILE) if p.is_file()),
        None,
    )
    if karpathy is not None:
        splits = _karpathy_splits(karpathy)
        log.info("flickr30k: using the splits of %s", karpathy)
    else:
        splits = _proportional_split(captions, FLICKR30K_FRACTIONS, seed)
    splits = _clean_splits(splits, captions, "flickr30k")
    return CaptionDataset("flickr30k", image_dir, captions, splits)


def _karpathy_splits(path: Path) -> dict[str, list[str]]:
    try:
        data = json.loads(_read_text(path))
        images = data["images"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: not a Karpathy split file ({exc})") from None
    splits: dict[str, list[str]] = {s: [] for s in SPLITS}
    for entry in images:
        split = {"restval": "train"}.get(entry.get("split"), entry.get("split"))
        name = entry.get("filename")
        if split in splits and name:
            splits[split].append(name)
    return splits


# -- COCO ------------------------------------------------------------------

_COCO_SPLIT_RE = re.compile(r"(train|val|test)(\d{4})")


def load_coco(
    annotations_json: str | os.PathLike,
    image_dir: str | os.PathLike | None = None,
    *,
    split: str | None = None,
    seed: int = 0,
) -> CaptionDataset:
    """Load a COCO captions file (e.g. ``annotations/captions_val2014.json``).

    ``image_dir`` defaults to ``<json folder>/../<split name>`` with the split
    name taken from the file name (``captions_val2014.json`` -> ``val2014``).
    Splits: a train file puts every image in "train"; a val file is halved
    (seeded) into "val" and "test".  ``split`` overrides this: "train", "val"
    or "test" puts every image in that split, "val+test" halves them.
    """
    json_path = Path(annotations_json)
    if not json_path.is_file():
        raise FileNotFoundError(f"coco: annotation file not found: {json_path}")
    m = _COCO_SPLIT_RE.search(json_path.stem)
    if image_dir is None:
        if m is None:
            raise ValueError(f"coco: cannot guess the image folder from {json_path.name}; pass image_dir")
        image_dir = json_path.parent.parent / m.group(0)
    image_dir = Path(image_dir)
    if split is None:
        if m is None:
            raise ValueError(f"coco: cannot guess the split from {json_path.name}; pass split=")
        split = "train" if m.group(1) == "train" else "val+test"
    if split not in (*SPLITS, "val+test"):
        raise ValueError(f"coco: split must be one of {[*SPLITS, 'val+test']}, got {split!r}")

    try:
        data = json.loads(_read_text(json_path))
        images = data["images"]
        annotations = data["annotations"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{json_path}: not a COCO captions file ({exc})") from None

    id_to_file: dict = {}
    for img in images:
        try:
            id_to_file[img["id"]] = img["file_name"]
        except (KeyError, TypeError):
            warnings.warn(f"{json_path}: image entry without id/file_name skipped: {img!r}"[:200], stacklevel=2)
    captions: dict[str, list[str]] = {}
    unknown = 0
    for ann in annotations:
        try:
            file_name = id_to_file.get(ann["image_id"])
            caption = ann["caption"].strip()
        except (KeyError, TypeError, AttributeError):
            unknown += 1
            continue
        if file_name is None or not caption:
            unknown += 1
            continue
        captions.setdefault(file_name, []).append(caption)
    if unknown:
        warnings.warn(
            f"{json_path}: {unknown} annotation(s) with an unknown image id, no caption "
            "or a bad format skipped",
            stacklevel=2,
        )
    if not captions:
        raise ValueError(f"coco: no captions in {json_path}")
    _drop_missing_images(captions, image_dir, "coco")

    if split == "val+test":
        order = _seeded_order(captions, seed)
        half = (len(order) + 1) // 2
        splits = {"train": [], "val": order[:half], "test": order[half:]}
    else:
        splits = {s: (list(captions) if s == split else []) for s in SPLITS}
    splits = _clean_splits(splits, captions, "coco")
    return CaptionDataset("coco", image_dir, captions, splits)


# -- dispatch --------------------------------------------------------------


def _detect_kind(path: Path) -> str:
    if path.is_file():
        name = path.name.lower()
        if name.endswith(".json"):
            return "coco"
        if name == FLICKR30K_CSV_FILE:
            return "flickr30k"
        if name in (FLICKR8K_TOKEN_FILE.lower(), FLICKR8K_CSV_FILE):
            return "flickr8k"
        raise ValueError(f"cannot tell the dataset kind of {path}; pass kind explicitly")
    if not path.is_dir():
        raise FileNotFoundError(f"dataset path not found: {path}")
    for rel in (FLICKR8K_TOKEN_FILE, f"{FLICKR8K_TEXT_DIR}/{FLICKR8K_TOKEN_FILE}",
                FLICKR8K_CSV_FILE, f"{FLICKR8K_TEXT_DIR}/{FLICKR8K_CSV_FILE}"):
        if (path / rel).is_file():
            return "flickr8k"
    if (path / FLICKR30K_CSV_FILE).is_file() or (path / FLICKR30K_IMAGE_DIR / FLICKR30K_CSV_FILE).is_file():
        return "flickr30k"
    raise ValueError(
        f"cannot tell the dataset kind of folder {path} (no Flickr8k caption file, no "
        f"{FLICKR30K_CSV_FILE}); for COCO pass the captions_*.json file"
    )


def load_dataset(kind: str, path: str | os.PathLike) -> CaptionDataset:
    """Load a dataset of ``kind`` ("flickr8k", "flickr30k", "coco" or "auto")."""
    kind = kind.strip().lower() if isinstance(kind, str) else kind
    if kind not in KINDS:
        raise ValueError(f"unknown dataset kind {kind!r}; choose one of {', '.join(KINDS)}")
    path = Path(path)
    if kind == "auto":
        kind = _detect_kind(path)
        log.info("detected dataset kind %s for %s", kind, path)
    if kind == "flickr8k":
        return load_flickr8k(path)
    if kind == "flickr30k":
        return load_flickr30k(path)
    return load_coco(path)
