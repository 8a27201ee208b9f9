"""Building a bundle's ACE concept bank offline (see ``ace`` for the method and its departures)."""
from __future__ import annotations

import logging
import shutil
from collections import defaultdict
from pathlib import Path

import numpy as np
import tensorflow as tf
from PIL import Image
from scipy import stats
from sklearn.cluster import KMeans
from sklearn.linear_model import LogisticRegression
from tqdm import tqdm

from .ace import BANK_DIR, RESOLUTIONS, ConceptBank, coverage, region_embeddings, segment
from .gradcam import word_gradients
from .target import caption_target

log = logging.getLogger(__name__)
PATCH_SIDE, PATCHES_PER_CONCEPT = 64, 5
GREY = 117  # ACE fills the outside of a segment with this grey
# Words too common to name a concept after (they follow every image).
FUNCTION_WORDS = {"a", "an", "the", "of", "in", "on", "at", "with", "and", "is", "are", "to",
                  "its", "his", "her", "their", "while", "for", "by", "from", "into", "up",
                  "left", "right", "above", "below"}


def _unit(x):
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-8)


def _patch(image, labels, seg) -> np.ndarray:
    mask = labels == seg
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    crop = np.where(mask[..., None], image, GREY)[rows[0]: rows[-1] + 1, cols[0]: cols[-1] + 1]
    return np.asarray(Image.fromarray(crop.astype(np.uint8)).resize((PATCH_SIDE, PATCH_SIDE)))


def _cav(pos, neg, seed) -> np.ndarray:
    x = np.concatenate([pos, neg])
    y = np.r_[np.ones(len(pos)), np.zeros(len(neg))]
    clf = LogisticRegression(C=1.0, max_iter=500, random_state=seed).fit(x, y)
    return _unit(clf.coef_[0])


def build_concept_bank(captioner, images, captions, n_clusters: int = 20,
                       resolutions=RESOLUTIONS, max_per_concept: int = 40,
                       min_image_fraction: float = 0.05, random_sets: int = 10,
                       min_word_examples: int = 5, alpha: float = 0.05, seed: int = 0,
                       progress: bool = True) -> tuple[ConceptBank, dict]:
    """images: list of HxWx3 uint8; captions: list (per image) of lists of word lists.
    Returns the bank and the patches to save {concept name: [uint8 arrays]}."""
    rng = np.random.default_rng(seed)
    grid = captioner.grid
    emb, owner, where = [], [], []            # embedding, image index, (image, res, seg)
    views, labelings = [], {}
    word_grads = defaultdict(list)            # word -> [C] spatially summed ds_t/dA
    bar = tqdm(range(len(images)), desc="segmenting and embedding", disable=not progress, unit="img")
    for i in bar:
        pixels = captioner.preprocess(images[i])
        view = np.asarray(pixels[0]).astype(np.uint8)
        views.append(view)
        fmap = captioner.features(pixels)
        f = fmap.numpy()[0]
        for r in resolutions:
            labels = segment(view, r)
            labelings[(i, r)] = labels
            e = region_embeddings(f, coverage(labels, grid))
            for s in range(len(e)):
                emb.append(e[s])
                owner.append(i)
                where.append((i, r, s))
        for words in captions[i]:
            words = [w for w in words if w in captioner.vocab]
            if not words:
                continue
            target = caption_target(captioner, words)
            _, grads = word_gradients(captioner, fmap, target)
            summed = tf.reduce_sum(grads, axis=[1, 2]).numpy()
            for w, g in zip(words, summed):
                word_grads[w].append(g)
    emb = np.asarray(emb, np.float32)
    owner = np.asarray(owner)
    unit = _unit(emb)
    log.info("%d segments from %d images; clustering into %d", len(emb), len(images), n_clusters)
    km = KMeans(n_clusters=n_clusters, n_init=4, random_state=seed).fit(unit)
    min_images = max(3, int(min_image_fraction * len(images)))
    concepts = []
    for k in range(n_clusters):
        members = np.flatnonzero(km.labels_ == k)
        dist = np.linalg.norm(unit[members] - km.cluster_centers_[k], axis=1)
        kept = members[np.argsort(dist)[:max_per_concept]]   # ACE: the segments nearest the centre
        if len(kept) < 10 or len(set(owner[kept])) < min_images:
            continue                                           # ACE: too rare to be a concept
        concepts.append(kept)
    log.info("%d concepts kept after filtering", len(concepts))

    def random_set(size, exclude):
        pool = np.setdiff1d(np.arange(len(emb)), exclude)
        return rng.choice(pool, size=min(size, len(pool)), replace=False)

    cavs, cav_runs = [], []
    for kept in tqdm(concepts, desc="training CAVs", disable=not progress, unit="concept"):
        runs = [_cav(unit[kept], unit[random_set(len(kept), kept)], seed + j)
                for j in range(random_sets)]
        cav_runs.append(runs)
        cavs.append(_unit(np.mean(runs, 0)))
    random_runs = []
    for j in range(random_sets):
        a = random_set(max_per_concept, [])
        random_runs.append(_cav(unit[a], unit[random_set(max_per_concept, a)], seed + 1000 + j))

    names = [f"concept {n + 1}" for n in range(len(concepts))]
    word_scores = {}
    for w, grads in word_grads.items():
        if len(grads) < min_word_examples:
            continue
        g = np.asarray(grads)
        rand = np.array([(g @ v > 0).mean() for v in random_runs])
        word_scores[w] = {}
        for name, runs in zip(names, cav_runs):
            scores = np.array([(g @ v > 0).mean() for v in runs])
            p = float(stats.ttest_ind(scores, rand, equal_var=False).pvalue) if scores.std() + rand.std() > 0 else 1.0
            word_scores[w][name] = {
                "tcav": round(float(scores.mean()), 4), "p_value": round(p, 6),
                # Bonferroni over the concepts tested for this word
                "significant": bool(p < alpha / max(len(concepts), 1) and abs(scores.mean() - rand.mean()) > 0.1)}
    # Name each concept after the words it drives most (significant, TCAV above one half).
    for n, name in enumerate(names):
        top = sorted(((s[name]["tcav"], w) for w, s in word_scores.items()
                      if w not in FUNCTION_WORDS and s[name]["significant"] and s[name]["tcav"] > 0.5),
                     reverse=True)[:2]
        if top:
            names[n] = f"{name} ({', '.join(w for _, w in top)})"
    for w in word_scores:   # re-key by the final names
        word_scores[w] = {new: word_scores[w][old] for old, new in
                          zip([f"concept {n + 1}" for n in range(len(concepts))], names)}
    patches = {}
    for name, kept in zip(names, concepts):
        patches[name] = []
        for idx in kept[:PATCHES_PER_CONCEPT]:
            i, r, s = where[idx]
            patches[name].append(_patch(views[i], labelings[(i, r)], s))
    centroids = _unit(np.stack([unit[kept].mean(0) for kept in concepts])) if concepts else np.zeros((0, emb.shape[1]))
    info = {"method": "ACE (Ghorbani et al. 2019), adapted to caption words", "images": len(images),
            "segments": int(len(emb)), "resolutions": list(resolutions), "clusters": n_clusters,
            "concepts": len(concepts), "random_sets": random_sets, "layer": "top_activation",
            "embedding": "coverage-weighted region mean of the image's feature map",
            "significance": f"Welch t-test vs random CAVs, Bonferroni alpha={alpha}, |delta| > 0.1"}
    bank = ConceptBank(names, centroids, np.asarray(cavs).reshape(len(concepts), -1), word_scores,
                       info, {})
    return bank, patches


def save_bank(bank: ConceptBank, patches: dict, bundle_dir) -> Path:
    """Write the bank into the bundle (concepts/, patches as PNG files). It is built in a
    temporary folder and swapped in, so an interrupted build leaves the old bank intact."""
    bundle_dir = Path(bundle_dir)
    staging = bundle_dir / ".concepts-build"
    shutil.rmtree(staging, ignore_errors=True)
    (staging / BANK_DIR / "patches").mkdir(parents=True)
    try:
        for n, (name, arrays) in enumerate(patches.items()):
            files = []
            for j, a in enumerate(arrays):
                fname = f"c{n + 1:02d}_{j}.png"
                Image.fromarray(a).save(staging / BANK_DIR / "patches" / fname)
                files.append(fname)
            bank.patches[name] = files
        bank.save(staging)
        final = bundle_dir / BANK_DIR
        if final.exists():
            shutil.rmtree(final)
        (staging / BANK_DIR).replace(final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    bank.root = final
    return final
