"""The faithfulness report over held-out synthetic scenes (``python -m source_code faithfulness``).

For each scene the model's own caption is explained (the words a user would
click); words are tied to scene objects by (color, shape), see ``pointing``.
"""
from __future__ import annotations

from collections import defaultdict

import numpy as np
from PIL import Image
from tqdm import tqdm

from . import gradcam as gradcam_lib
from . import saliency as saliency_lib
from .ace import REQUEST_RESOLUTION, coverage, segment, segment_importance
from .faithfulness import deletion_insertion, spearman
from .pointing import CATEGORY, pointing_hits, word_objects
from .target import caption_target

REPORT_METHODS = ("gradcam", "gradcampp", "smoothgrad", "attention", "random")


def _word_maps(captioner, scene, caption, methods, rng):
    pixels = captioner.preprocess(scene.image)
    fmap = captioner.features(pixels)
    target = caption_target(captioner, caption)
    grads = gradcam_lib.word_gradients(captioner, fmap, target)
    maps = {}
    if "gradcam" in methods:
        maps["gradcam"] = gradcam_lib.gradcam(captioner, fmap, target, gradients=grads)["words"]
    if "gradcampp" in methods:
        maps["gradcampp"] = gradcam_lib.gradcam(captioner, fmap, target, True, grads)["words"]
    if "attention" in methods and captioner.decoder.kind == "attention":
        _, alpha = captioner.decoder((fmap, target.tokens_in))
        maps["attention"] = alpha.numpy()[0, : target.n_words].reshape(-1, *captioner.grid)
    scored = [t for t, w in enumerate(target.words) if w in CATEGORY]
    if "smoothgrad" in methods and scored:
        # Only the words the pointing game and deletion score: SmoothGrad is the
        # report's costliest step, and other words' maps would go unused.
        sal = {t: saliency_lib.smoothgrad(captioner, pixels, target, t) for t in scored}
        blank = np.zeros_like(sal[scored[0]])
        maps["smoothgrad"] = np.stack([sal.get(t, blank) for t in range(target.n_words)])
    if "random" in methods:
        maps["random"] = rng.random((target.n_words,) + captioner.grid)
    return pixels, fmap, target, grads, maps


def ace_top_segment_hits(captioner, scene, caption, pixels, fmap, grads) -> list[tuple[str, bool]]:
    """For each color/shape word: is the most important segment on the word's object
    (at least half of the segment's pixels inside the object's mask)?"""
    view = np.asarray(pixels[0]).astype(np.uint8)
    labels = segment(view, REQUEST_RESOLUTION)
    cover = coverage(labels, captioner.grid)
    imp = segment_importance(fmap.numpy()[0], grads[1].numpy(), cover)
    objects = word_objects(scene, caption)
    size = captioner.input_size
    masks = [np.asarray(Image.fromarray(o.mask).resize((size, size))) for o in scene.objects]
    out = []
    for t, (word, obj) in enumerate(zip(caption.split(), objects or [])):
        if obj is None or CATEGORY.get(word) not in ("color", "shape"):
            continue
        top = int(np.argmax(imp[t]))
        on = masks[obj][labels == top].mean() >= 0.5
        out.append((CATEGORY[word], bool(on)))
    return out


def faithfulness_report(captioner, scenes, methods=REPORT_METHODS, deletion_scenes: int = 50,
                        progress: bool = True, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    counts = {m: defaultdict(lambda: defaultdict(int)) for m in methods}
    auc = {m: {"deletion": [], "insertion": []} for m in methods}
    ace = defaultdict(lambda: [0, 0])
    for n, scene in enumerate(tqdm(scenes, desc="explaining scenes", disable=not progress, unit="scene")):
        caption = captioner.caption(scene.image, beam_width=3)[0].text
        if not caption or word_objects(scene, caption) is None:
            continue
        pixels, fmap, target, grads, maps = _word_maps(captioner, scene, caption, methods, rng)
        for m, word_maps in maps.items():
            for _, cat, outcome in pointing_hits(word_maps, scene, caption):
                for key in (cat, "all"):
                    counts[m][key][outcome] += 1
            if n < deletion_scenes:
                idx = [t for t, w in enumerate(target.words) if w in CATEGORY]
                r = deletion_insertion(captioner, pixels, target, {t: word_maps[t] for t in idx})
                auc[m]["deletion"] += list(r["deletion"].values())
                auc[m]["insertion"] += list(r["insertion"].values())
        for cat, hit in ace_top_segment_hits(captioner, scene, caption, pixels, fmap, grads):
            for key in (cat, "color+shape"):
                ace[key][0] += hit
                ace[key][1] += 1
    report = {"scenes": len(scenes), "pointing": {}, "deletion_insertion": {}, "ace_top_segment": {}}
    for m in methods:
        report["pointing"][m] = {k: {"hit_rate": round(c["hit"] / max(sum(c.values()), 1), 4),
                                     "other_object": round(c["other"] / max(sum(c.values()), 1), 4),
                                     "words": sum(c.values())} for k, c in counts[m].items()}
        if auc[m]["deletion"]:
            report["deletion_insertion"][m] = {k: round(float(np.mean(v)), 4) for k, v in auc[m].items()}
    if "random" in report["deletion_insertion"] and "gradcam" in report["deletion_insertion"]:
        report["deletion_insertion"]["gradcam_over_random_deletion"] = round(
            report["deletion_insertion"]["gradcam"]["deletion"]
            / max(report["deletion_insertion"]["random"]["deletion"], 1e-9), 4)
    report["ace_top_segment"] = {k: {"hit_rate": round(h / max(n, 1), 4), "words": n}
                                 for k, (h, n) in ace.items()}
    return report


def sanity_check(captioner, randomized, scenes) -> dict:
    """Spearman correlation between the trained and the randomised model's Grad-CAM and
    saliency maps of the same caption (the trained model's)."""
    rows = defaultdict(list)
    for scene in scenes:
        caption = captioner.caption(scene.image, beam_width=1)[0].text or scene.caption
        maps = {}
        for name, model in (("trained", captioner), ("random", randomized)):
            pixels = model.preprocess(scene.image)
            target = caption_target(model, caption)
            cam = gradcam_lib.gradcam(model, model.features(pixels), target)["caption"]
            sal = saliency_lib.vanilla(model, pixels, target)[0]
            maps[name] = (cam, sal)
        rows["gradcam"].append(spearman(maps["trained"][0], maps["random"][0]))
        rows["saliency"].append(spearman(maps["trained"][1], maps["random"][1]))
    return {k: round(float(np.mean(v)), 4) for k, v in rows.items()}
