"""Which evidence tells a real frame of the objects world from a frame from outside it?

    python bench/familiarity_statistics.py [--bundle objects] [--scenes 2000] [--seed 0] [--negatives 500]
                                           [--sets validation[,opencv]] [--json FILE]

Familiarity's shipped evidence is the surest grid cell's ImageNet probability of one
caption noun's classes (``model/familiarity.py``). This compares it with other
statistics of the same frames, each thresholded the way the shipped one is (a quantile
of 500 held-out frames without an object, the quantile chosen by balanced accuracy on
the validation photos; a frame is also familiar when its typicality p-value reaches
the bundle's floor), on the validation frames only (never the test photos):

- ``noun_cell`` (shipped), ``noun_top3`` (the mean of the three surest cells),
  ``noun_frame`` (the whole frame's classification);
- ``any_class_cell``: the surest cell's largest probability of *any* ImageNet class
  (the maximum-softmax baseline of out-of-distribution detection);
- ``object_probe``: a linear probe on the cells' features, trained on ``--scenes``
  training scenes of the world to tell a cell covered by an object (at least half
  its area, from the scene's masks; 40 nouns) from a background cell; the statistic
  is the surest cell's probability of not being background. It knows nouns with no
  ImageNet class (scissors, cake, key, tree) and the world's backgrounds;
- ``noun_cell_and_probe``: familiar when both pass (their two quantiles chosen
  together).

``--sets``: the validation sets whose frames are pooled (``validation``: GCompris's,
the one the recipe chooses on; ``opencv``: the second set, OpenCV's samples).

Prints the best row of each with the share of each kind of out-of-world frame called
familiar, and writes every row (``--json``).
"""
from __future__ import annotations

import argparse
import itertools
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
from scipy.special import softmax  # noqa: E402

from source_code.files import write_json  # noqa: E402
from source_code.model.familiarity import EVIDENCE_QUANTILES, describe, noun_evidence  # noqa: E402

NEGATIVES = 500
PROBE_EPOCHS = 4
COVERED = 0.5          # a cell is an object's when its mask covers at least this share


def cell_labels(scene, grid: int, side: int, index: dict) -> np.ndarray:
    """[grid * grid]: 0 background, k the noun covering at least COVERED of the cell,
    -1 (left out) for a cell only partly covered."""
    cover = np.zeros((grid, grid))
    noun = np.zeros((grid, grid), np.int64)
    for o in scene.objects:
        share = o.mask.astype(np.float32).reshape(grid, side // grid, grid, side // grid).mean((1, 3))
        noun = np.where(share > cover, index[o.category], noun)
        cover = np.maximum(cover, share)
    labels = np.where(cover >= COVERED, noun, -1)
    labels[cover == 0] = 0
    return labels.reshape(-1)


def train_object_probe(captioner, scenes: int, seed: int):
    """(kernel, bias) of a softmax over background + the world's nouns on cell features."""
    import keras
    from tqdm import tqdm
    from source_code.data.objects_world import default_world, generate_object_scene
    from source_code.training.recipes import feature_maps_of
    nouns = sorted(default_world().categories)
    index = {n: i + 1 for i, n in enumerate(nouns)}
    side, xs, ys = captioner.input_size, [], []
    for start in tqdm(range(0, scenes, 250), desc="probe scenes"):
        batch = [generate_object_scene(s, side) for s in range(start, min(scenes, start + 250))]
        maps = feature_maps_of(captioner, [s.image for s in batch])
        for scene, m in zip(batch, maps):
            labels = cell_labels(scene, m.shape[0], side, index)
            xs.append(m.reshape(-1, m.shape[-1])[labels >= 0].astype(np.float16))
            ys.append(labels[labels >= 0])
    x, y = np.concatenate(xs).astype(np.float32), np.concatenate(ys)
    keras.utils.set_random_seed(seed)
    probe = keras.Sequential([keras.Input((x.shape[1],)), keras.layers.Dense(len(nouns) + 1)])
    probe.compile(keras.optimizers.Adam(1e-3),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    probe.fit(x, y, batch_size=1024, epochs=PROBE_EPOCHS, verbose=0)
    return probe.layers[-1].get_weights()


def statistics(maps: np.ndarray, classifier, probe) -> dict:
    """Every statistic of one set of frames' feature maps."""
    kernel, bias, class_nouns = classifier
    cells = maps.reshape(len(maps), -1, maps.shape[-1])
    probs = softmax(cells @ kernel + bias, -1)
    nouns = probs @ class_nouns                                   # [B, cells, nouns]
    per_cell = nouns.max(-1)
    frame = softmax(maps.mean((1, 2)) @ kernel + bias, -1) @ class_nouns
    background = softmax(cells @ probe[0] + probe[1], -1)[..., 0]
    return {"noun_cell": noun_evidence(maps, classifier),       # the shipped statistic, its own code
            "noun_top3": np.sort(per_cell, 1)[:, -3:].mean(1),
            "noun_frame": frame.max(1),
            "any_class_cell": probs.max((1, 2)),
            "object_probe": (1 - background).max(1)}


def rate(flags) -> float:
    return round(float(np.mean(flags)), 4)


def judge(sets: dict, floor: float, rule) -> dict:
    """Shares called familiar under ``rule(stats) -> bool array`` (or typicality)."""
    fam = {k: (s["p"] >= floor) | rule(s) for k, s in sets.items() if k != "negative"}
    return {"familiar_in_world": rate(fam["in_world"]),
            "unfamiliar_out_of_world": rate(~fam["out_of_world"]),
            "balanced_accuracy": rate((fam["in_world"].mean() + 1 - fam["out_of_world"].mean()) / 2),
            "out_of_world_familiar_by_kind": {
                kind: rate(fam["out_of_world"][np.asarray(sets["out_of_world"]["kind"]) == kind])
                for kind in sorted(set(sets["out_of_world"]["kind"]))}}


def compare(sets: dict, floor: float) -> dict:
    """The table of every statistic and quantile, and each statistic's best row."""
    negative = sets["negative"]
    threshold = {(name, q): float(np.quantile(negative[name], q))
                 for name in negative if name not in ("p", "kind") for q in EVIDENCE_QUANTILES}
    rows = {}
    for (name, q), t in threshold.items():
        rows.setdefault(name, []).append(
            dict(quantile=q, threshold=round(t, 4),
                 **judge(sets, floor, lambda s, n=name, t=t: s[n] >= t)))
    for qa, qb in itertools.product(EVIDENCE_QUANTILES, repeat=2):
        ta, tb = threshold["noun_cell", qa], threshold["object_probe", qb]
        rows.setdefault("noun_cell_and_probe", []).append(
            dict(quantile=[qa, qb], threshold=[round(ta, 4), round(tb, 4)],
                 **judge(sets, floor, lambda s: (s["noun_cell"] >= ta) & (s["object_probe"] >= tb))))
    best = {name: max(r, key=lambda row: (row["balanced_accuracy"], float(np.sum(row["quantile"]))))
            for name, r in rows.items()}
    return {"best": best, "rows": rows}


def validation_frames(sets: list[str]) -> tuple[list, list, list]:
    """(in-world frames, out-of-world frames, each out-of-world frame's kind) of the
    named validation sets, pooled."""
    from source_code.evaluation import validation_photos as v
    from source_code.evaluation.photos import OUT_OF_WORLD_VARIANTS, photo_entries
    in_world, out_of_world, kinds = [], [], []
    for name in sets:
        if name == "test":
            raise SystemExit("the test photos never take part in a choice")
        inside, outside, _ = photo_entries(name)
        in_world += [frame for frame, _ in v.in_world_frames(inside)]
        out_of_world += v.out_of_world_frames(outside)
        kinds += [{"gcompris": "planet", "made": source.split(":")[1]}.get(source.split(":")[0], "opencv")
                  for source, _ in outside for _ in OUT_OF_WORLD_VARIANTS]
    return in_world, out_of_world, kinds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", default="objects")
    parser.add_argument("--scenes", type=int, default=2000, help="training scenes the probe reads")
    parser.add_argument("--seed", type=int, default=0, help="the probe's training seed")
    parser.add_argument("--negatives", type=int, default=NEGATIVES,
                        help="held-out frames without an object (the bundle's own choice: 500)")
    parser.add_argument("--sets", default="validation",
                        help="validation sets to pool, comma-separated: validation, opencv")
    parser.add_argument("--json", help="write the result here")
    args = parser.parse_args()
    from source_code.model.bundles import resolve_bundle
    from source_code.model.captioner import Captioner
    from source_code.training.recipes import familiarity_negatives, feature_maps_of
    captioner = Captioner.load(resolve_bundle(args.bundle))
    classifier = captioner.imagenet_noun_classifier()
    if classifier is None or captioner.familiarity is None:
        raise SystemExit(f"{args.bundle}: needs a bundle with familiarity and an ImageNet classifier")
    probe = train_object_probe(captioner, args.scenes, args.seed)
    sets_read = args.sets.split(",")
    in_world, out_of_world, kinds = validation_frames(sets_read)
    frames = {"negative": familiarity_negatives("objects", args.negatives, captioner.input_size),
              "in_world": in_world, "out_of_world": out_of_world}
    sets = {}
    for name, images in frames.items():
        maps = feature_maps_of(captioner, images)
        sets[name] = dict(statistics(maps, classifier, probe),
                          p=captioner.familiarity.p_values(describe(maps)))
    sets["out_of_world"]["kind"] = kinds
    result = dict(bundle=args.bundle, validation_sets=sets_read,
                  floor=captioner.familiarity.floor, negatives=args.negatives,
                  in_world_frames=len(in_world), out_of_world_frames=len(out_of_world),
                  probe={"training_scenes": args.scenes, "epochs": PROBE_EPOCHS, "seed": args.seed,
                         "covered": COVERED},
                  **compare(sets, captioner.familiarity.floor))
    print(f"{'statistic':22s} {'quantile':>12s} {'in-world':>9s} {'out unfam':>9s} {'balanced':>9s}")
    for name, row in result["best"].items():
        print(f"{name:22s} {str(row['quantile']):>12s} {row['familiar_in_world']:9.3f} "
              f"{row['unfamiliar_out_of_world']:9.3f} {row['balanced_accuracy']:9.3f}  "
              f"out-of-world familiar by kind: {row['out_of_world_familiar_by_kind']}")
    if args.json:
        write_json(args.json, result)


if __name__ == "__main__":
    main()
