"""The faithfulness report over held-out synthetic scenes (``python -m source_code faithfulness``).

For each scene the model's own caption is explained (the words a user would
click); words are tied to scene objects by the scene itself (``objects_named_by``:
(color, shape) in the shapes world, the category noun in the objects world).

Every figure is given per word kind (size, color, shape in the shapes world,
object in the objects world; articles and relation words name no object and are
not scored) and per *sharing* of the word's attribute in the scene: "unique" when only the described object has it, "shared" when the other
object has it too ("large" in "a large red circle left of a large blue
square": deleting one large object leaves "large" true), "mismatch" when the
word is wrong for its object (a size the object does not have). Groups are
named ``size``, ``unique``, ``size/unique``, ... and ``all``. An objects-world
scene never holds two objects of one category, so its nouns are all "unique".

The random-map baseline is run with ``random_seeds`` seeds (random maps drawn
afresh per seed); its figures are the mean over the seeds, with the sample
standard deviation over the seeds as ``*_std``.
"""
from __future__ import annotations

import hashlib
import json
import subprocess
from collections import defaultdict
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from ..files import atomic_write_text

from . import gradcam as gradcam_lib
from . import saliency as saliency_lib
from .ace import coverage, segment, segment_importance
from .faithfulness import STEPS, BLUR_RADIUS, deletion_insertion, spearman
from .pointing import WORLD_TOLERANCE, pointing_hits, word_objects
from .target import caption_target

REPORT_METHODS = ("gradcam", "gradcampp", "smoothgrad", "attention", "random")
WORD_KINDS = ("size", "color", "shape", "object")
SHARING = ("unique", "shared", "mismatch")
GROUPS = (("all",) + WORD_KINDS + SHARING
          + tuple(f"{k}/{s}" for k in WORD_KINDS for s in SHARING))
POINTING_TOLERANCE = WORLD_TOLERANCE["shapes"]
SCHEMA = "faithfulness-report/2"
RESULT_SCHEMA = "faithfulness-result/1"
# The targets per world: the shapes bundle's from "Faithfulness you can trust", the
# objects bundle's pointing from the default-model issue (object words >= 0.85).
TARGETS = {"shapes": {"gradcam_deletion_over_random_unique": {"max": 0.5},
                      "gradcam_pointing_all": {"min": 0.95}},
           "objects": {"gradcam_deletion_over_random_unique": {"max": 0.5},
                       "gradcam_pointing_all": {"min": 0.85}}}


def groups_of(kind: str, sharing: str | None) -> tuple[str, ...]:
    """The groups a word of this kind and sharing counts in."""
    if sharing is None:
        return ("all", kind)
    return ("all", kind, sharing, f"{kind}/{sharing}")


def attribute_sharing(scene, caption: str) -> list[str | None]:
    """Per word of ``caption``: "unique", "shared" or "mismatch" for the scored words
    tied to a scene object (size, color, shape; an objects-world noun is its
    object's category), None for the others."""
    objects = word_objects(scene, caption)
    words = caption.split()
    if objects is None:
        return [None] * len(words)
    out = []
    for word, obj in zip(words, objects):
        kind = scene.word_kind(word)
        attribute = "category" if kind == "object" else kind
        if obj is None or kind is None or not hasattr(scene.objects[obj], attribute):
            out.append(None)
            continue
        own = getattr(scene.objects[obj], attribute) == word
        other = any(getattr(o, attribute, None) == word
                    for i, o in enumerate(scene.objects) if i != obj)
        out.append("mismatch" if not own else "shared" if other else "unique")
    return out


def scored_words(scene, target) -> list[int]:
    """Indices of the caption's words that name an attribute of an object (the words
    pointing and deletion score)."""
    return [t for t, w in enumerate(target.words) if scene.word_kind(w) is not None]


def random_maps(n_words: int, grid, seed: int, scene_index: int, random_seed: int) -> np.ndarray:
    """Uniform random maps [T, h, w] on the feature grid, one draw per (seed, scene, k)."""
    rng = np.random.default_rng([seed, random_seed, scene_index])
    return rng.random((n_words,) + tuple(grid))


def _word_maps(captioner, scene, caption, methods, rng=None, *, scene_index: int = 0,
               seed: int = 0, random_seeds: int = 1):
    """(pixels, fmap, target, grads, maps): maps {method: [T, h, w]}; "random" is
    [random_seeds, T, h, w]."""
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
    scored = scored_words(scene, target)
    if "smoothgrad" in methods and scored:
        # Only the words the pointing game and deletion score: SmoothGrad is the
        # report's costliest step, and other words' maps would go unused.
        sal = {t: saliency_lib.smoothgrad(captioner, pixels, target, t) for t in scored}
        blank = np.zeros_like(sal[scored[0]])
        maps["smoothgrad"] = np.stack([sal.get(t, blank) for t in range(target.n_words)])
    if "random" in methods:
        maps["random"] = np.stack([random_maps(target.n_words, captioner.grid, seed, scene_index, k)
                                   for k in range(random_seeds)])
    return pixels, fmap, target, grads, maps


# SLIC segments of the view the report's segment ranking is scored on (its result files'
# figures); the app's request-time matching to concepts uses ace.REQUEST_RESOLUTION.
REPORT_SEGMENTS = 80


def ace_top_segment_hits(captioner, scene, caption, pixels, fmap, grads) -> list[tuple[str, bool]]:
    """For each color/shape word (object noun in the objects world): is the most
    important segment on the word's object (at least half of the segment's pixels
    inside the object's mask)?"""
    view = np.asarray(pixels[0]).astype(np.uint8)
    labels = segment(view, REPORT_SEGMENTS)
    cover = coverage(labels, captioner.grid)
    imp = segment_importance(fmap.numpy()[0], grads[1].numpy(), cover)
    objects = word_objects(scene, caption)
    size = captioner.input_size
    masks = [np.asarray(Image.fromarray(o.mask).resize((size, size))) for o in scene.objects]
    out = []
    for t, (word, obj) in enumerate(zip(caption.split(), objects or [])):
        kind = scene.word_kind(word)
        if obj is None or kind not in ("color", "shape", "object"):
            continue
        top = int(np.argmax(imp[t]))
        on = masks[obj][labels == top].mean() >= 0.5
        out.append((kind, bool(on)))
    return out


def _std(values) -> float:
    return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def _pointing_figures(runs: list[dict]) -> dict:
    """runs: one {group: {outcome: count}} per seed -> {group: figures} (mean over runs)."""
    out = {}
    for g in GROUPS:
        per_run = []
        for counts in runs:
            c = counts.get(g)
            n = sum(c.values()) if c else 0
            if n:
                per_run.append({"hit_rate": c["hit"] / n, "other_object": c["other"] / n,
                                "background": c["background"] / n, "words": n})
        if not per_run:
            continue
        fig = {k: round(float(np.mean([r[k] for r in per_run])), 4)
               for k in ("hit_rate", "other_object", "background")}
        fig["words"] = per_run[0]["words"]
        if len(runs) > 1:
            fig["hit_rate_std"] = round(_std([r["hit_rate"] for r in per_run]), 4)
            fig["seeds"] = len(per_run)
        out[g] = fig
    return out


def _auc_figures(runs: list[dict]) -> dict:
    """runs: one {group: {"deletion": [...], "insertion": [...]}} per seed -> {group: figures}."""
    out = {}
    for g in GROUPS:
        per_run = [r[g] for r in runs if r.get(g) and r[g]["deletion"]]
        if not per_run:
            continue
        fig = {}
        for kind in ("deletion", "insertion"):
            means = [float(np.mean(r[kind])) for r in per_run if r[kind]]
            if means:
                fig[kind] = round(float(np.mean(means)), 4)
                if len(runs) > 1:
                    fig[f"{kind}_std"] = round(_std(means), 4)
        fig["words"] = len(per_run[0]["deletion"])
        if len(runs) > 1:
            fig["seeds"] = len(per_run)
        out[g] = fig
    return out


def faithfulness_report(captioner, scenes, methods=REPORT_METHODS, deletion_scenes=50,
                        progress: bool = True, seed: int = 0, *, deletion_steps: int = STEPS,
                        deletion_methods=None, random_seeds: int = 3,
                        smoothgrad_scenes: int | None = None,
                        tolerance: int = POINTING_TOLERANCE) -> dict:
    """Pointing game (all scenes; SmoothGrad, the costly one, on the first
    ``smoothgrad_scenes``), deletion/insertion AUC (the first ``deletion_scenes`` scenes,
    an int or {method: scenes}; ``deletion_steps`` steps; for ``deletion_methods``,
    default all methods) and the ACE top-segment check, per method and word group
    (see the module's docstring)."""
    methods = tuple(methods)
    deletion_methods = tuple(methods if deletion_methods is None else deletion_methods)
    if not isinstance(deletion_scenes, dict):
        deletion_scenes = {m: int(deletion_scenes) for m in methods}
    deletion_scenes = {m: int(deletion_scenes.get(m, 0)) if m in deletion_methods else 0
                       for m in methods}
    if smoothgrad_scenes is None:
        smoothgrad_scenes = len(scenes)
    used = {m: 0 for m in methods}      # scenes each method's deletion scored
    pointed = {m: 0 for m in methods}   # scenes each method's pointing scored
    random_seeds = max(1, int(random_seeds)) if "random" in methods else 1
    runs_of = {m: random_seeds if m == "random" else 1 for m in methods}
    counts = {m: [defaultdict(lambda: defaultdict(int)) for _ in range(runs_of[m])] for m in methods}
    aucs = {m: [defaultdict(lambda: {"deletion": [], "insertion": []}) for _ in range(runs_of[m])]
            for m in methods}
    ace = defaultdict(lambda: [0, 0])
    explained = used_for_deletion = 0
    for n, scene in enumerate(tqdm(scenes, desc="explaining scenes", disable=not progress, unit="scene")):
        caption = captioner.caption(scene.image, beam_width=3)[0].text
        if not caption or word_objects(scene, caption) is None:
            continue
        explained += 1
        here = tuple(m for m in methods if m != "smoothgrad" or n < smoothgrad_scenes)
        pixels, fmap, target, grads, maps = _word_maps(captioner, scene, caption, here,
                                                       scene_index=n, seed=seed,
                                                       random_seeds=random_seeds)
        sharing = attribute_sharing(scene, caption)
        for m in maps:
            pointed[m] += 1
        scored = scored_words(scene, target)
        for m, word_maps in maps.items():
            runs = word_maps if m == "random" else [word_maps]
            for r, run_maps in enumerate(runs):
                for t, (word, kind, outcome) in _indexed_hits(run_maps, scene, caption, tolerance):
                    for g in groups_of(kind, sharing[t]):
                        counts[m][r][g][outcome] += 1
        deleting = [m for m in maps if n < deletion_scenes[m]]
        if deleting and scored:
            used_for_deletion += 1
            for m in deleting:
                used[m] += 1
            jobs = [(m, r, t, run_maps[t]) for m, word_maps in maps.items() if m in deleting
                    for r, run_maps in enumerate(word_maps if m == "random" else [word_maps])
                    for t in scored]
            res = deletion_insertion(captioner, pixels, target,
                                     {j: job[3] for j, job in enumerate(jobs)}, deletion_steps,
                                     seed=seed * 1_000_003 + n,
                                     word_of={j: job[2] for j, job in enumerate(jobs)})
            for j, (m, r, t, _) in enumerate(jobs):
                for g in groups_of(scene.word_kind(target.words[t]), sharing[t]):
                    aucs[m][r][g]["deletion"].append(res["deletion"][j])
                    aucs[m][r][g]["insertion"].append(res["insertion"][j])
        for cat, hit in ace_top_segment_hits(captioner, scene, caption, pixels, fmap, grads):
            for key in (cat, "color+shape" if cat != "object" else "all"):
                ace[key][0] += hit
                ace[key][1] += 1
    report = {
        "schema": SCHEMA,
        "scenes": len(scenes), "scenes_explained": explained, "deletion_scenes": used_for_deletion,
        "settings": {"methods": list(methods),
                     "deletion_methods": [m for m in methods if deletion_scenes[m]],
                     "pointing_tolerance_px": tolerance, "deletion_steps": int(deletion_steps),
                     "step_pixels": round(captioner.input_size ** 2 / deletion_steps, 1),
                     "input_size": captioner.input_size, "random_seeds": random_seeds,
                     "random_maps": "uniform random values on the feature grid, per word and seed",
                     "deleted_pixels": "image's median colour",
                     "insertion_substrate": f"Gaussian blur, radius {BLUR_RADIUS} px",
                     "auc": "trapezoid over the fraction of pixels 0..1",
                     "probability": "p(w_t | image, w_<t), teacher forcing of the model's caption",
                     "caption_search": "beam 3", "seed": seed},
        "scenes_scored": {"pointing": {m: pointed[m] for m in methods if pointed[m]},
                          "deletion": {m: used[m] for m in methods if used[m]}},
        "pointing": {}, "deletion_insertion": {}, "ace_top_segment": {}}
    for m in methods:
        if not pointed[m]:          # not run (SmoothGrad on no scene, attention of a merge decoder)
            continue
        report["pointing"][m] = _pointing_figures(counts[m])
        if used[m]:
            report["deletion_insertion"][m] = _auc_figures(aucs[m])
    di = report["deletion_insertion"]
    if "random" in di and "gradcam" in di:
        # Grad-CAM's mean deletion AUC over the random maps' (mean over seeds), and the
        # ratio's spread over the random seeds.
        ratio = {}
        for g in di["gradcam"]:
            ours = aucs["gradcam"][0][g]["deletion"]
            per_seed = [float(np.mean(r[g]["deletion"])) for r in aucs["random"] if r[g]["deletion"]]
            if ours and per_seed:
                mean = float(np.mean(ours))
                ratio[g] = {"ratio": round(mean / max(float(np.mean(per_seed)), 1e-9), 4),
                            "std": round(_std([mean / max(p, 1e-9) for p in per_seed]), 4),
                            "words": len(ours)}
        report["gradcam_over_random_deletion"] = ratio
    report["ace_top_segment"] = {k: {"hit_rate": round(h / max(n, 1), 4), "words": n}
                                 for k, (h, n) in ace.items()}
    return report


def _indexed_hits(word_maps, scene, caption, tolerance):
    """pointing_hits with each hit's word index (pointing_hits skips words in order)."""
    objects = word_objects(scene, caption)
    kind_of = scene.word_kind
    index = [t for t, (w, o) in enumerate(zip(caption.split(), objects or []))
             if o is not None and kind_of(w) is not None]
    return zip(index, pointing_hits(word_maps, scene, caption, tolerance))


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


# -- the result file ----------------------------------------------------------------
def code_version(repo: Path | None = None) -> dict:
    """{"commit": ``git rev-parse HEAD`` or "unknown", "dirty": uncommitted changes
    to tracked files (None when unknown)}. Read-only: no lock, no index refresh."""
    from ..model.bundles import REPO_ROOT
    repo = Path(repo or REPO_ROOT)

    def git(*args):
        return subprocess.run(["git", "--no-optional-locks", *args], cwd=repo, capture_output=True,
                              text=True, timeout=20, check=True).stdout.strip()
    try:
        commit = git("rev-parse", "HEAD")
    except (OSError, subprocess.SubprocessError):
        return {"commit": "unknown", "dirty": None}
    try:
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        dirty = None
    return {"commit": commit or "unknown", "dirty": dirty}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def bundle_identity(captioner, bundle_dir) -> dict:
    """Name, path (relative to the repository when inside it), and SHA-256 of the
    bundle's config.json and of its weight files (in name order)."""
    from ..model.bundles import REPO_ROOT
    bundle_dir = Path(bundle_dir).resolve()
    try:
        shown = str(bundle_dir.relative_to(REPO_ROOT.resolve()))
    except ValueError:
        shown = str(bundle_dir)
    weights = hashlib.sha256()
    for f in sorted(bundle_dir.glob("*.weights.h5")):
        weights.update(f.name.encode() + b"\0" + _sha256(f).encode())
    config = bundle_dir / "config.json"
    return {"name": captioner.config.get("name") or bundle_dir.name, "path": shown,
            "world": captioner.config.get("world", "shapes"),
            "config_sha256": _sha256(config) if config.is_file() else "unknown",
            "weights_sha256": weights.hexdigest()}


def targets_met(report: dict, world: str = "shapes") -> dict:
    """The world's targets against the report's figures (None where not measured)."""
    ratio = report.get("gradcam_over_random_deletion", {}).get("unique", {}).get("ratio")
    pointing = report.get("pointing", {}).get("gradcam", {}).get("all", {}).get("hit_rate")
    out = {}
    for name, value in (("gradcam_deletion_over_random_unique", ratio),
                        ("gradcam_pointing_all", pointing)):
        limit = TARGETS[world][name]
        met = None if value is None else (value <= limit["max"] if "max" in limit
                                          else value >= limit["min"])
        out[name] = dict(limit, value=value, met=met)
    return out


def result_document(report: dict, captioner, bundle_dir, first_seed: int, command: str) -> dict:
    """The report with what it was measured on: code version, bundle, scene seeds."""
    n = int(report["scenes"])
    world = captioner.config.get("world", "shapes")
    return {"schema": RESULT_SCHEMA, "code_version": code_version(),
            "bundle": bundle_identity(captioner, bundle_dir), "command": command,
            "scene_set": {"generator": f"held-out two-object {world} scenes", "first_seed": int(first_seed), "count": n,
                          "seeds": [int(first_seed), int(first_seed) + n - 1] if n else []},
            "targets": targets_met(report, world), "report": report}


def write_json_atomic(path, document) -> Path:
    """Write ``document`` as JSON to ``path``: a reader sees the old file or the new
    one, never half of one (files.atomic_write_text)."""
    text = json.dumps(document, indent=1) + "\n"     # serialised first: a bad value writes nothing
    atomic_write_text(path, text)
    return Path(path)