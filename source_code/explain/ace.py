"""ACE for captions: concepts found offline, matched and scored per request.

Adapted from Ghorbani et al. 2019, "Towards Automatic Concept-based
Explanations". What follows the paper:
* multi-resolution SLIC superpixels (15, 50 and 80 segments) of many images;
* segment embeddings in the backbone's bottleneck (the decoder's input layer,
  ``top_activation``);
* k-means concepts, then ACE's filtering: keep the segments nearest each
  centre, drop clusters that are too small or come from too few images;
* a concept activation vector (CAV) per concept, trained against random
  counterparts several times, and TCAV scores (fraction of examples whose
  directional derivative along the CAV is positive) for every vocabulary word,
  with a two-sided t-test against random-vs-random CAVs.
Where and why it departs:
* targets are words: the TCAV derivative is that of s_t = log p(w_t | x, w_<t)
  for every occurrence of the word in a reference caption, not of a class logit;
* a segment's embedding is its region of the whole image's feature map
  (coverage-weighted mean of the cells it covers) rather than the backbone run
  on the segment cut out and resized. One backbone pass serves all segments of
  an image, which is what makes request-time ACE affordable with a large
  backbone, and the bank and the request use the very same embedding;
* at request time, segment importance for a word is the first-order effect of
  removing the segment's features: sum over its cells of coverage x
  (ds_t/dA . A), from the gradients Grad-CAM already computed. The paper's
  occlusion-free TCAV score stays the concept-level importance (from the bank).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from skimage.segmentation import slic

from ..files import atomic_path, atomic_write_text

RESOLUTIONS = (15, 50, 80)
REQUEST_RESOLUTION = 50      # the segmentation shown and ranked per request
SLIC_COMPACTNESS = 20.0
BANK_DIR = "concepts"
MATCH_MIN_COSINE = 0.5       # a segment farther than this from every concept is "unmatched"
# Request-time SLIC runs on the input scaled down to at most this side (the labels
# then span the image at that size): at 480 px it took 165 ms, at 240 px 26 ms,
# for segments of the same count.
REQUEST_SLIC_MAX_SIDE = 256


def segment(image: np.ndarray, n_segments: int) -> np.ndarray:
    """SLIC labels [H, W] (0..n-1) of an RGB uint8 image."""
    labels = slic(image, n_segments=n_segments, compactness=SLIC_COMPACTNESS, start_label=0,
                  channel_axis=-1)
    return labels


def coverage(labels: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """[n_segments, gh, gw]: fraction of each feature cell covered by each segment."""
    gh, gw = grid
    h, w = labels.shape
    rows = (np.arange(h) * gh // h)[:, None]
    cols = (np.arange(w) * gw // w)[None, :]
    cell = (rows * gw + cols).ravel()
    n = int(labels.max()) + 1
    counts = np.zeros((n, gh * gw), np.float32)
    np.add.at(counts, (labels.ravel(), cell), 1.0)
    per_cell = np.bincount(cell, minlength=gh * gw).astype(np.float32)
    return (counts / np.maximum(per_cell, 1)).reshape(n, gh, gw)


def region_embeddings(feature_map: np.ndarray, cover: np.ndarray) -> np.ndarray:
    """feature_map [gh, gw, C], cover [n, gh, gw] -> [n, C] coverage-weighted means."""
    weights = cover.reshape(len(cover), -1)
    feats = feature_map.reshape(-1, feature_map.shape[-1])
    return (weights @ feats) / np.maximum(weights.sum(1, keepdims=True), 1e-6)


def segment_importance(feature_map: np.ndarray, gradients: np.ndarray, cover: np.ndarray) -> np.ndarray:
    """gradients [T, gh, gw, C] (ds_t/dA) -> [T, n]: first-order drop of s_t if each
    segment's features were removed (set to zero)."""
    contrib = np.einsum("thwc,hwc->thw", gradients, feature_map)       # grad x activation per cell
    return np.einsum("thw,nhw->tn", contrib, cover)


@dataclass
class ConceptBank:
    names: list[str]
    centroids: np.ndarray      # [K, C], unit length
    cavs: np.ndarray           # [K, C], unit length (mean CAV)
    word_scores: dict          # word -> {concept name -> {"tcav", "p_value", "significant"}}
    info: dict                 # how the bank was built
    patches: dict              # concept name -> [png file names]
    root: Path | None = None

    def match(self, embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Nearest concept by cosine for each embedding: (index or -1, cosine)."""
        e = embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-8)
        sims = e @ self.centroids.T
        best = sims.argmax(1)
        cos = sims[np.arange(len(e)), best]
        return np.where(cos >= MATCH_MIN_COSINE, best, -1), cos

    def save(self, bundle_dir) -> Path:
        root = Path(bundle_dir) / BANK_DIR
        root.mkdir(parents=True, exist_ok=True)
        with atomic_path(root / "bank.npz") as tmp:
            np.savez(tmp, centroids=self.centroids.astype(np.float32),
                     cavs=self.cavs.astype(np.float32))
        meta = {"names": self.names, "word_scores": self.word_scores, "info": self.info,
                "patches": self.patches}
        atomic_write_text(root / "bank.json", json.dumps(meta, indent=1))
        return root

    @classmethod
    def load(cls, bundle_dir) -> "ConceptBank | None":
        root = Path(bundle_dir) / BANK_DIR
        if not (root / "bank.json").is_file():
            return None
        meta = json.loads((root / "bank.json").read_text())
        with np.load(root / "bank.npz", allow_pickle=False) as z:  # never unpickle a bundle
            centroids, cavs = z["centroids"], z["cavs"]
        for names in meta.get("patches", {}).values():
            for name in names:       # example patches are served: never a path out of patches/
                if not isinstance(name, str) or Path(name).name != name or name in ("", ".", ".."):
                    from ..model.captioner import BundleError
                    raise BundleError(f"concept bank {root} names a patch outside its "
                                      f"patches folder: {name!r}")
        return cls(meta["names"], centroids, cavs, meta["word_scores"], meta["info"],
                   meta.get("patches", {}), root)

    def patch_paths(self, name: str) -> list[Path]:
        return [self.root / "patches" / p for p in self.patches.get(name, [])] if self.root else []

    def patch_url(self, path: Path) -> str:
        """A patch as a PNG data URL, decoded and re-encoded once (never the file's own
        bytes: what reaches the page is always a clean PNG), then kept."""
        cache = self.__dict__.setdefault("_patch_urls", {})
        if path not in cache:
            from PIL import Image

            from .render import data_url
            with Image.open(path) as im:
                cache[path] = data_url(np.asarray(im.convert("RGB")))
        return cache[path]


def explain_with_concepts(ctx) -> dict:
    """Request-time ACE for the caption and each word (see the module docstring), on the
    shared explanation context (methods.Context)."""
    from .render import display_frame

    captioner, target = ctx.captioner, ctx.target
    view = np.asarray(ctx.pixels[0]).astype(np.uint8)              # the model's input view
    labels = segment(display_frame(view, REQUEST_SLIC_MAX_SIDE), REQUEST_RESOLUTION)
    cover = coverage(labels, captioner.grid)
    fmap = np.asarray(ctx.feature_map)[0]
    imp_words = segment_importance(fmap, ctx.teacher.gradients.numpy(), cover)   # [T, n]
    imp_caption = imp_words.sum(0)
    bank = ctx.explainer.concept_bank
    if bank is not None:
        concept_idx, cosine = bank.match(region_embeddings(fmap, cover))
    else:
        concept_idx, cosine = np.full(len(cover), -1), np.zeros(len(cover))

    def describe(importance, word=None):
        order = np.argsort(-importance)
        top = []
        for s in order[:5]:
            k = int(concept_idx[s])
            entry = {"segment": int(s), "importance": round(float(importance[s]), 4),
                     "concept": bank.names[k] if k >= 0 else None,
                     "similarity": round(float(cosine[s]), 3)}
            if k >= 0 and word is not None:
                entry["tcav"] = bank.word_scores.get(word, {}).get(bank.names[k])
            top.append(entry)
        # each segment painted with its positive importance, on the model's input view
        return ctx.map(np.maximum(importance, 0)[labels], segments=top)

    result = {"caption": describe(imp_caption),
              "words": [describe(imp_words[t], w) for t, w in enumerate(target.words)],
              "n_segments": int(len(cover)), "resolution": REQUEST_RESOLUTION}
    if bank is not None:
        used = sorted({int(k) for k in concept_idx if k >= 0})
        concepts = []
        for k in used:
            name = bank.names[k]
            mask = concept_idx == k
            concepts.append({
                "name": name,
                "importance": round(float(imp_caption[mask].sum()), 4),
                "segments": int(mask.sum()),
                "word_tcav": {w: bank.word_scores.get(w, {}).get(name) for w in target.words},
                "patches": [bank.patch_url(p) for p in bank.patch_paths(name)[:4]],
            })
        result["concepts"] = sorted(concepts, key=lambda c: -c["importance"])
    else:
        result["concepts"] = []
        result["note"] = "this bundle has no concept bank: segments are scored, not named"
    return result
