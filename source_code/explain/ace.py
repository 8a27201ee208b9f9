"""ACE for captions: concepts found offline (``concepts.py``), named, and scored per request.

Ghorbani et al. 2019, "Towards Automatic Concept-based Explanations", with TCAV
(Kim et al. 2018). What follows the paper (built by ``concepts.build_concept_bank``):
* multi-resolution SLIC superpixels (15, 50 and 80 segments) of many images; segments
  under 0.1 % of the image, or overlapping an already kept one (Jaccard > 0.5), are
  dropped, as in the paper's code;
* each segment's patch (its bounding box, the outside of the segment filled with ACE's
  grey 117) resized to the input size and embedded through the backbone at the
  bottleneck (``top_activation``, spatially pooled); k-means on these embeddings;
* ACE's filtering: a concept is the segments nearest its centre (at most 40), and a
  cluster is dropped when it is small or not spread over enough images (the paper's
  three conditions on images per segment and share of images covered);
* per concept, CAVs (logistic regression) against several random sets of segments, and
  random-vs-random CAVs; per vocabulary word, TCAV: the fraction of the word's examples
  whose directional derivative (sum_hw ds_t/dA) . v_C is positive, with a two-sided
  Welch t-test of the concept's TCAV scores against the random CAVs' and a Bonferroni
  correction over every (concept, word) pair the bank tests.
Where and why it departs:
* targets are words: s_t = log p(w_t | x, w_<t) by teacher forcing, for every occurrence
  of the word in a reference caption, not a class logit;
* a patch is padded to a square with the same grey before resizing (the paper stretches
  it), so shapes keep their aspect;
* discovery: the paper discovers the concepts of one class from that class's images.
  ``discovery="word"`` does the same per caption word (k-means on the segments of the
  images whose captions use it; one backbone pass per segment still serves every word):
  the objects world's default, since over its whole world object segments did not
  gather by category. With ``relevant_per_word`` a word's run clusters only the few
  segments of each scene that raise the word's score most (``segment_importance`` of a
  teacher-forced pass): half of them lie on objects against a quarter of all segments,
  and only they pay a backbone pass, so a build holds 2.5x the scenes (the objects
  world's default: 0.85 of validation object words named, 3,000 scenes, against 0.66
  for every segment of 1,200). ``discovery="world"`` clusters a whole world at once (the shapes
  world's default); its filter's "share of images covered" is then taken per word: a
  cluster counts as populated when it covers a quarter (half) of the images of some
  word, not of all images (a "red" concept can only be in the images with something
  red). On the shapes world the paper's own share kept 7 of 25 clusters (an object
  cluster covers 20-35 % of all images), this one 20;
* CAVs are trained on the members' region means (the cells of their own image's feature
  map they cover: what the decoder reads there), not on the patch embeddings that
  clustered them. The directional derivative moves the feature map the decoder reads;
  a patch resized to the input size is the concept at another scale, and its CAV
  pointed mostly along "less activation overall", which every word's gradient shares
  (cosine -0.48 with the mean embedding): one background concept then had TCAV 0.97-0.99
  for every word, and the right concept topped only 31 % of colour and shape words,
  against 84 % with region CAVs (shapes bundle, 60 held-out scenes, in development);
* names: in a synthetic world the generator knows what lies under every segment, so a
  concept is named from its members' ground truth (the most specific of colour + shape,
  colour, shape that 90 % of them share; category; "background"), with its purity; from
  real data, after the words with significant positive TCAV; ``concepts.json`` renames;
* at request time one backbone pass must serve every segment (a pass per patch costs
  6-30 ms on this CPU, times 80 segments), so the frame's segments are embedded as region
  means of the frame's feature map and matched to concepts by a linear classifier (LDA)
  the bank learned from its own segments, each labelled with the cluster its patch fell
  in; a segment whose cluster the filter dropped is unmatched. On 30 held-out shapes
  scenes (in development) 86 % of the objects' area matched a concept whose name agrees
  with the ground truth (79 % with nearest centroids);
* per word, the concepts present in the frame carry the paper's conceptual sensitivity
  S_C,t(x) = (sum_hw ds_t/dA) . v_C and are ranked by their evidence where they lie:
  sum_hw m_C(h, w) (ds_t/dA_hw . v_C) / sum_hw m_C(h, w), with m_C the share of cell
  (h, w) covered by the concept's segments (the rate at which s_t rises if the concept's
  direction were strengthened where it is, per unit of its area). S_C,t(x) moves every
  cell alike, so it cannot tell which concept in this frame the word reads; ranked by it,
  a "red" concept (red segments of mixed shapes) came first for "circle". On validation
  shapes scenes (600, seeds 90,000,300..) the evidence ranking named 0.906 of colour and
  shape words, S_C,t(x) 0.889, the evidence summed over the area (large concepts first)
  0.881. The segments' evidence paints the word's map;
* in a bank discovered per word, the segments that raise a word (positive gradient x
  activation pooled over the segment) are also matched among the clusters found in that
  word's own images (as ACE explains a class with the concepts discovered for it, and
  as discovery clustered each word's raising segments), so such a segment stands, for
  that word, for its best concept overall and its best among the word's own; and the
  evidence is shrunk as if one cell of zero evidence were added
  (``EVIDENCE_PRIOR_CELLS``), so a concept on a sliver of one cell cannot top the ranking
  on that cell's gradient alone. On 300 validation objects scenes (358 object words) the
  shipped bank's top significant concept named 0.777 of the words with global matching
  alone, 0.813 with the prior, 0.835 with both (bench/ace_concepts.py
  --ranking-variants); the shapes bank (discovered over the whole world) keeps its
  ranking, the prior lowering it there (0.903 to 0.896);
* ``embedding="region"`` builds a bank by clustering region means instead of patches (no
  backbone pass per segment): a fast option, measured against the paper's in the README;
* ``segmentation="felzenszwalb"`` (the reference code's other superpixels, scales 1200,
  500 and 250): on objects scenes its segments are whole objects more often (a third of
  its segments lie on objects against an eighth of SLIC's; 94 % of objects have a
  segment overlapping them by IoU > 0.5). Over a whole world it named no more object
  words (2 % against 0 %) and far fewer shapes words (32 % against 84 %), so SLIC stays
  the shapes world's; discovered per word at its coarsest scale it is the objects
  world's (``concepts.WORLD_BANKS``: 0.47 of validation object words named against
  SLIC's coarsest level's 0.30, 600 scenes). Requests segment at its finest scale, 250,
  whatever the bank's levels (at 1200 they named fewer validation words, 0.42; at 500
  as many, with a lower bound).
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from skimage.segmentation import felzenszwalb, slic

from ..files import atomic_path, write_json
from .maps import normalize

# The segmentations of ACE's reference code with its levels: SLIC's numbers of segments,
# Felzenszwalb's scales (larger: fewer, larger segments; sigma 0.8, at least 20 pixels).
SEGMENTATIONS = {"slic": (15, 50, 80), "felzenszwalb": (1200, 500, 250)}
# The segmentation matched to concepts per request: SLIC's segments on the (at most 128
# px) view, finer than discovery's finest: on shapes validation scenes (seeds 90,000,000..,
# 400 colour and shape words) 160 segments named 0.8975 of the words, 80 named 0.8825.
REQUEST_RESOLUTION = 160
# ... per segmentation: its finest level of discovery, on the model's view scaled to
# at most REQUEST_SLIC_MAX_SIDE (SLIC) or on the view itself (Felzenszwalb's scale and
# minimum size are in pixels, so its segments keep the size they had in discovery).
REQUEST_LEVELS = {"slic": REQUEST_RESOLUTION, "felzenszwalb": SEGMENTATIONS["felzenszwalb"][-1]}
SLIC_COMPACTNESS = 20.0
FELZENSZWALB_SIGMA, FELZENSZWALB_MIN_SIZE = 0.8, 20
BANK_DIR = "concepts"
RENAMES_FILE = "concepts.json"   # a person's names for concepts, read at load
GREY = 117                   # ACE fills the outside of a segment with this grey
MIN_SEGMENT_FRACTION = 0.001     # the paper's code drops smaller segments
DEDUP_JACCARD = 0.5              # ... and a segment this close to one already kept
# Request-time SLIC runs on the model's view scaled down to at most this side: the
# segments are matched on the feature grid (10 x 10 or 14 x 14 cells), so finer
# boundaries change little, and SLIC's cost grows with the pixels.
REQUEST_SLIC_MAX_SIDE = 128
# Sides of the JSON's maps: a word's map (painted by segments) and a concept's location
# (repeated in every word's list). At 64 and 24 an answer for a 9-word caption with 9
# concepts in the frame weighed 1 MB; the feature grid is 10 x 10 or 14 x 14.
WORD_MAP_SIDE = 32
CONCEPT_MAP_SIDE = 16
# A concept's evidence for a word is its mean ds_t/dA . v_C over the cells its segments
# cover, shrunk as if this many cells of zero evidence were added: a concept standing on a
# sliver of one cell cannot top the ranking on that cell's gradient alone. Chosen per
# discovery on validation scenes (300 each, seeds 90,000,000..; bench/ace_concepts.py
# --ranking-variants): on the objects bank (per word, 358 object words) 0 named 0.802 of
# the words, 0.5 0.830, 1 0.835, 3 0.832; on the shapes bank (whole world, 1,196 colour
# and shape words) 0 named 0.903, 0.5 0.9005, 1 0.896.
EVIDENCE_PRIOR_CELLS = {"world": 0.0, "word": 1.0}
# In a bank discovered per word, a word's own concepts are matched only on the segments
# that raise it (positive gradient x activation). Matched on every segment (as many
# validation words named, 0.849 against 0.835), they forced the whole frame into the
# word's own concepts: the summed areas of a word's concepts rose from 0.92 of the frame
# to 1.53 (1.10 on raising segments).
OWN_MATCH_RAISING_ONLY = True
BANK_SCHEMA = 2
ID_PATTERN = re.compile(r"^c\d{2,4}$")
# Words too common to name a concept after (they follow every image), nor to sum up
# what a concept means for a whole caption.
FUNCTION_WORDS = {"a", "an", "the", "of", "in", "on", "at", "with", "and", "is", "are", "to",
                  "its", "his", "her", "their", "while", "for", "by", "from", "into", "up",
                  "left", "right", "above", "below", "small", "large"}


# -- segments and their embeddings ---------------------------------------------------------
def _known_segmentation(method: str) -> str:
    if method not in SEGMENTATIONS:
        raise ValueError(f"unknown segmentation {method!r}: one of {', '.join(SEGMENTATIONS)}")
    return method


def segmentation_levels(method: str, levels=None) -> tuple:
    """``levels`` (coarse first), or by default the reference code's for ``method``."""
    return tuple(levels or SEGMENTATIONS[_known_segmentation(method)])


def segment(image: np.ndarray, level: int, method: str = "slic") -> np.ndarray:
    """Segment labels [H, W] (0..n-1) of an RGB uint8 image: SLIC with about ``level``
    segments, or Felzenszwalb's graph segmentation at scale ``level``."""
    if method == "slic":
        return slic(image, n_segments=level, compactness=SLIC_COMPACTNESS, start_label=0,
                    channel_axis=-1)
    _known_segmentation(method)
    return felzenszwalb(image, scale=level, sigma=FELZENSZWALB_SIGMA,
                        min_size=FELZENSZWALB_MIN_SIZE, channel_axis=-1)


def coverage(labels: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """[n_segments, gh, gw]: fraction of each feature cell covered by each segment."""
    gh, gw = grid
    h, w = labels.shape
    rows = (np.arange(h) * gh // h)[:, None]
    cols = (np.arange(w) * gw // w)[None, :]
    cell = (rows * gw + cols).ravel()
    n = int(labels.max()) + 1
    counts = np.bincount(labels.ravel().astype(np.int64) * (gh * gw) + cell,
                         minlength=n * gh * gw).reshape(n, gh * gw).astype(np.float32)
    per_cell = np.bincount(cell, minlength=gh * gw).astype(np.float32)
    return (counts / np.maximum(per_cell, 1)).reshape(n, gh, gw)


def region_embeddings(feature_map: np.ndarray, cover: np.ndarray) -> np.ndarray:
    """feature_map [gh, gw, C], cover [n, gh, gw] -> [n, C] coverage-weighted means."""
    weights = cover.reshape(len(cover), -1)
    feats = feature_map.reshape(-1, feature_map.shape[-1])
    return (weights @ feats) / np.maximum(weights.sum(1, keepdims=True), 1e-6)


def cell_contributions(feature_map: np.ndarray, gradients: np.ndarray) -> np.ndarray:
    """gradients [T, gh, gw, C] (ds_t/dA) -> [T, gh, gw]: grad x activation per cell."""
    return np.einsum("thwc,hwc->thw", gradients, feature_map)


def segment_importance(feature_map: np.ndarray, gradients: np.ndarray, cover: np.ndarray) -> np.ndarray:
    """gradients [T, gh, gw, C] (ds_t/dA) -> [T, n]: first-order drop of s_t if each
    segment's features were removed (set to zero). ACE's fallback without a bank."""
    return np.einsum("thw,nhw->tn", cell_contributions(feature_map, gradients), cover)


def ace_patch(image: np.ndarray, mask: np.ndarray, size: int) -> np.ndarray:
    """The paper's patch of a segment: its bounding box with the outside of the segment
    grey, padded to a square with the same grey, resized to size x size (uint8)."""
    from PIL import Image
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    crop = np.where(mask[..., None], image, np.uint8(GREY))[rows[0]: rows[-1] + 1,
                                                            cols[0]: cols[-1] + 1]
    h, w = crop.shape[:2]
    side = max(h, w)
    square = np.full((side, side, 3), GREY, np.uint8)
    square[(side - h) // 2: (side - h) // 2 + h, (side - w) // 2: (side - w) // 2 + w] = crop
    return np.asarray(Image.fromarray(square).resize((size, size), Image.BICUBIC))


def _unit(x):
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-8)


# -- the bank ------------------------------------------------------------------------------

def lowers_word(score: dict | None) -> bool:
    """A significant TCAV score below one half: the concept makes the word less likely
    (the two-sided test flags both directions)."""
    return bool(score and score["significant"] and score["tcav"] < 0.5)


@dataclass
class ConceptBank:
    """A bundle's concepts. Arrays are indexed by concept (K kept concepts) except the
    matcher's, which covers every k-means cluster (M >= K; ``cluster_concept`` maps a
    cluster to its concept index or -1 when the filter dropped it)."""
    ids: list[str]                 # stable ids "c01".. (file names, renames, URLs)
    names: list[str]               # what a person reads ("" for an unnamed concept)
    named_by: list[str]            # "ground truth", "tcav", "user" or "" (unnamed)
    purity: list                   # fraction of members agreeing with the name (None: unknown)
    cavs: np.ndarray               # [K, C] unit: each concept's mean CAV
    matcher_w: np.ndarray          # [M, C] the matcher: a linear classifier of unit
    matcher_b: np.ndarray          # [M]     region-mean embeddings into the M clusters
    cluster_concept: np.ndarray    # [M] int
    word_scores: dict              # word -> {concept id -> {"tcav", "p_value", "significant"}}
    info: dict                     # how the bank was built
    patches: dict = field(default_factory=dict)   # concept id -> [png file names]
    details: dict = field(default_factory=dict)   # concept id -> build figures (purities, sizes)
    root: Path | None = None
    # Where example patches are served: None (the CLI) puts small PNG data URLs in the
    # answer; the web layer sets a URL template with the fields key (the bank's
    # fingerprint), concept (its id) and n, so an answer carries short URLs instead.
    patch_route: str | None = None

    def __post_init__(self):
        self._index = {cid: k for k, cid in enumerate(self.ids)}
        self._png_cache = {}

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def key(self) -> str:
        """A fingerprint of the bank's contents (in patch URLs, so caches never mix banks)."""
        if "_key" not in self.__dict__:
            blob = json.dumps([self.ids, self.names, self.info.get("built")], sort_keys=True)
            self.__dict__["_key"] = hashlib.sha256(blob.encode()).hexdigest()[:12]
        return self.__dict__["_key"]

    def label(self, k: int) -> str:
        """The name shown for concept k (an unnamed concept says so)."""
        return self.names[k] or f"unnamed concept {self.ids[k]}"

    def match(self, region_emb: np.ndarray, clusters: np.ndarray | None = None
              ) -> tuple[np.ndarray, np.ndarray]:
        """Each region-mean embedding -> (concept index or -1 when its cluster was dropped,
        the matcher's probability of that cluster), among every cluster or only among
        ``clusters`` (indices)."""
        if clusters is None:
            clusters = np.arange(len(self.matcher_w))
        if len(clusters) == 0:
            return np.full(len(region_emb), -1), np.zeros(len(region_emb))
        scores = (_unit(np.asarray(region_emb, np.float32)) @ self.matcher_w[clusters].T
                  + self.matcher_b[clusters])
        best = scores.argmax(1)
        top = scores[np.arange(len(scores)), best]
        prob = 1.0 / np.exp(scores - top[:, None]).sum(1)
        return self.cluster_concept[clusters[best]], prob

    def clusters_of_word(self, word: str) -> np.ndarray | None:
        """The clusters discovered in the images of ``word`` (a bank discovered per word),
        or None (a bank discovered over the whole world, or a word without a run)."""
        words = self.info.get("cluster_words")
        if not words or len(words) != len(self.matcher_w):
            return None
        own = np.flatnonzero(np.asarray(words, dtype=object) == word)
        return own if len(own) else None

    def word_score(self, word: str, k: int) -> dict | None:
        return self.word_scores.get(word, {}).get(self.ids[k])

    # -- files ---------------------------------------------------------------------
    def save(self, bundle_dir) -> Path:
        root = Path(bundle_dir) / BANK_DIR
        root.mkdir(parents=True, exist_ok=True)
        with atomic_path(root / "bank.npz") as tmp:
            np.savez(tmp, cavs=self.cavs.astype(np.float32),
                     matcher_w=self.matcher_w.astype(np.float32),
                     matcher_b=self.matcher_b.astype(np.float32),
                     cluster_concept=self.cluster_concept.astype(np.int32))
        meta = {"schema": BANK_SCHEMA, "concepts": [
                    {"id": cid, "name": name, "named_by": by, "purity": pur,
                     "patches": self.patches.get(cid, []), **self.details.get(cid, {})}
                    for cid, name, by, pur in zip(self.ids, self.names, self.named_by, self.purity)],
                "word_scores": self.word_scores, "info": self.info}
        write_json(root / "bank.json", meta)
        return root

    @classmethod
    def load(cls, bundle_dir) -> "ConceptBank | None":
        """The bundle's bank (None without one). Only JSON and a pickle-free npz are read;
        ``concepts.json`` ({id: name}) renames concepts."""
        from ..model.captioner import BundleError
        root = Path(bundle_dir) / BANK_DIR
        if not (root / "bank.json").is_file():
            return None
        meta = json.loads((root / "bank.json").read_text())
        concepts = meta.get("concepts", []) if isinstance(meta.get("concepts"), list) else []
        named = [p for c in concepts for p in c.get("patches", [])]
        named += [p for ps in (meta.get("patches") or {}).values() for p in ps]   # older banks
        for name in named:            # patches are served: never a path out of patches/
            if not isinstance(name, str) or Path(name).name != name or name in ("", ".", ".."):
                raise BundleError(f"concept bank {root} names a patch outside its "
                                  f"patches folder: {name!r}")
        if meta.get("schema") != BANK_SCHEMA:
            raise BundleError(f"concept bank {root} is from an older version of the program: "
                              "rebuild it with `python -m source_code build-concepts`")
        try:
            with np.load(root / "bank.npz", allow_pickle=False) as z:  # never unpickle a bundle
                arrays = {k: z[k] for k in ("cavs", "matcher_w", "matcher_b", "cluster_concept")}
        except (KeyError, ValueError, OSError) as exc:
            raise BundleError(f"concept bank {root}: bank.npz is unreadable ({exc})") from None
        k, m = len(concepts), len(arrays["cluster_concept"])
        if (arrays["cavs"].shape[0] != k or arrays["matcher_w"].shape[0] != m
                or arrays["matcher_b"].shape != (m,) or arrays["cluster_concept"].max(initial=-1) >= k
                or arrays["cavs"].shape[1:] != arrays["matcher_w"].shape[1:]):
            raise BundleError(f"concept bank {root}: bank.npz does not match bank.json")
        for c in concepts:
            if not ID_PATTERN.match(str(c.get("id"))):
                raise BundleError(f"concept bank {root} has a bad concept id {c.get('id')!r}")
        skip = {"id", "name", "named_by", "purity", "patches"}
        bank = cls([c["id"] for c in concepts], [c.get("name") or "" for c in concepts],
                   [c.get("named_by") or "" for c in concepts], [c.get("purity") for c in concepts],
                   arrays["cavs"], arrays["matcher_w"], arrays["matcher_b"],
                   arrays["cluster_concept"],
                   meta["word_scores"], meta["info"],
                   {c["id"]: list(c.get("patches", [])) for c in concepts},
                   {c["id"]: {k: v for k, v in c.items() if k not in skip} for c in concepts}, root)
        bank.apply_renames(root / RENAMES_FILE)
        return bank

    def apply_renames(self, path: Path) -> None:
        """``concepts.json``: {"c07": "cup handle", ...} (or {"c07": {"name": ...}})."""
        from ..model.captioner import BundleError
        if not path.is_file():
            return
        try:
            renames = json.loads(path.read_text())
        except ValueError as exc:
            raise BundleError(f"{path} is not valid JSON: {exc}") from None
        if not isinstance(renames, dict):
            raise BundleError(f"{path} must map concept ids to names")
        for cid, value in renames.items():
            name = value.get("name") if isinstance(value, dict) else value
            if cid in self._index and isinstance(name, str) and name.strip():
                k = self._index[cid]
                self.names[k], self.named_by[k] = name.strip()[:80], "user"

    # -- example patches -------------------------------------------------------------
    def patch_png(self, concept_id: str, n: int) -> bytes | None:
        """Example patch n of a concept as PNG bytes, decoded and re-encoded once (never
        the file's own bytes), or None."""
        files = self.patches.get(concept_id, [])
        if self.root is None or not 0 <= n < len(files):
            return None
        if (concept_id, n) not in self._png_cache:
            from PIL import Image

            from .render import png_bytes
            with Image.open(self.root / "patches" / files[n]) as im:
                self._png_cache[(concept_id, n)] = png_bytes(np.asarray(im.convert("RGB")))
        return self._png_cache[(concept_id, n)]

    def patch_urls(self, k: int, limit: int = 4) -> list[str]:
        cid = self.ids[k]
        count = min(limit, len(self.patches.get(cid, [])))
        if self.patch_route:
            return [self.patch_route.format(key=self.key, concept=cid, n=n) for n in range(count)]
        import base64
        return ["data:image/png;base64," + base64.b64encode(self.patch_png(cid, n)).decode("ascii")
                for n in range(count) if self.patch_png(cid, n)]


# -- request time --------------------------------------------------------------------------
def _round(x, digits: int = 4):
    return None if x is None else round(float(x), digits)


def _shrink(m: np.ndarray, side: int) -> np.ndarray:
    """A map averaged down (area mean) to at most side x side values."""
    from PIL import Image
    h, w = m.shape
    if max(h, w) <= side:
        return m.astype(np.float32)
    scale = side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(m.astype(np.float32), mode="F").resize(size, Image.BOX))


def _location_grid(mask: np.ndarray) -> list:
    """Where a concept lies: the share of each cell of a CONCEPT_MAP_SIDE grid it covers."""
    return np.round(normalize(_shrink(mask.astype(np.float32), CONCEPT_MAP_SIDE)), 2).tolist()


def _sig(x, digits: int = 4):
    """x to ``digits`` significant digits (gradients of a confident model are ~1e-4)."""
    return float(f"{float(x):.{digits}g}")


def request_segments(view: np.ndarray, method: str = "slic") -> np.ndarray:
    """The frame's segments at request time, by the bank's segmentation (REQUEST_LEVELS)."""
    from .render import display_frame
    if method == "slic":     # SLIC's cost grows with the pixels; its level is a count
        view = display_frame(view, REQUEST_SLIC_MAX_SIDE)
    return segment(view, REQUEST_LEVELS[method], method)


def bank_segmentation(bank) -> str:
    """The segmentation a bank was discovered with (banks before the choice: SLIC)."""
    return (bank.info.get("segmentation") if bank is not None else None) or "slic"


def locate_concepts(captioner, pixels, feature_map, bank):
    """The frame's segments and the concept each one matches: (labels [H, W] from
    ``request_segments``, coverage [n, gh, gw], the segments' region-mean embeddings
    [n, C] (None without a bank), concept index per segment (-1: none), the matcher's
    probability)."""
    view = np.asarray(pixels[0]).astype(np.uint8)                  # the model's input view
    labels = request_segments(view, bank_segmentation(bank))
    cover = coverage(labels, captioner.grid)                       # [n, gh, gw]
    if bank is None or len(bank) == 0:
        return labels, cover, None, np.full(len(cover), -1), np.zeros(len(cover))
    region = region_embeddings(np.asarray(feature_map)[0], cover)
    concept_of, prob = bank.match(region)
    return labels, cover, region, concept_of, prob


def concept_membership(bank, region_emb, concept_of, prob, words, raises=None):
    """Which concepts each segment stands for, per word of the caption: the concept it
    matches among all the bank's clusters and, in a bank discovered per word, for a
    segment that raises the word (``raises`` [T, n]; every segment when None), the one it
    matches among the clusters found in that word's own images (ACE explains a class with
    the concepts discovered for that class; discovery clustered each word's raising
    segments). Returns (present: concept indices [P], member [T, n, P] bool, the
    matcher's probability of each segment's likeliest membership of each concept [n, P])."""
    own = [bank.match(region_emb, clusters) if (clusters := bank.clusters_of_word(w)) is not None
           else None for w in words]
    if raises is not None:      # a word's own concepts only where the word reads
        own = [None if o is None else (np.where(raises[t], o[0], -1), o[1])
               for t, o in enumerate(own)]
    found = [concept_of] + [o[0] for o in own if o is not None]
    present = sorted({int(k) for ks in found for k in ks if k >= 0})
    column = {k: j for j, k in enumerate(present)}
    n = len(concept_of)
    member = np.zeros((len(words), n, len(present)), bool)
    member_prob = np.zeros((n, len(present)), np.float32)

    def mark(t, of, p):         # t: one word, or slice(None): every word
        segs = np.flatnonzero(of >= 0)
        cols = [column[int(k)] for k in of[segs]]
        member[t, segs, cols] = True
        member_prob[segs, cols] = np.maximum(member_prob[segs, cols], p[segs])

    mark(slice(None), concept_of, prob)            # the match among all clusters
    for t, o in enumerate(own):
        if o is not None:
            mark(t, *o)
    return present, member, member_prob


class _ConceptPlaces:
    """Where a set of the frame's segments lies (area, location grid), computed once per
    distinct set: most concepts stand on the same segments for every word."""

    def __init__(self, labels: np.ndarray):
        self.labels, self._cache = labels, {}

    def _get(self, segs: np.ndarray) -> tuple[float, list]:
        key = np.packbits(segs).tobytes()
        if key not in self._cache:
            mask = segs[self.labels]
            self._cache[key] = (float(mask.mean()), _location_grid(mask))
        return self._cache[key]

    def area(self, segs: np.ndarray) -> float:
        return self._get(segs)[0]

    def grid(self, segs: np.ndarray) -> list:
        return self._get(segs)[1]


def _concept_identity(bank, k: int) -> dict:
    """What every mention of concept k says about it."""
    return {"id": bank.ids[k], "name": bank.label(k), "named": bool(bank.names[k]),
            "named_by": bank.named_by[k] or None, "purity": _round(bank.purity[k], 3)}


def _tcav_for(bank, k: int, words: list[str]):
    """The bank's TCAV score of concept k shown with it: for one word, that word's; for a
    caption, the (content) word for which the concept is most significant. Returns
    (word, score or None, every scored (word, score))."""
    scores = [(w, s) for w in words if (s := bank.word_score(w, k))]
    if len(words) == 1:
        word, score = scores[0] if scores else (words[0], None)
        return word, score, scores
    scores = [(w, s) for w, s in scores if w not in FUNCTION_WORDS] or scores
    word, score = min(scores, key=lambda ws: (not ws[1]["significant"], ws[1]["p_value"],
                                              -ws[1]["tcav"]), default=(None, None))
    return word, score, scores


def _ranked_entries(bank, present, evidence, sensitivity, words, stands_on, where) -> list:
    """The concepts of one word's list (or the caption's), ranked by evidence; a concept
    standing on no segment for it (another word's own concept) is left out.
    ``stands_on`` [n, P]: the segments each concept stands on for it."""
    out = []
    for j in np.argsort(-evidence, kind="stable"):
        segs = stands_on[:, j]
        if not segs.any():
            continue
        k = present[j]
        word, score, scores = _tcav_for(bank, k, words)
        entry = {**_concept_identity(bank, k),
                 "evidence": _sig(evidence[j]), "sensitivity": _sig(sensitivity[j]),
                 "tcav": _round(score["tcav"]) if score else None,
                 "p_value": score["p_value"] if score else None,
                 "p_adjusted": score.get("p_adjusted") if score else None,
                 "significant": bool(score and score["significant"]),
                 "lowers": lowers_word(score),
                 "area": _round(where.area(segs), 3), "heatmap": where.grid(segs)}
        if len(words) > 1:
            entry["tcav_word"] = word
            entry["significant_for"] = list(dict.fromkeys(w for w, s in scores if s["significant"]))
        out.append(entry)
    return out


def concept_evidence(grads, cavs, member, cover, prior: float):
    """Per word, each concept's evidence where it stands (the mean of ds_t/dA_hw . v_C over
    its cells, weighted by the share m_C of each cell its segments cover, shrunk by
    ``prior`` cells of zero evidence), its conceptual sensitivity S_C,t(x), and each
    segment's evidence for the concept it stands for (the best of them; 0 for none).
    grads [T, gh, gw, C], cavs [P, C], member [T, n, P], cover [n, gh, gw]."""
    presence = np.einsum("tsp,shw->tphw", member.astype(np.float32), cover)   # [T, P, gh, gw]
    directional = np.einsum("thwc,pc->thwp", grads, cavs)          # ds_t/dA_hw . v_C
    evidence = (np.einsum("thwp,tphw->tp", directional, presence)
                / np.maximum(presence.sum((2, 3)) + prior, 1e-6))  # [T, P]
    sensitivity = grads.sum((1, 2)) @ cavs.T                       # [T, P]
    per_segment = np.einsum("thwp,shw->tsp", directional, cover)   # [T, n, P]
    seg_evidence = np.where(member.any(2),
                            np.where(member, per_segment, -np.inf).max(2, initial=-np.inf), 0.0)
    return evidence, sensitivity, seg_evidence


def _ace_without_bank(ctx, labels, cover, fmap, grads, info) -> dict:
    """No concepts to name: segments scored by their first-order effect (grad x A)."""
    imp = segment_importance(fmap, grads, cover)
    return {"caption": ctx.map(_shrink(np.maximum(imp.sum(0), 0)[labels], WORD_MAP_SIDE),
                               concepts=[]),
            "words": [ctx.map(_shrink(np.maximum(imp[t], 0)[labels], WORD_MAP_SIDE), concepts=[])
                      for t in range(len(imp))],
            "concepts": [], **info,
            "note": "this bundle has no concept bank: segments are scored (gradient x "
                    "activation), not named"}


def explain_with_concepts(ctx) -> dict:
    """Request-time ACE (see the module docstring) on the shared explanation context
    (methods.Context): per word and for the caption, the concepts in this frame ranked by
    their evidence where they lie, each with the bank's TCAV score and its significance."""
    bank, words = ctx.explainer.concept_bank, list(ctx.target.words)
    labels, cover, region, concept_of, similarity = locate_concepts(
        ctx.captioner, ctx.pixels, ctx.feature_map, bank)
    fmap = np.asarray(ctx.feature_map)[0]
    grads = ctx.teacher.gradients.numpy()[: ctx.target.n_words]    # [T, gh, gw, C]
    method = bank_segmentation(bank)
    info = {"n_segments": int(len(cover)), "segmentation": method,
            "resolution": REQUEST_LEVELS[method]}
    if bank is None or len(bank) == 0:
        return _ace_without_bank(ctx, labels, cover, fmap, grads, info)

    raises = segment_importance(fmap, grads, cover) > 0 if OWN_MATCH_RAISING_ONLY else None
    present, member, member_prob = concept_membership(bank, region, concept_of, similarity,
                                                      words, raises)
    prior = EVIDENCE_PRIOR_CELLS.get(bank.info.get("discovery") or "world", 0.0)
    evidence, sensitivity, seg_evidence = concept_evidence(grads, bank.cavs[present], member,
                                                           cover, prior)
    anywhere = member.any(0)                                       # [n, P]
    where = _ConceptPlaces(labels)

    def painted(values):       # each segment painted with its positive evidence
        return _shrink(np.maximum(values, 0)[labels], WORD_MAP_SIDE)

    caption = ctx.map(painted(seg_evidence.sum(0)), concepts=_ranked_entries(
        bank, present, evidence.sum(0), sensitivity.sum(0), words, anywhere, where))
    word_maps = [ctx.map(painted(seg_evidence[t]), concepts=_ranked_entries(
                     bank, present, evidence[t], sensitivity[t], [w], member[t], where))
                 for t, w in enumerate(words)]
    concepts = [{**_concept_identity(bank, k),
                 "area": _round(where.area(anywhere[:, j]), 3),
                 "segments": int(anywhere[:, j].sum()),
                 "match_probability": _round(member_prob[anywhere[:, j], j].mean(), 3),
                 "patches": bank.patch_urls(k), "heatmap": where.grid(anywhere[:, j])}
                for j, k in enumerate(present)]
    unmatched = float((~anywhere.any(1))[labels].mean())
    return {"caption": caption, "words": word_maps, "concepts": concepts, **info,
            "unmatched_area": round(unmatched, 3),
            "bank": {"concepts": len(bank), "key": bank.key,
                     "embedding": bank.info.get("embedding"),
                     "significance": bank.info.get("significance")}}
