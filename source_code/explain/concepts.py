"""Building a bundle's ACE concept bank offline (``ace`` documents the method and where
it departs from the paper).

The stages, each a function a test can call on constructed arrays:
``collect_segments`` (SLIC at several resolutions, the paper's patches embedded through
the backbone) -> ``word_gradient_examples`` (sum_hw ds_t/dA per word occurrence) ->
``discover`` (k-means and the paper's filter) -> ``train_cavs`` / ``tcav_table`` (CAVs
against random counterparts, TCAV with a t-test and Bonferroni) -> ``name_from_truth``
or ``name_from_tcav`` -> ``build_concept_bank`` (all of it) and ``save_bank``.
"""
from __future__ import annotations

import logging
import shutil
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import stats
from sklearn.cluster import KMeans
from sklearn.linear_model import LogisticRegression
from tqdm import tqdm

from ..prefetch import ahead
from .ace import (BANK_DIR, DEDUP_JACCARD, FUNCTION_WORDS, MIN_SEGMENT_FRACTION, RENAMES_FILE,
                  ConceptBank, _unit, ace_patch, coverage, region_embeddings, segment, segmentation_levels)

log = logging.getLogger(__name__)
PATCH_SIDE, PATCHES_PER_CONCEPT = 64, 5
MAX_PER_CONCEPT = 40        # the paper: a concept is the segments nearest its centre
MIN_CLUSTER_SIZE = 20       # the paper's code: a smaller cluster is no concept
CAV_C = 1.0                 # inverse L2 strength of the CAV's logistic regression
NAME_PURITY = 0.9           # the most specific name that this fraction of members shares
NAME_MAJORITY = 0.5         # below a name that more than this share agree on: unnamed
# Random counterparts per concept (and random-vs-random CAVs in the null). A word's
# gradients share one direction, so a random CAV's TCAV lies near 0 or near 1 and the
# null is wide: with 20 random sets (and one reference set for the whole null) the t-test
# missed concepts at TCAV 0.99 (null mean 0.57) and the shapes bank of 400 images named
# 0.31 of validation words; with 50 (and a reference set per null CAV), 0.88.
RANDOM_SETS = 50
# "world": one k-means over every discovery image; "word": one per content word over the
# images whose captions use it (the paper's per-class setting).
DISCOVERIES = ("world", "word")
BACKGROUND = "background"


# -- segments --------------------------------------------------------------------------------
@dataclass
class SegmentSet:
    """Every segment kept from the discovery images (N of them)."""
    embeddings: np.ndarray     # [N, C] what is clustered: pooled patch (or region) embeddings
    regions: np.ndarray        # [N, C] region means of the image's own feature map
    image: np.ndarray          # [N] index of the image
    resolution: np.ndarray     # [N] SLIC resolution
    label: np.ndarray          # [N] segment label within (image, resolution)
    truth: list | None         # [N] ground truth: a tuple of attributes, or (BACKGROUND,)
    views: list                # the model's view of each image (uint8), for patches
    labelings: dict            # (image, resolution) -> SLIC labels (int16)
    # With ``relevant_per_word``: per segment, the caption words it is among the most
    # relevant segments of (only those segments are embedded: the others' rows are NaN),
    # and the word gradients of the same teacher passes ({word: [n, C]}, for TCAV).
    relevant: list | None = None
    word_grads: dict | None = None

    def mask(self, n: int) -> np.ndarray:
        return self.labelings[(int(self.image[n]), int(self.resolution[n]))] == self.label[n]

    def patch(self, n: int, side: int = PATCH_SIDE) -> np.ndarray:
        return ace_patch(self.views[int(self.image[n])], self.mask(n), side)


def unique_segments(labelings: list[np.ndarray], min_fraction: float = MIN_SEGMENT_FRACTION,
                    jaccard: float = DEDUP_JACCARD) -> list[tuple[int, int]]:
    """The paper's selection of one image's segments over resolutions (coarse first):
    (labeling index, segment label) of those not tiny and not overlapping an already kept
    segment by Jaccard > ``jaccard``."""
    kept = []            # (labeling index, label)
    for li, labels in enumerate(labelings):
        flat = labels.ravel()
        n = int(flat.max()) + 1
        areas = np.bincount(flat, minlength=n)
        # intersections with the kept segments of every coarser labeling
        overlaps = []
        for lj in range(li):
            prev = labelings[lj].ravel()
            m = int(prev.max()) + 1
            inter = np.bincount(prev.astype(np.int64) * n + flat, minlength=m * n).reshape(m, n)
            prev_areas = np.bincount(prev, minlength=m)
            overlaps.append((lj, inter, prev_areas))
        for s in range(n):
            if areas[s] < min_fraction * flat.size:
                continue
            duplicate = False
            for lj, inter, prev_areas in overlaps:
                for (kl, ks) in kept:
                    if kl != lj:
                        continue
                    i = inter[ks, s]
                    if i and i / (areas[s] + prev_areas[ks] - i) > jaccard:
                        duplicate = True
                        break
                if duplicate:
                    break
            if not duplicate:
                kept.append((li, s))
    return kept


def segment_truth(labels: np.ndarray, segs: list[int], objects: list[tuple[np.ndarray, tuple]]):
    """Ground truth of segments: the attributes of the object covering at least half of
    the segment, else (BACKGROUND,)."""
    owner = np.zeros(labels.shape, np.int64)          # 0: background, i + 1: object i
    for i, (mask, _) in enumerate(objects):
        owner[mask] = i + 1
    n = int(labels.max()) + 1
    table = np.bincount(labels.ravel().astype(np.int64) * (len(objects) + 1) + owner.ravel(),
                        minlength=n * (len(objects) + 1)).reshape(n, len(objects) + 1)
    out = []
    for s in segs:
        row = table[s]
        best = int(row[1:].argmax()) if len(objects) else -1
        if best >= 0 and row[1 + best] >= 0.5 * row.sum():
            out.append(tuple(objects[best][1]))
        else:
            out.append((BACKGROUND,))
    return out


def _embed_batch(captioner, patches: list[np.ndarray]) -> np.ndarray:
    fmap = captioner.features(np.stack(patches).astype(np.float32)).numpy()
    return fmap.mean((1, 2))


def embed_batch_size(input_size: int) -> int:
    """Images a backbone call during a bank build (scenes and patches alike). Measured
    here (best of 3, 2 cores): Lite0 at 224 px costs 22.9 ms an image alone, 16.8 in
    batches of 4, 14.7 in batches of 12 and 15.3 in 16; the shapes backbone at 160 px 9.0,
    4.3 and 2.4 ms in batches of 1, 8 and 16. About 600,000 input pixels a call."""
    return max(1, 600_000 // (input_size * input_size))


def _batched_features(captioner, views: list[np.ndarray], batch: int):
    """Each view's feature map [1, h, w, C] in order, the backbone run ``batch`` views at a
    time (a call on one image costs half again as much an image, see embed_batch_size)."""
    for start in range(0, len(views), batch):
        maps = captioner.features(np.stack(views[start:start + batch]).astype(np.float32))
        yield from np.split(maps.numpy(), len(maps))


def _segment_view(view: np.ndarray, resolutions, segmentation: str, grid):
    """One image's segmentations (one per resolution), the paper's unique segments among
    them ((level, label) each) and their coverage of the grid's cells [n, gh, gw]."""
    labelling = [segment(view, r, segmentation) for r in resolutions]
    keep = unique_segments(labelling)
    level_covers = [coverage(labels, grid) for labels in labelling]
    cover = np.asarray([level_covers[li][s] for (li, s) in keep],
                       np.float32).reshape((-1,) + tuple(grid))
    return labelling, keep, cover


def collect_segments(captioner, images, resolutions=None, truths=None,
                     embedding: str = "patch", progress: bool = True,
                     segmentation: str = "slic", captions=None,
                     relevant_per_word: int | None = None, batch: int | None = None):
    """Segment each image at every resolution (``segmentation``'s levels, by default those
    of ACE's code), keep the paper's unique segments, and embed them (``embedding``:
    "patch", the paper's; "region", the fast option). ``truths``: per image a list of
    (mask, attributes) of its objects. ``relevant_per_word`` (with ``captions``): embed
    only each caption word's most relevant segments (``relevant_segments``), the ones
    discovery per word clusters. ``batch``: images a backbone call (default
    ``embed_batch_size``). Returns (SegmentSet, feature maps)."""
    if embedding not in ("patch", "region"):
        raise ValueError(f"unknown embedding {embedding!r}: 'patch' or 'region'")
    if relevant_per_word and captions is None:
        raise ValueError("relevant_per_word needs the images' captions")
    resolutions = segmentation_levels(segmentation, resolutions)
    size = captioner.input_size
    batch = batch or embed_batch_size(size)
    emb, regions, img, res, lab, truth, relevant = [], [], [], [], [], [], []
    labelings, fmaps = {}, []
    word_grads = defaultdict(list)
    pending = []                # (row, patch) waiting for a backbone pass

    def flush():
        if pending:
            for (row, _), e in zip(pending, _embed_batch(captioner, [p for _, p in pending])):
                emb[row] = e
            pending.clear()

    # the model's input pixels (resized, whole values) as uint8, what segmentation reads
    views = [np.asarray(captioner.preprocess(image)[0]).astype(np.uint8) for image in images]
    # segmentation (scikit-image releases the GIL) runs ahead, beside the backbone passes
    segmented = ahead(map(partial(_segment_view, resolutions=resolutions,
                                  segmentation=segmentation, grid=captioner.grid), views), 4)
    bar = tqdm(segmented, total=len(images), desc="segmenting and embedding",
               disable=not progress, unit="img")
    scene_maps = _batched_features(captioner, views, batch)
    for i, (labelling, keep, cover) in enumerate(bar):
        view = views[i]
        fmap = next(scene_maps)
        fmaps.append(fmap)
        for li, r in enumerate(resolutions):
            labelings[(i, r)] = labelling[li].astype(np.int16)
        regions.extend(region_embeddings(fmap[0], cover))
        if relevant_per_word:
            words_of, grads = relevant_segments(captioner, fmap, captions[i], cover,
                                                relevant_per_word)
            for w, g in grads.items():
                word_grads[w].extend(g)
        for j, (li, s) in enumerate(keep):
            if truths is not None:
                truth.extend(segment_truth(labelling[li], [s], truths[i]))
            img.append(i)
            res.append(resolutions[li])
            lab.append(s)
            emb.append(None)
            if relevant_per_word:
                relevant.append(words_of[j])
                if not words_of[j]:
                    continue            # no word's discovery clusters it: no patch pass
            if embedding == "patch":
                pending.append((len(emb) - 1, ace_patch(view, labelling[li] == s, size)))
                if len(pending) >= batch:
                    flush()
    flush()
    regions = np.asarray(regions, np.float32).reshape(-1, fmaps[0].shape[-1] if fmaps else 0)
    if embedding == "patch":
        nan = np.full(regions.shape[1], np.nan, np.float32)
        embeddings = np.asarray([nan if e is None else e for e in emb], np.float32)
    else:
        embeddings = regions
    return SegmentSet(embeddings, regions, np.asarray(img), np.asarray(res), np.asarray(lab),
                      truth if truths is not None else None, views, labelings,
                      relevant if relevant_per_word else None,
                      {w: np.asarray(g, np.float32) for w, g in word_grads.items()}
                      if relevant_per_word else None), fmaps


def caption_passes(captioner, fmap, captions, cells: bool = False):
    """Per reference caption of one image (its words in the vocabulary; a caption with
    none is skipped): (words, its teacher pass), each word's ds_t/dA summed over the cells
    in ``channel_gradients``; with ``cells``, also each cell's grad x activation
    (``target.cell_pass``)."""
    from .target import caption_target, cell_pass, channel_pass
    parts = captioner.cell_parts(fmap) if captioner.decoder.kind != "merge" else None
    for words in captions:
        words = [w for w in words if w in captioner.vocab]
        if words:
            target = caption_target(captioner, words)
            yield words, (cell_pass(captioner, fmap, target, parts) if cells
                          else channel_pass(captioner, fmap, target, parts=parts))


def relevant_segments(captioner, fmap, captions, cover: np.ndarray, top: int):
    """Which of one image's segments (``cover`` [n, gh, gw], ``ace.coverage``) its content
    words depend on most: per word of its captions (teacher forcing), the ``top`` segments
    whose features raise the word's score most to first order (grad x activation summed
    over the segment's cells, as ``ace.segment_importance``), when positive. Returns (per
    segment the set of those words, the word gradients {word: [sum_hw ds_t/dA]})."""
    words_of = [set() for _ in range(len(cover))]
    grads_out = defaultdict(list)
    flat_cover = np.asarray(cover, np.float32).reshape(len(cover), -1)
    for words, found in caption_passes(captioner, fmap, captions, cells=True):
        importance = found.cell_contributions @ flat_cover.T                # [T, n]
        for t, w in enumerate(words):
            grads_out[w].append(found.channel_gradients[t])
            if w in FUNCTION_WORDS:
                continue
            for j in np.argsort(-importance[t], kind="stable")[:top]:
                if importance[t, j] > 0:
                    words_of[j].add(w)
    return words_of, grads_out


def word_gradient_examples(captioner, images, captions, fmaps=None, progress: bool = True) -> dict:
    """{word: [n, C]}: sum_hw ds_t/dA for every occurrence of the word in the images'
    reference captions (teacher forcing); ``fmaps``: the images' feature maps where known."""
    out = defaultdict(list)
    bar = tqdm(range(len(images)), desc="word gradients", disable=not progress, unit="img")
    for i in bar:
        fmap = fmaps[i] if fmaps is not None and i < len(fmaps) else \
            captioner.features(captioner.preprocess(images[i])).numpy()
        for words, found in caption_passes(captioner, fmap, captions[i]):
            for w, g in zip(words, found.channel_gradients):
                out[w].append(g)
    return {w: np.asarray(g, np.float32) for w, g in out.items()}


def merge_word_grads(*tables: dict) -> dict:
    """{word: [n, C]} tables of word gradients, concatenated per word."""
    out = defaultdict(list)
    for table in tables:
        for w, g in table.items():
            out[w].append(np.asarray(g, np.float32))
    return {w: np.concatenate(g) for w, g in out.items()}


# -- discovery -------------------------------------------------------------------------------
def keep_cluster(size: int, n_images: int, populated: float,
                 min_size: int = MIN_CLUSTER_SIZE) -> tuple[bool, str]:
    """The paper's filter (its code's three conditions): a cluster is a concept when it is
    not small and its segments are spread over images: from many images for its size
    (highly common); or a quarter as many images as segments (mildly common) in a quarter
    of the discovery images; or a tenth as many, in half of them. ``populated``: the
    share of the discovery images (of a word's images: see ``populated_share``) it covers."""
    if size <= min_size:
        return False, f"{size} segments (at most {min_size})"
    highly_common = n_images > 0.5 * size
    mildly = n_images > 0.25 * size and populated > 0.25
    widespread = n_images > 0.1 * size and populated > 0.5
    if highly_common or mildly or widespread:
        return True, ""
    return False, (f"{size} segments from {n_images} images, covering {populated:.0%} of "
                   "the images of any word")


def populated_share(images: set, n_discovery: int, word_images: dict | None = None,
                    min_images: int = 5) -> float:
    """The share of the discovery images a cluster's images cover (the paper, which
    discovers the concepts of one class), or, when the world has many words, the largest
    share of any one word's images (ACE's class is our word: a "red" concept can only
    populate the images with something red). Never below the paper's share."""
    share = len(images) / max(n_discovery, 1)
    for imgs in (word_images or {}).values():
        if len(imgs) >= min_images:
            share = max(share, len(images & imgs) / len(imgs))
    return share


def content_word_images(captions, n: int) -> dict:
    """{content word: set of the first n images whose captions use it}."""
    out = defaultdict(set)
    for i, caps in enumerate(captions[:n]):
        for words in caps:
            for w in words:
                if w not in FUNCTION_WORDS:
                    out[w].add(i)
    return dict(out)


@dataclass
class Discovery:
    centres: np.ndarray        # [M, C] k-means centres (every cluster)
    assignment: np.ndarray     # [R] cluster of every clustered row
    kept: list                 # cluster indices kept as concepts
    members: list              # per kept cluster: segment indices nearest the centre
    dropped: dict              # cluster index -> why
    rows: np.ndarray | None = None   # [R] the segment of each row (None: row n is segment n)
    words: list | None = None  # [M] the word in whose images a cluster was found (per word)

    def segments_of(self, m: int) -> np.ndarray:
        """Every segment k-means put in cluster m."""
        idx = np.flatnonzero(self.assignment == m)
        return idx if self.rows is None else self.rows[idx]

    def clustered_segments(self) -> np.ndarray:
        """[R] the segment of every clustered row (a segment may sit in several words' runs)."""
        return np.arange(len(self.assignment)) if self.rows is None else self.rows


def discover(embeddings: np.ndarray, image: np.ndarray, n_clusters: int, n_discovery: int,
             max_per_concept: int = MAX_PER_CONCEPT, min_size: int = MIN_CLUSTER_SIZE,
             seed: int = 0, word_images: dict | None = None) -> Discovery:
    """k-means on the segments' embeddings, then the paper's filter; a concept's members
    are the segments nearest its centre."""
    km = KMeans(n_clusters=min(n_clusters, len(embeddings)), n_init=3, random_state=seed)
    assignment = km.fit_predict(embeddings)
    kept, members, dropped = [], [], {}
    for m in range(km.n_clusters):
        idx = np.flatnonzero(assignment == m)
        images = set(image[idx].tolist())
        ok, why = keep_cluster(len(idx), len(images),
                               populated_share(images, n_discovery, word_images), min_size)
        if not ok:
            dropped[m] = why
            continue
        dist = np.linalg.norm(embeddings[idx] - km.cluster_centers_[m], axis=1)
        kept.append(m)
        members.append(idx[np.argsort(dist, kind="stable")[:max_per_concept]])
    return Discovery(km.cluster_centers_, assignment, kept, members, dropped)


def discover_per_word(embeddings: np.ndarray, image: np.ndarray, word_images: dict,
                      n_clusters: int, max_per_concept: int = MAX_PER_CONCEPT,
                      min_size: int = MIN_CLUSTER_SIZE, seed: int = 0,
                      min_images: int = 5, relevant: list | None = None) -> Discovery:
    """The paper's own setting, one run per word as ACE runs one per class: k-means on the
    segments of the images whose captions use the word, and the paper's filter with its
    share of those images. A segment of an image with two words is clustered in both
    runs; the runs' clusters are numbered one after another. ``relevant`` (per segment, a
    set of words): a word's run clusters only the segments relevant to it."""
    centres, assignment, rows, words, kept, members, dropped = [], [], [], [], [], [], {}
    offset = 0
    for word in sorted(word_images):
        imgs = word_images[word]
        if len(imgs) < min_images:
            continue
        idx = np.flatnonzero(np.isin(image, sorted(imgs)))
        if relevant is not None:
            idx = np.asarray([n for n in idx if word in relevant[n]], int)
            if len(idx) < n_clusters:
                continue
        run = discover(embeddings[idx], image[idx], n_clusters, len(imgs), max_per_concept,
                       min_size, seed)
        kept += [offset + m for m in run.kept]
        members += [idx[m] for m in run.members]
        dropped.update({offset + m: f"in the images of {word!r}: {why}"
                        for m, why in run.dropped.items()})
        centres.append(run.centres)
        assignment.append(run.assignment + offset)
        rows.append(idx)
        words += [word] * len(run.centres)
        offset += len(run.centres)
    if not centres:
        raise ValueError(f"no word has {min_images} discovery images: discover over the "
                         "whole world instead")
    return Discovery(np.concatenate(centres), np.concatenate(assignment), kept, members,
                     dropped, np.concatenate(rows), words)


# -- CAVs and TCAV ---------------------------------------------------------------------------
def train_cav(positive: np.ndarray, negative: np.ndarray, seed: int = 0) -> np.ndarray:
    """The unit normal of a logistic regression separating ``positive`` from ``negative``
    activations, pointing towards the positive side (the concept)."""
    x = np.concatenate([positive, negative])
    y = np.r_[np.ones(len(positive)), np.zeros(len(negative))]
    scale = max(float(np.abs(x).max()), 1e-8)   # conditioning only: the direction is kept
    clf = LogisticRegression(C=CAV_C, max_iter=2000, random_state=seed).fit(x / scale, y)
    return _unit(clf.coef_[0]).astype(np.float32)


def random_sets(pool: np.ndarray, size: int, count: int, rng) -> list[np.ndarray]:
    """``count`` random sets of segment indices drawn from ``pool`` (the random counterparts)."""
    return [rng.choice(pool, size=min(size, len(pool)), replace=False) for _ in range(count)]


RANDOM_POOLS = ("concepts", "segments")


def train_cavs(embeddings: np.ndarray, members: list, n_random: int, seed: int = 0,
               progress: bool = True, pool: str = "segments") -> tuple[np.ndarray, np.ndarray]:
    """CAVs of every concept against ``n_random`` random sets ([K, R, C]) and of R further
    random sets, each against one of those ([R, C]): the null the t-test compares with. The
    random sets are drawn from ``pool``: "concepts", the members of every concept found
    (the default, see ``ace``), or "segments", every segment."""
    rng = np.random.default_rng(seed)
    size = max((len(m) for m in members), default=MAX_PER_CONCEPT)
    if pool not in RANDOM_POOLS:
        raise ValueError(f"unknown random pool {pool!r}: one of {RANDOM_POOLS}")
    everyone = np.arange(len(embeddings))
    drawn_from = np.unique(np.concatenate(members)) if pool == "concepts" and members else everyone
    sets = random_sets(drawn_from, size, 2 * n_random, rng)
    # The null: each random CAV separates a random set of its own from a counterpart, so
    # the null's mean does not hang on one reference set's make-up.
    references, counterparts = sets[n_random:], sets[:n_random]
    concept_cavs = np.stack([np.stack([train_cav(embeddings[m], embeddings[r], seed + j)
                                       for j, r in enumerate(counterparts)])
                             for m in tqdm(members, desc="training CAVs", unit="concept",
                                           disable=not progress)]) \
        if members else np.zeros((0, n_random, embeddings.shape[1]), np.float32)
    random_cavs = np.stack([train_cav(embeddings[a], embeddings[r], seed + 1000 + j)
                            for j, (a, r) in enumerate(zip(references, counterparts))])
    return concept_cavs, random_cavs


def tcav_scores(gradients: np.ndarray, cavs: np.ndarray) -> np.ndarray:
    """gradients [n, C] (one word's examples), cavs [..., C] -> [...]: the fraction of
    examples whose directional derivative along each CAV is positive."""
    return ((gradients @ cavs.reshape(-1, cavs.shape[-1]).T) > 0).mean(0).reshape(cavs.shape[:-1])


def welch_p(scores: np.ndarray, null: np.ndarray) -> float:
    """Two-sided Welch t-test of a concept's TCAV scores against the random CAVs'."""
    a, b = np.asarray(scores, np.float64), np.asarray(null, np.float64)
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    if np.ptp(a) == 0:
        va = 0.0
    if np.ptp(b) == 0:
        vb = 0.0
    diff = a.mean() - b.mean()
    if va + vb == 0:
        return 1.0 if np.isclose(diff, 0) else 0.0
    t = diff / np.sqrt(va + vb)
    df = (va + vb) ** 2 / ((va ** 2 / (len(a) - 1) if va else 0) + (vb ** 2 / (len(b) - 1) if vb else 0))
    return float(2 * stats.t.sf(abs(t), df))


def tcav_table(word_grads: dict, concept_cavs: np.ndarray, random_cavs: np.ndarray, ids: list,
               min_examples: int = 5, alpha: float = 0.05) -> tuple[dict, dict]:
    """TCAV of every (word, concept) with its significance. Returns ({word: {id: {"tcav",
    "p_value", "p_adjusted", "significant", "examples"}}}, {word: random TCAV mean}). The
    Bonferroni correction counts every pair tested."""
    raw, random_mean = {}, {}
    for w, g in sorted(word_grads.items()):
        if len(g) < min_examples:
            continue
        null = tcav_scores(g, random_cavs)
        random_mean[w] = round(float(null.mean()), 4)
        raw[w] = {cid: (tcav_scores(g, cavs), welch_p(tcav_scores(g, cavs), null), len(g))
                  for cid, cavs in zip(ids, concept_cavs)}
    tests = max(1, sum(len(v) for v in raw.values()))
    table = {}
    for w, row in raw.items():
        table[w] = {}
        for cid, (scores, p, n) in row.items():
            adjusted = min(1.0, p * tests)
            table[w][cid] = {"tcav": round(float(scores.mean()), 4), "p_value": float(f"{p:.3g}"),
                             "p_adjusted": float(f"{adjusted:.3g}"),
                             "significant": bool(adjusted < alpha), "examples": int(n)}
    return table, random_mean


def train_matcher(regions: np.ndarray, assignment: np.ndarray, n_clusters: int):
    """The request-time matcher: a linear classifier (LDA with shrinkage, closed form) from
    a segment's unit region-mean embedding to the k-means cluster its patch fell in.
    Returns (weights [M, C], biases [M]); a cluster without members never wins."""
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
    dim = regions.shape[1]
    w = np.zeros((n_clusters, dim), np.float32)
    b = np.full(n_clusters, -1e9, np.float32)
    present = np.unique(assignment)
    if len(present) < 2:     # one class: it always wins
        b[present] = 0.0
        return w, b
    lda = LinearDiscriminantAnalysis(solver="lsqr", shrinkage="auto").fit(_unit(regions), assignment)
    if len(lda.classes_) == 2:   # one decision function: class 1 when positive
        w[lda.classes_[0]], b[lda.classes_[0]] = 0.0, 0.0
        w[lda.classes_[1]], b[lda.classes_[1]] = lda.coef_[0], lda.intercept_[0]
    else:
        w[lda.classes_] = lda.coef_.astype(np.float32)
        b[lda.classes_] = lda.intercept_.astype(np.float32)
    return w, b


# -- names -----------------------------------------------------------------------------------
def _key(attributes: tuple, level: tuple) -> str:
    if attributes == (BACKGROUND,):
        return BACKGROUND
    return " ".join(attributes[i] for i in level)


def name_from_truth(truths: list, levels=((0, 1), (0,), (1,)),
                    threshold: float = NAME_PURITY) -> tuple[str, float, tuple, dict]:
    """A concept's name from its members' ground truth: the most specific level of the
    attributes (``levels``: index tuples, most specific first; colour + shape, then
    colour, then shape) on which at least ``threshold`` of the members agree, else the
    level they agree on most, if a majority does; else "" (unnamed: a name half the
    members contradict would dress a mixed cluster up). Returns (name, purity, level,
    {level: purity}); purity stays the largest share that agrees on anything."""
    width = max((len(t) for t in truths if t != (BACKGROUND,)), default=1)
    levels = [lv for lv in levels if max(lv) < width] or [tuple(range(width))]
    options = []
    for level in levels:
        counts = Counter(_key(t, level) for t in truths)
        name, n = counts.most_common(1)[0]
        options.append((name, n / max(len(truths), 1), level))
    by_level = {" + ".join(str(i) for i in lv): round(p, 4) for _, p, lv in options}
    for name, purity, level in options:
        if purity >= threshold:
            return name, purity, level, by_level
    name, purity, level = max(options, key=lambda o: o[1])   # first (most specific) on ties
    return (name if purity > NAME_MAJORITY else ""), purity, level, by_level


def name_from_tcav(table: dict, concept_id: str, words: int = 2) -> str:
    """From real data: the content words for which the concept has significant TCAV
    above one half (the words it drives), highest first; "" when none."""
    top = sorted(((s[concept_id]["tcav"], w) for w, s in table.items()
                  if w not in FUNCTION_WORDS and concept_id in s and s[concept_id]["significant"]
                  and s[concept_id]["tcav"] > 0.5), reverse=True)[:words]
    return ", ".join(w for _, w in top)


# -- the whole build -------------------------------------------------------------------------
def build_concept_bank(captioner, images, captions, truths=None, n_clusters: int = 25,
                       resolutions=None, embedding: str = "patch", segmentation: str = "slic",
                       discovery_images: int | None = None,
                       max_per_concept: int = MAX_PER_CONCEPT, min_cluster_size: int = MIN_CLUSTER_SIZE,
                       random_sets: int = RANDOM_SETS, min_word_examples: int = 5,
                       alpha: float = 0.05,
                       name_levels=((0, 1), (0,), (1,)), random_pool: str = "segments",
                       cav_space: str = "region", discovery: str = "world",
                       relevant_per_word: int | None = None,
                       seed: int = 0, progress: bool = True,
                       segments: SegmentSet | None = None, fmaps=None, word_grads=None,
                       ) -> tuple[ConceptBank, dict]:
    """images: list of HxWx3 uint8; captions: per image, a list of word lists; truths
    (synthetic worlds): per image, the (mask, attributes) of its objects, masks at the
    model's input size. Segments come from the first ``discovery_images`` (default all);
    TCAV examples from every image. ``segments``/``fmaps``/``word_grads``: reuse stages
    already computed. ``relevant_per_word``: discovery per word clusters only each word's
    most relevant segments in an image (``relevant_segments``), and only those pass the
    backbone. Returns the bank and its example patches {concept id: [uint8]}."""
    if discovery not in DISCOVERIES:      # before any expensive stage
        raise ValueError(f"unknown discovery {discovery!r}: one of {', '.join(DISCOVERIES)}")
    if relevant_per_word and (discovery != "word" or embedding != "patch"):
        raise ValueError("relevant_per_word selects the segments of discovery per word's "
                         "patches: it needs discovery='word' and embedding='patch'")
    t0 = time.perf_counter()
    seconds = {}
    n_disc = len(images) if discovery_images is None else min(discovery_images, len(images))
    resolutions = segmentation_levels(segmentation, resolutions)
    if segments is None:
        segments, fmaps = collect_segments(captioner, images[:n_disc], resolutions,
                                           truths[:n_disc] if truths is not None else None,
                                           embedding, progress, segmentation,
                                           captions[:n_disc], relevant_per_word)
    seconds["segments"] = round(time.perf_counter() - t0, 1)
    t = time.perf_counter()
    if word_grads is None and segments.word_grads is not None:
        # the discovery images' teacher passes gave theirs already
        word_grads = merge_word_grads(segments.word_grads, word_gradient_examples(
            captioner, images[n_disc:], captions[n_disc:], None, progress))
    elif word_grads is None:
        word_grads = word_gradient_examples(captioner, images, captions, fmaps, progress)
    seconds["word gradients"] = round(time.perf_counter() - t, 1)
    t = time.perf_counter()
    emb = segments.embeddings
    log.info("%d segments from %d images; %d clusters", len(emb), n_disc, n_clusters)
    word_images = content_word_images(captions, n_disc)
    if discovery == "word":
        found = discover_per_word(emb, segments.image, word_images, n_clusters, max_per_concept,
                                  min_cluster_size, seed, relevant=segments.relevant)
    else:
        found = discover(emb, segments.image, n_clusters, n_disc, max_per_concept,
                         min_cluster_size, seed, word_images)
    seconds["k-means"] = round(time.perf_counter() - t, 1)
    t = time.perf_counter()
    ids = [f"c{n + 1:02d}" for n in range(len(found.kept))]
    cav_emb = segments.regions if cav_space == "region" else emb
    concept_cavs, random_cavs = train_cavs(cav_emb, found.members, random_sets, seed, progress,
                                           random_pool)
    table, random_mean = tcav_table(word_grads, concept_cavs, random_cavs, ids,
                                    min_word_examples, alpha)
    seconds["CAVs and TCAV"] = round(time.perf_counter() - t, 1)

    names, named_by, purity, details = [], [], [], {}
    for cid, m, members in zip(ids, found.kept, found.members):
        all_members = found.segments_of(m)
        d = {"segments": int(len(members)), "cluster_size": int(len(all_members)),
             "images": int(len(set(segments.image[members].tolist()))),
             "tcav_words": name_from_tcav(table, cid, words=3)}
        if found.words is not None:
            d["discovered_in"] = found.words[m]
        if segments.truth is not None:
            name, pur, level, levels = name_from_truth([segments.truth[i] for i in members],
                                                       name_levels)
            names.append(name)
            named_by.append("ground truth" if name else "")
            purity.append(round(pur, 4))
            d["purity_by_level"] = levels
            d["cluster_purity"] = round(float(np.mean(
                [_key(segments.truth[i], level) == name for i in all_members])), 4)
        else:
            names.append(d["tcav_words"])
            named_by.append("tcav" if d["tcav_words"] else "")
            purity.append(None)
        details[cid] = d
    cavs = _unit(concept_cavs.mean(1)) if len(ids) else np.zeros((0, emb.shape[1]), np.float32)
    matcher_w, matcher_b = train_matcher(segments.regions[found.clustered_segments()],
                                         found.assignment, len(found.centres))
    cluster_concept = np.full(len(found.centres), -1, np.int32)
    for k, m in enumerate(found.kept):
        cluster_concept[m] = k
    patches = {cid: [segments.patch(i) for i in example_members(members, segments.image)]
               for cid, members in zip(ids, found.members)}
    info = {"method": "ACE (Ghorbani et al. 2019) with TCAV (Kim et al. 2018), for caption words",
            "built": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "images": len(images), "discovery_images": n_disc, "segments": int(len(emb)),
            "segments_embedded": int(np.isfinite(emb[:, 0]).sum()) if len(emb) else 0,
            "segmentation": segmentation, "resolutions": list(resolutions),
            "clusters": int(len(found.centres)), "discovery": discovery,
            # per k-means cluster, the word in whose images it was found (per-word
            # discovery): request-time ACE matches a word's segments among its own clusters
            "cluster_words": list(found.words) if found.words is not None else None,
            "concepts": len(ids), "dropped": {str(m): why for m, why in found.dropped.items()},
            "max_per_concept": max_per_concept, "min_cluster_size": min_cluster_size,
            "relevant_per_word": relevant_per_word,
            "random_sets": random_sets, "random_pool": random_pool, "cav_space": cav_space,
            "layer": "top_activation", "embedding": embedding,
            "embedding_detail": ("the segment's patch (grey 117 outside it, padded square) "
                                 "resized to the input size, backbone, mean over the grid"
                                 if embedding == "patch" else
                                 "coverage-weighted region mean of the image's feature map"),
            "matcher": "linear discriminant analysis (shrinkage) of unit region-mean "
                       "embeddings into the k-means clusters",
            "significance": f"two-sided Welch t-test vs random-vs-random CAVs, Bonferroni over "
                            f"{sum(len(v) for v in table.values())} (concept, word) pairs, alpha {alpha}",
            "min_word_examples": min_word_examples, "random_tcav": random_mean,
            "naming": ("ground truth of the members (most specific level that "
                       f"{NAME_PURITY:.0%} share, else the one a majority shares, else "
                       "unnamed)" if segments.truth is not None else
                       "words with significant TCAV above 0.5"),
            "seed": seed}
    seconds["total"] = round(time.perf_counter() - t0, 1)
    info["seconds"] = seconds
    bank = ConceptBank(ids, names, named_by, purity, cavs.astype(np.float32), matcher_w,
                       matcher_b, cluster_concept, table, info, {}, details)
    return bank, patches


def example_members(members, image_of, count: int = PATCHES_PER_CONCEPT) -> list:
    """The members nearest the centre shown as examples, from distinct images first."""
    chosen, seen = [], set()
    for i in members:
        if len(chosen) < count and image_of[i] not in seen:
            chosen.append(i)
            seen.add(image_of[i])
    chosen += [i for i in members if i not in chosen][: count - len(chosen)]
    return chosen


def save_bank(bank: ConceptBank, patches: dict, bundle_dir) -> Path:
    """Write the bank into the bundle (concepts/, patches as PNG files). It is built in a
    temporary folder and swapped in, so an interrupted build leaves the old bank intact.
    A person's ``concepts.json`` (renames) is kept when the ids still exist."""
    bundle_dir = Path(bundle_dir)
    staging = bundle_dir / ".concepts-build"
    shutil.rmtree(staging, ignore_errors=True)
    (staging / BANK_DIR / "patches").mkdir(parents=True)
    final = bundle_dir / BANK_DIR
    try:
        for cid, arrays in patches.items():
            files = []
            for j, a in enumerate(arrays):
                fname = f"{cid}_{j}.png"
                Image.fromarray(a).save(staging / BANK_DIR / "patches" / fname)
                files.append(fname)
            bank.patches[cid] = files
        bank.save(staging)
        renames = final / RENAMES_FILE      # a person's names outlive a rebuild
        if renames.is_file():
            shutil.copy2(renames, staging / BANK_DIR / RENAMES_FILE)
        if final.exists():
            shutil.rmtree(final)
        (staging / BANK_DIR).replace(final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    bank.root = final
    bank.apply_renames(final / RENAMES_FILE)
    return final


# -- the synthetic worlds --------------------------------------------------------------------
WORLD_LEVELS = {"shapes": ((0, 1), (0,), (1,)), "objects": ((0,),)}


def world_examples(world: str, n: int, seed: int, image_size: int, progress: bool = True):
    """n scenes of a bundle's own world (seeds seed.. seed + n - 1) as (images, captions,
    truths): truths are each object's mask and attributes, (colour, shape) or (category,)."""
    from ..data.synthetic import reading_order_caption
    from ..data.worlds import held_out_scenes
    images, captions, truths = [], [], []
    for s in held_out_scenes(world, n, seed, image_size, progress=progress):
        images.append(s.image)
        if world == "objects":
            captions.append([s.caption.split()])
            truths.append([(o.mask, (o.category,)) for o in s.objects])
        else:
            captions.append([reading_order_caption(s.caption).split()])
            truths.append([(o.mask, (o.color, o.shape)) for o in s.objects])
    return images, captions, truths


def default_clusters(world: str | None) -> int:
    """k for k-means: a world's (``WORLD_BANKS``), else the paper's 25 for one class."""
    return WORLD_BANKS.get(world, {}).get("clusters", 25)


# How each world's bank is built by default (``build_world_bank``), chosen on validation
# scenes (seeds from 90,000,000), never on the test scenes:
# * shapes: one k-means over the whole world, as in the paper's code but for all words at
#   once. The paper's 25 clusters serve one class; a world needs more clusters than it
#   has kinds of objects, or they share clusters with backgrounds: 40 clusters named the
#   colour and shape words of held-out scenes better than 25 (0.84 against 0.75 on 60
#   scenes). 400 discovery images named more validation words than 200 (0.8825 against
#   0.8425): what fits the 20-minute build (a patch through the shapes backbone at 160 px
#   costs about 12 ms, and an image gives about 115 patches).
# * objects: discovery per word, as the paper runs per class (see ``discover_per_word``),
#   on Felzenszwalb's coarsest scale alone, whose segments are whole objects far more
#   often than SLIC's (2.5 segments an object against 1.2 at SLIC's coarsest level, 600
#   scenes); 8 clusters a word, and the paper's filter with clusters of more than 10
#   segments. Each word's run clusters only the 3 segments of a scene that raise the
#   word's score most (``relevant_segments``): a quarter of all segments lie on objects,
#   half of those do, and only they pay a backbone pass (31 %), so the 20-minute build
#   holds 3,000 discovery scenes instead of 1,200. Validation object words named: all
#   segments, 600 / 1,200 scenes 0.47 / 0.66; relevant ones, 2,400 / 3,000 scenes
#   0.78 / 0.85 (docs/results/ace_objects_bank_variants.json). The scenes' own captions
#   serve as the TCAV examples (their word gradients come with the relevance passes).
#   Over the whole world, object segments did not gather by category (0.00-0.03 named).
WORLD_BANKS = {
    "shapes": {"images": 400, "clusters": 40, "discovery": "world", "segmentation": "slic"},
    "objects": {"images": 3000, "tcav_images": 3000, "clusters": 8, "discovery": "word",
                "segmentation": "felzenszwalb", "resolutions": (1200,), "min_cluster_size": 10,
                "relevant_per_word": 3},
}


def world_bank_options(world: str) -> dict:
    """build_concept_bank's options of a world's default bank (no image count or k)."""
    return {k: v for k, v in WORLD_BANKS.get(world, {}).items()
            if k not in ("images", "tcav_images", "clusters")}


def concept_image_counts(world: str, n_images: int | None = None,
                         tcav_images: int | None = None) -> tuple[int, int]:
    """(discovery images, TCAV example images) of a bank build: the world's default
    discovery count, and the world's TCAV examples (default: twice as many) unless told
    otherwise."""
    recipe = WORLD_BANKS.get(world, {})
    n_images = n_images or recipe.get("images", 200)
    tcav_images = tcav_images or recipe.get("tcav_images") or 2 * n_images
    return n_images, max(n_images, tcav_images)


# Where a world bank's scenes start: unseen by training (seeds < 1,000,000) and by the
# held-out evaluation (10,000,000..).
WORLD_BANK_SEED = 20_000_000


def build_world_bank(captioner, n_images: int | None = None, tcav_images: int | None = None,
                     clusters: int | None = None, seed: int = WORLD_BANK_SEED,
                     examples: tuple | None = None, **options):
    """A bundle's concept bank from scenes of its own world, concepts named from the
    generator's ground truth: what ``build-concepts`` and ``train-default`` build.
    ``examples``: ``world_examples`` of these scenes, where a caller drew them already.
    Returns (bank, patches) with the scenes recorded in ``bank.info["source"]``."""
    world = captioner.config.get("world", "shapes")
    n_images, n_tcav = concept_image_counts(world, n_images, tcav_images)
    # the world's recipe, where a caller did not say otherwise (None: not said)
    recipe = world_bank_options(world)
    given = {k: v for k, v in options.items() if v is not None}
    if given.get("segmentation", recipe.get("segmentation")) != recipe.get("segmentation"):
        recipe.pop("resolutions", None)     # the world's levels are its segmentation's
    if given.get("discovery", "word") != "word" or given.get("embedding", "patch") != "patch":
        recipe.pop("relevant_per_word", None)   # it selects per-word discovery's patches
    options = {**recipe, **given}
    progress = options.get("progress", True)
    if examples is not None and len(examples[0]) != n_tcav:
        raise ValueError(f"the bank takes {n_tcav} example scenes, {len(examples[0])} given")
    images, captions, truths = examples or world_examples(world, n_tcav, seed,
                                                          captioner.input_size, progress)
    bank, patches = build_concept_bank(
        captioner, images, captions, truths, n_clusters=clusters or default_clusters(world),
        discovery_images=n_images, name_levels=WORLD_LEVELS.get(world, WORLD_LEVELS["shapes"]),
        seed=seed, **options)
    bank.info["source"] = f"{world} world, seeds {seed}..{seed + n_tcav - 1}"
    return bank, patches
