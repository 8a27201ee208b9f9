"""Faithfulness and sanity of explanation maps.

* Deletion / insertion AUC (Petsiuk et al. 2018, RISE): pixels are removed
  or inserted (into a blurred copy, as RISE does) in the order the map ranks
  them, in ``steps`` equal steps of 1/steps of the pixels, and the word's
  probability p(w_t | x, w_<t) (teacher forcing of the explained caption) is
  read after each step. The AUC is the trapezoid area under that curve over the
  fraction of pixels 0..1, RISE's own definition. A faithful map gives a low
  deletion AUC and a high insertion AUC; maps of random values on the feature
  grid, upsampled like the others, are the baseline.

  Removed pixels take the image's median colour rather than RISE's black: on a
  light page a black blob reads as a (large, dark) object and props up words
  like "large", while the median colour is the page itself.

  ``STEPS`` = 128: one step (200 px of a 160 px image) is smaller than the
  smallest object the shapes world draws (a small triangle, 244 px at the
  least over 3,000 held-out scenes), so a map that ranks a small object first
  is credited for it before the step removes half the background with it.
  With 16 steps (the old default) one step removed 6 % of the image, more
  than most small objects.
* ``deletion_curve``: one map's deletion curve and random-map baseline at
  request time (the page's trust score), everything batched through the
  compiled backbone.
* Pointing game on synthetic scenes (``pointing``).
* Model-randomisation sanity check (Adebayo et al. 2018): maps of the trained
  model and of the same architecture with random weights must differ (Spearman
  rank correlation of the maps well below 1).

Map orders break ties at random (``seed``): a ReLU'd Grad-CAM map is zero on
much of the image, and the order among those pixels is arbitrary.
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf
from PIL import Image, ImageFilter
from scipy import stats

from .maps import resize_map
from .target import CaptionTarget, caption_target, scores_and_attention

STEPS = 128            # the report's steps: one step < the smallest object
# deletion_curve's default: 2 + 23 x 2 = 48 images with one random map, about 0.27 s on
# models/shapes on a shared 2-core CPU (32 steps: 64 images, about 0.36-0.5 s there).
REQUEST_STEPS = 24
REQUEST_SIZE = 160       # ... at this input size; larger inputs take fewer (request_steps)
MIN_REQUEST_STEPS = 8
BLUR_RADIUS = 8
# Images per backbone call: 64 of 160 x 160 px (forward only, so memory is small;
# on a 2-core CPU larger batches were slower per image).
BATCH_PIXELS = 64 * 160 * 160


def batch_size_for(captioner) -> int:
    return max(1, BATCH_PIXELS // captioner.input_size ** 2)


def substrates(pixels, blur: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """pixels [1, S, S, 3] or [S, S, 3] -> (image, deleted image, blurred image or None
    without ``blur``), [S, S, 3] float32 each: the deleted image is the image's median
    colour everywhere."""
    x = np.asarray(pixels, np.float32)
    x = x[0] if x.ndim == 4 else x
    blurred = np.asarray(Image.fromarray(np.clip(x, 0, 255).astype(np.uint8)).filter(
        ImageFilter.GaussianBlur(BLUR_RADIUS)), np.float32) if blur else None
    fill = np.broadcast_to(np.median(x.reshape(-1, 3), axis=0), x.shape).astype(np.float32)
    return x, fill, blurred


def _order(m: np.ndarray, size: int, rng) -> np.ndarray:
    """Pixel indices, most important first (ties broken at random)."""
    m = np.asarray(m, np.float32)
    up = (m if m.shape == (size, size) else resize_map(m, size, size)).ravel()
    return np.lexsort((rng.random(up.size), -up))


def pixel_ranks(m: np.ndarray, size: int, rng) -> np.ndarray:
    """rank[p] = position of pixel p (row-major) in the map's order, 0 = most important."""
    order = _order(m, size, rng)
    ranks = np.empty(order.size, np.int32)
    ranks[order] = np.arange(order.size, dtype=np.int32)
    return ranks


def step_counts(n_pixels: int, steps: int) -> np.ndarray:
    """Pixels removed (or inserted) after step k = 0..steps: round(k / steps * n)."""
    return np.round(np.arange(steps + 1) * n_pixels / steps).astype(np.int64)


def fractions(steps: int) -> np.ndarray:
    return np.arange(steps + 1) / steps


def auc(probabilities) -> float:
    """Trapezoid area under a curve sampled at equally spaced fractions 0..1."""
    p = np.asarray(probabilities, np.float64)
    return float((p.sum() - 0.5 * (p[0] + p[-1])) / (p.size - 1))


def captioner_scorer(captioner, target: CaptionTarget):
    """The probability function of the explained caption: images [B, S, S, 3] -> s_t for
    every word [B, T] (log-probabilities), through the compiled backbone and the
    compiled teacher forcing."""
    def score(images):
        fmap = captioner.features(tf.convert_to_tensor(images, tf.float32))
        return scores_and_attention(captioner, fmap, target)[0].numpy()
    return score


def perturbation_curves(score, pixels, ranks, steps: int = STEPS, kinds=("deletion", "insertion"),
                        batch_size: int = 64, known_ends: dict | None = None) -> dict:
    """Every score along each map's deletion (and insertion) path.

    score: images [B, S, S, 3] -> [B, K] (log-probabilities, e.g. ``captioner_scorer``);
    ranks: one ``pixel_ranks`` array per map. Returns {kind: [len(ranks), steps + 1, K]}.
    The end points (the image, the fully deleted image, the blurred image) are shared
    by all maps and scored once (not at all when ``known_ends`` {name: scores} has them);
    the images are built batch by batch, so memory stays at one batch whatever the
    number of maps."""
    x, fill, blurred = substrates(pixels, blur="insertion" in kinds)
    size = x.shape[0]
    counts = step_counts(size * size, steps)
    ends = {"image": x, "deleted": fill}
    if "insertion" in kinds:
        ends["blurred"] = blurred
    known = {k: v for k, v in (known_ends or {}).items() if k in ends}
    ends = {k: v for k, v in ends.items() if k not in known}
    rows = [(j, kind, k) for kind in kinds for j in range(len(ranks)) for k in range(1, steps)]
    rank_arr = np.stack([np.asarray(r, np.int32) for r in ranks]) if ranks else None
    a = {"deletion": fill.reshape(-1, 3), "insertion": x.reshape(-1, 3)}     # the kept set's pixels
    b = {"deletion": x.reshape(-1, 3), "insertion": None if blurred is None   # the others'
         else blurred.reshape(-1, 3)}
    total = len(ends) + len(rows)            # even batches: no small one at the end
    batch_size = max(len(ends), 1, -(-total // -(-total // max(1, int(batch_size)))))
    scored = []
    first, start = list(ends.values()), 0
    while start < len(rows) or first:
        chunk = rows[start: start + batch_size - len(first)]
        start += len(chunk)
        batch = np.empty((len(first) + len(chunk), size * size, 3), np.float32)
        for i, end in enumerate(first):
            batch[i] = end.reshape(-1, 3)
        at, first = len(first), []
        for kind in kinds:             # rows are kind-major, so this keeps their order
            sel = [(j, k) for j, kd, k in chunk if kd == kind]
            if sel:
                js, ks = np.array(sel).T
                keep = rank_arr[js] < counts[ks][:, None]                  # [n, S*S]
                np.copyto(batch[at: at + len(sel)], np.where(keep[..., None], a[kind], b[kind]))
                at += len(sel)
        scored.append(np.asarray(score(batch.reshape(-1, size, size, 3))))
    scores = np.concatenate(scored)
    end_scores = dict(zip(ends, scores[: len(ends)]), **known)
    body = scores[len(ends):].reshape((len(kinds), len(ranks), steps - 1) + scores.shape[1:])
    out = {}
    for i, kind in enumerate(kinds):
        first_s, last_s = ((end_scores["image"], end_scores["deleted"]) if kind == "deletion"
                           else (end_scores["blurred"], end_scores["image"]))
        curve = np.empty((len(ranks), steps + 1) + scores.shape[1:], np.float32)
        curve[:, 0], curve[:, -1] = first_s, last_s
        curve[:, 1:-1] = body[i]
        out[kind] = curve
    return out


def perturbation_scores(captioner, pixels, target: CaptionTarget, ranks, steps: int = STEPS,
                        kinds=("deletion", "insertion"), batch_size: int | None = None) -> dict:
    """``perturbation_curves`` of the captioner's word scores: {kind: [maps, steps + 1, T]}."""
    return perturbation_curves(captioner_scorer(captioner, target), pixels, ranks, steps, kinds,
                               batch_size or batch_size_for(captioner))


def deletion_insertion(captioner, pixels, target, word_maps: dict, steps: int = STEPS,
                       seed: int = 0, insertion: bool = True, return_curves: bool = False,
                       batch_size: int | None = None, word_of: dict | None = None,
                       score=None) -> dict:
    """word_maps {word index: map on any grid}. Returns {"deletion": {i: auc},
    "insertion": {i: auc}} (and "curves": {kind: {i: probabilities}} with return_curves).
    With ``word_of`` {key: word index} the keys of word_maps are free (several maps of
    one word, e.g. several methods'). All maps' images go through the backbone in
    shared batches. ``score`` (images -> log-probabilities [B, T]) replaces the
    captioner's (then captioner and target are not used): a constructed model."""
    rng = np.random.default_rng(seed)
    size = int(np.asarray(pixels).shape[-2])
    items = list(word_maps.items())
    ranks = [pixel_ranks(m, size, rng) for _, m in items]
    kinds = ("deletion", "insertion") if insertion else ("deletion",)
    if score is None:
        scores = perturbation_scores(captioner, pixels, target, ranks, steps, kinds, batch_size)
    else:
        scores = perturbation_curves(score, pixels, ranks, steps, kinds, batch_size or 64)
    out = {"deletion": {}, "insertion": {}}
    curves = {k: {} for k in kinds}
    for j, (i, _) in enumerate(items):
        word = i if word_of is None else word_of[i]
        for kind in kinds:
            p = np.exp(scores[kind][j, :, word].astype(np.float64))
            out[kind][i] = auc(p)
            curves[kind][i] = p.tolist()
    if return_curves:
        out["curves"] = curves
    return out


def deletion_curve(captioner, pixels, target, word_index, heatmap, steps: int = REQUEST_STEPS,
                   random_maps: int = 1, seed: int = 0, batch_size: int | None = None) -> dict:
    """The deletion curve of one explanation map, with its random-map baseline.

    pixels: [1, S, S, 3] (or [S, S, 3]) raw pixels as ``captioner.preprocess`` gives;
    target: a ``CaptionTarget`` or the caption (str or words); word_index: the word the
    map explains, or None for the whole caption; heatmap: the map, on any grid
    (the feature grid, the JSON grid, or pixels). ``random_maps`` maps of uniform
    random values on the captioner's feature grid (seeded by ``seed``), upsampled like
    the heatmap, give the baseline.

    The probability read after each step is p(w_t | x, w_<t) for a word; for the whole
    caption it is the caption's probability exp(sum_t s_t) = p(w_1..w_T | x) (teacher
    forcing, end token not counted): the quantity the caption's maps explain
    (s = sum_t s_t), not the mean word probability.

    Returns {"fractions", "probability", "random_probability" (the mean over the
    random maps at each fraction), "auc", "random_auc" (mean over the random maps),
    "random_auc_std" (their standard deviation, 0 for one map), "random_aucs",
    "steps", "word_index"}; AUCs are trapezoid areas over the fraction 0..1. One call
    scores 2 + (steps - 1) * (1 + random_maps) images (48 for the defaults), in
    batches of 64 at 160 px: one backbone call for the defaults. ``steps`` trades time
    for resolution: the report's ``STEPS`` (128) is finer than any object but costs
    2 + 127 x (1 + random_maps) images."""
    return deletion_curves(captioner, pixels, target, word_index, [heatmap], steps,
                           random_maps, seed, batch_size)[0]


def request_steps(captioner) -> int:
    """Deletion steps for a request: ``REQUEST_STEPS`` at 160 px, fewer for larger inputs
    so that one map costs about as much backbone work on every bundle (12 at 224 px)."""
    scaled = REQUEST_STEPS * (REQUEST_SIZE / captioner.input_size) ** 2
    return int(np.clip(round(scaled), MIN_REQUEST_STEPS, REQUEST_STEPS))


def random_baseline(captioner, pixels, target, steps: int = REQUEST_STEPS, random_maps: int = 1,
                    seed: int = 0, batch_size: int | None = None) -> np.ndarray:
    """Log-probabilities of every word along the deletion paths of ``random_maps`` random
    maps on the feature grid: [random_maps + 1, steps + 1, T]; the last row holds the
    two end points (the image and the fully deleted image) at its first and last step.
    It does not depend on the explained map or word, so one frame's baseline serves
    every map of it (``deletion_curves(baseline=...)``)."""
    x, target = _checked_pixels_and_target(captioner, pixels, target)
    steps, random_maps = _checked_steps(steps, random_maps)
    if not random_maps:                  # the end points alone
        end_scores = captioner_scorer(captioner, target)(np.stack(substrates(x, blur=False)[:2]))
        ends = np.full((1, steps + 1, target.n_words), np.nan, np.float32)
        ends[0, 0], ends[0, -1] = end_scores
        return ends
    rng = np.random.default_rng(seed)
    randoms = [rng.random(captioner.grid) for _ in range(random_maps)]
    ranks = [pixel_ranks(m, captioner.input_size, rng) for m in randoms]
    logp = perturbation_scores(captioner, x, target, ranks, steps, ("deletion",),
                               batch_size)["deletion"]
    ends = np.full((1,) + logp.shape[1:], np.nan, np.float32)
    ends[0, 0], ends[0, -1] = logp[0, 0], logp[0, -1]
    return np.concatenate([logp, ends])


def deletion_curves(captioner, pixels, target, word_index, heatmaps, steps: int = REQUEST_STEPS,
                    random_maps: int = 1, seed: int = 0, batch_size: int | None = None,
                    baseline: np.ndarray | None = None) -> list[dict]:
    """``deletion_curve`` for several maps of the same word (one per method), scored in
    one batch against one shared set of random maps: 2 + (steps - 1) x (n + random_maps)
    images instead of n times 2 + (steps - 1) x (1 + random_maps). With ``baseline``
    (``random_baseline`` of this frame, caption, steps and random maps) only the maps'
    own (steps - 1) x n images are scored."""
    x, target = _checked_pixels_and_target(captioner, pixels, target)
    maps = [np.asarray(h, np.float32) for h in heatmaps]
    if not maps:
        raise ValueError("no heatmap to score")
    for m in maps:
        if m.ndim != 2 or m.size == 0 or not np.all(np.isfinite(m)):
            raise ValueError("heatmap must be a finite 2-D map")
    if word_index is not None and not 0 <= int(word_index) < target.n_words:
        raise ValueError(f"word index {word_index} is outside the caption's {target.n_words} words")
    steps, random_maps = _checked_steps(steps, random_maps)
    if baseline is None:
        baseline = random_baseline(captioner, x, target, steps, random_maps, seed, batch_size)
    elif baseline.shape[:2] != (random_maps + 1, steps + 1):
        raise ValueError("the baseline was computed for other steps or random maps")
    rng = np.random.default_rng([seed, 1])      # the maps' tie-breaks, apart from the baseline's
    ranks = [pixel_ranks(mm, captioner.input_size, rng) for mm in maps]
    ends = {"image": baseline[-1, 0], "deleted": baseline[-1, -1]}
    own = perturbation_curves(captioner_scorer(captioner, target), x, ranks, steps, ("deletion",),
                              batch_size or batch_size_for(captioner), known_ends=ends)["deletion"]
    logp = np.concatenate([own, baseline[:-1]]).astype(np.float64)
    logp = logp.sum(-1) if word_index is None else logp[..., int(word_index)]
    probs = np.exp(logp)                             # [n + random_maps, steps + 1]
    n = len(maps)
    random_aucs = [auc(p) for p in probs[n:]]
    shared = {
        "fractions": fractions(steps).tolist(),
        "random_probability": probs[n:].mean(0).tolist() if random_maps else [],
        "random_auc": float(np.mean(random_aucs)) if random_aucs else None,
        "random_auc_std": float(np.std(random_aucs)) if random_aucs else None,
        "random_aucs": random_aucs,
        "steps": steps,
        "word_index": None if word_index is None else int(word_index),
    }
    return [dict(shared, probability=probs[k].tolist(), auc=auc(probs[k])) for k in range(n)]


def _checked_pixels_and_target(captioner, pixels, target) -> tuple[np.ndarray, CaptionTarget]:
    if not isinstance(target, CaptionTarget):
        target = caption_target(captioner, target)
    x = np.asarray(pixels, np.float32)
    if x.ndim == 3:
        x = x[None]
    size = captioner.input_size
    if x.shape != (1, size, size, 3):
        raise ValueError(f"pixels must be [1, {size}, {size}, 3], got {list(x.shape)}")
    return x, target


def _checked_steps(steps, random_maps) -> tuple[int, int]:
    steps, random_maps = int(steps), int(random_maps)
    if steps < 2 or random_maps < 0:
        raise ValueError("steps must be >= 2 and random_maps >= 0")
    return steps, random_maps


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    r = stats.spearmanr(np.ravel(a), np.ravel(b)).statistic
    return 0.0 if np.isnan(r) else float(r)


def randomized_copy(captioner, seed: int = 1):
    """The same architecture and vocabulary with freshly initialised weights."""
    import keras

    from ..model.backbone import BackboneSpec
    from ..model.captioner import Captioner
    keras.utils.set_random_seed(seed)
    spec = BackboneSpec.from_dict(dict(captioner.config["backbone"], weights=None))
    copy = Captioner.build(captioner.vocab, spec, captioner.config["decoder"],
                           captioner.max_length)
    copy.set_imagenet_prior(*captioner.imagenet_prior())             # on its random head
    return copy
