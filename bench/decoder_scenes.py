"""Does the decoder gain from more distinct scenes, objects on cards or on panels? Validation only.

    python bench/decoder_scenes.py --scenes 32000 --epochs 3 --gradcam-start 1 --gradcam-ramp 2 \
        [--cards 0.5] [--panels 0.5] [--input-size 384] [--photos] --work DIR [--json FILE]

Trains a decoder with the objects recipe on the bundle's own tuned backbone (its tail
is not tuned again: the work folder is seeded with it), on ``--scenes`` scenes of the
world (seeds ``--seed``..; 90 % to train) for ``--epochs`` epochs, then scores it with beam 3
and no prior on the 1,500 prior-choice validation scenes (seeds 80,000,000+), the
scenes designs are chosen on. ``--cards P``: each object of the training scenes comes on
a card of its own with probability P; ``--panels P``: a two-object scene shows its
objects on two panels side by side with probability P
(``objects_world.generate_object_scene``). ``--input-size S``: the backbone reads
frames (and the training scenes are drawn) at S px instead of the bundle's size; the
validation scenes stay drawn at the bundle's size (each captioner resizes them), so
exact match compares like with like.
``--photos``: also scores the validation photographs and pairs (never the test
photos) with the bundle's prior and without, and the scenes' exact match with the prior.
``--train-seed``: another training seed on the same scenes. Writes the per-scene hits
beside the JSON, to pair with another decoder's.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from source_code.data.datasets import load_dataset  # noqa: E402
from source_code.data.objects_world import write_objects_dataset  # noqa: E402
from source_code.data.worlds import held_out_scenes  # noqa: E402
from source_code.evaluation.imagenet_prior import PRIOR_SEED  # noqa: E402
from source_code.evaluation.objects_eval import captions_of, exact_hits  # noqa: E402
from source_code.files import write_json  # noqa: E402
from source_code.model.bundles import resolve_bundle  # noqa: E402
from source_code.model.captioner import Captioner  # noqa: E402
from source_code.training.recipes import RECIPES, _config  # noqa: E402
from source_code.training.tail import TAIL_RECORD, TAIL_WEIGHTS, split_backbone  # noqa: E402
from source_code.training.train import train, work_dir  # noqa: E402

VALIDATION_SCENES = 1500      # the prior choice's validation scenes, from PRIOR_SEED


def validation_photo_scores(captioner, prior: tuple[float, str]) -> dict:
    """The validation photos' scores (``PhotoChoiceData``) with ``prior`` and without."""
    from source_code.evaluation.validation_photos import PhotoChoiceData
    data = PhotoChoiceData(captioner, progress=False)
    scores = {}
    for label, setting in (("with_prior", prior), ("no_prior", (0.0, "frame"))):
        captioner.set_imagenet_prior(*setting)
        scores[label] = data.score()
    scores["prior"] = list(prior)
    return scores


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", default="objects")
    ap.add_argument("--scenes", type=int, default=32000)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--gradcam-start", type=int, default=1)
    ap.add_argument("--gradcam-ramp", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0,
                    help="the scenes' first seed and the training seed (a second draw of an arm)")
    ap.add_argument("--train-seed", type=int,
                    help="the training seed alone (default: --seed), on the same scenes")
    ap.add_argument("--cards", type=float, default=0.0, help="chance of a card behind each object")
    ap.add_argument("--panels", type=float, default=0.0,
                    help="chance that a two-object scene comes on two panels side by side")
    ap.add_argument("--input-size", type=int, help="frames read at this size (default: the bundle's)")
    ap.add_argument("--photos", action="store_true", help="also score the validation photos")
    ap.add_argument("--work", type=Path, required=True, help="scratch folder (scenes, caches)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    shipped = Captioner.load(resolve_bundle(args.bundle))
    name = (f"{args.scenes}" + (f"_cards{args.cards:g}" if args.cards else "")
            + (f"_panels{args.panels:g}" if args.panels else "")
            + (f"_{args.input_size}px" if args.input_size else "")
            + (f"_seed{args.seed}" if args.seed else ""))
    data = args.work / f"data{name}"
    if not (data / "Flickr8k.token.txt").exists():
        size = args.input_size or shipped.input_size
        write_objects_dataset(data, args.scenes, seed=args.seed, image_size=size,
                              progress=False, cards=args.cards, panels=args.panels)
    train_seed = args.seed if args.train_seed is None else args.train_seed
    out = args.work / (f"objects{name}" + (f"_train{train_seed}" if train_seed != args.seed else ""))
    work = work_dir(out)
    work.mkdir(parents=True, exist_ok=True)
    if not (work / TAIL_WEIGHTS).exists():      # the bundle's tuned tail, not tuned again
        _, tail = split_backbone(shipped.backbone, shipped.config["backbone_tail"]["from_block"])
        tail.save_weights(work / TAIL_WEIGHTS)
        (work / TAIL_RECORD).write_text(json.dumps(shipped.config["backbone_tail"]))
    recipe = {**RECIPES["objects"], "images": args.scenes, "seed": train_seed, "epochs": args.epochs,
              "gradcam_start_epoch": args.gradcam_start, "gradcam_ramp_epochs": args.gradcam_ramp}
    if args.input_size:
        recipe["backbone"] = {**recipe["backbone"], "input_size": args.input_size}
        recipe["image_size"] = args.input_size
    t0 = time.time()
    captioner = train(load_dataset("flickr8k", data), out, _config(recipe, None),
                      grounding_file=data / "scenes.jsonl", progress=False,
                      extra_card={"world": "objects"})   # so the bundle's prior can be re-chosen
    seconds = time.time() - t0
    photos = validation_photo_scores(captioner, shipped.imagenet_prior()) if args.photos else None
    scenes = held_out_scenes("objects", VALIDATION_SCENES, PRIOR_SEED, shipped.input_size)
    with_prior = None
    if args.photos:         # the scenes' exact match under the prior the photos were scored with
        captioner.set_imagenet_prior(*shipped.imagenet_prior())
        with_prior = float(np.mean(exact_hits(scenes, captions_of(captioner, scenes))))
    captioner.set_imagenet_prior(0.0, "frame")
    right = np.array(exact_hits(scenes, captions_of(captioner, scenes)))
    two = np.array([len(s.objects) == 2 for s in scenes])
    result = {"scenes": args.scenes, "seed": args.seed, "train_seed": train_seed,
              "cards": args.cards, "panels": args.panels,
              "input_size": captioner.input_size, "epochs": args.epochs, "gradcam_start_epoch": args.gradcam_start,
              "gradcam_ramp_epochs": args.gradcam_ramp, "exact": float(right.mean()),
              "exact_with_prior": with_prior,
              "one_object": float(right[~two].mean()), "two_object": float(right[two].mean()),
              "validation_photos": photos, "seconds_with_caches": round(seconds, 1),
              "history": captioner.config["training"]["history"]}
    print(json.dumps(result, indent=1))
    if args.json:
        write_json(args.json, result)
        np.save(args.json.with_suffix(".hits.npy"), right)
    return result


if __name__ == "__main__":
    main()
