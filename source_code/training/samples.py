"""Turn a CaptionDataset split into training arrays.

One sample per (image, caption): teacher-forcing inputs/targets, the captions of
the horizontally / vertically mirrored image (spatial words swapped), and,
when the dataset comes with grounding (synthetic scenes), a per-word attention
target over the feature grid: the cells covered by the object the word names.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps
from tqdm import tqdm

from ..text.vocabulary import Vocabulary, clean_caption

# Mirroring an image swaps these words in its caption.
H_SWAP = {"left": "right", "right": "left"}
V_SWAP = {"above": "below", "below": "above"}


@dataclass
class CaptionSamples:
    image_index: np.ndarray     # [M] int, row into the image array
    tokens_in: np.ndarray       # [M, T] start + words, padded
    targets: np.ndarray         # [M, T] words + end, padded
    targets_hflip: np.ndarray   # [M, T] targets of the left-right mirrored image
    targets_vflip: np.ndarray   # [M, T] targets of the top-bottom mirrored image
    attention: np.ndarray | None  # [M, T, h, w] target attention (rows sum to 1) or None
    references: dict[int, list[list[str]]]  # image index -> cleaned reference captions

    def __len__(self):
        return len(self.image_index)


def encode_pair(vocab: Vocabulary, words: list[str], length: int) -> tuple[list[int], list[int]]:
    ids = vocab.encode(words, max_len=length - 1)   # start + words (truncated) + end
    tokens_in, targets = ids[:-1], ids[1:]
    pad = [vocab.pad_id] * (length - len(tokens_in))
    return tokens_in + pad, targets + pad


def load_images(paths: list[Path], size: int, progress: bool = True) -> np.ndarray:
    """Decode, apply EXIF orientation, convert to RGB and resize (whole frame) to size x size."""
    out = np.zeros((len(paths), size, size, 3), np.uint8)
    for i, p in enumerate(tqdm(paths, desc="loading images", disable=not progress, unit="img")):
        with Image.open(p) as im:
            out[i] = np.asarray(ImageOps.exif_transpose(im).convert("RGB")
                                .resize((size, size), Image.BILINEAR))
    return out


def first_training_images(dataset, n_images: int, size: int, progress: bool = True
                          ) -> tuple[list[np.ndarray], list[list[list[str]]]]:
    """The first ``n_images`` of the train split, resized, with their cleaned captions
    (what a concept bank is built from)."""
    ids = dataset.splits["train"][:n_images]
    images = list(load_images([dataset.image_path(i) for i in ids], size, progress))
    return images, [[clean_caption(c) for c in dataset.captions[i]] for i in ids]


def load_grounding(path) -> dict[str, list[dict]]:
    """scenes.jsonl (written with synthetic datasets): file name -> objects with bbox."""
    out = {}
    with open(path) as f:
        for line in f:
            if line.strip():
                rec = json.loads(line)
                out[rec["file"]] = rec
    return out


def _bbox_grid(bbox, image_size: int, grid: tuple[int, int]) -> np.ndarray:
    """Fraction of each grid cell covered by an (x0, y0, x1, y1) pixel box, normalised to sum 1."""
    gh, gw = grid
    x0, y0, x1, y1 = (float(v) / image_size for v in bbox)
    ys = np.linspace(0, 1, gh + 1)
    xs = np.linspace(0, 1, gw + 1)
    cover_y = np.clip(np.minimum(ys[1:], y1) - np.maximum(ys[:-1], y0), 0, None)
    cover_x = np.clip(np.minimum(xs[1:], x1) - np.maximum(xs[:-1], x0), 0, None)
    cell = np.outer(cover_y, cover_x)
    return cell / max(cell.sum(), 1e-9)


def _word_objects(words: list[str], objects: list[dict]) -> list[int | None]:
    """For a synthetic caption, which object each word names (None for "a", relations)."""
    from ..data.synthetic import words_to_objects

    caption = " ".join(words)
    found = words_to_objects(caption, [(o["color"], o["shape"]) for o in objects])
    if found is None:
        raise ValueError(f"not a caption of the shapes world: {caption!r}")
    return found


def _grounded_words(words: list[str], record: dict) -> list[int | None]:
    """Which object each word names: recorded by the objects world for its own caption,
    worked out from the shapes grammar otherwise."""
    if "word_objects" in record and " ".join(words) == record["caption"]:
        return record["word_objects"]
    return _word_objects(words, record["objects"])


def build_samples(image_ids: list[str], captions: dict[str, list[str]], vocab: Vocabulary,
                  length: int, grounding: dict | None = None, grid: tuple[int, int] | None = None,
                  image_size: int | None = None) -> CaptionSamples:
    """``length`` = max words + 1 (the teacher-forcing sequence length)."""
    rows = {k: [] for k in ("idx", "tin", "tgt", "th", "tv", "att")}
    references = {}
    for i, image_id in enumerate(image_ids):
        refs = [clean_caption(c) for c in captions[image_id]]
        references[i] = refs
        record = grounding[image_id] if grounding else None
        objects = record["objects"] if record else None
        for words in refs:
            if not words:
                continue
            tin, tgt = encode_pair(vocab, words, length)
            rows["idx"].append(i)
            rows["tin"].append(tin)
            rows["tgt"].append(tgt)
            rows["th"].append(encode_pair(vocab, [H_SWAP.get(w, w) for w in words], length)[1])
            rows["tv"].append(encode_pair(vocab, [V_SWAP.get(w, w) for w in words], length)[1])
            if objects is not None:
                att = np.zeros((length,) + tuple(grid), np.float32)
                # targets[t] is words[t]: ground step t on the object words[t] names
                for t, obj in enumerate(_grounded_words(words, record)[:length]):
                    if obj is not None:
                        att[t] = _bbox_grid(objects[obj]["bbox"], image_size, grid)
                rows["att"].append(att)
    arr = lambda k: np.asarray(rows[k], np.int32)
    return CaptionSamples(arr("idx"), arr("tin"), arr("tgt"), arr("th"), arr("tv"),
                          np.stack(rows["att"]) if rows["att"] else None, references)
