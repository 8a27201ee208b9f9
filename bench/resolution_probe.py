"""Does the input size (and the last stage's stride) let the ImageNet Lite0 tell small
objects apart? A linear probe of its frozen features, validation scenes only.

    python bench/resolution_probe.py [--settings NAME ...] [--train 3000] [--val 1000] [--json FILE]

Scenes of the objects world are drawn at 448 px (training seeds 50,000,000+, never the
bundles' training seeds; validation seeds 80,000,000+, the seeds designs are chosen
on) and resized to each setting's input size, as a webcam frame is. Per object, its
grid cells are averaged, weighted by how much of each cell its mask covers; a
logistic regression on the standardised vectors names the category. Accuracy over
the validation objects, by size (the longer side of the box, in pixels of a 224-px
frame) and for objects of two-object scenes. The backbone is the one a bundle would
build (``BackboneSpec``), with ImageNet weights and nothing tuned.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from PIL import Image  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

from source_code.data.worlds import held_out_scenes  # noqa: E402
from source_code.evaluation.imagenet_prior import PRIOR_SEED as VAL_SEED  # noqa: E402
from source_code.files import write_json  # noqa: E402
from source_code.model.backbone import BackboneSpec, build_backbone  # noqa: E402

# name -> (input size, last stride); last stride 1 runs the last stage dilated
SETTINGS = {"224 dilated (14x14)": (224, 1), "224 (7x7)": (224, 2), "288 (9x9)": (288, 2),
            "320 (10x10)": (320, 2), "320 dilated (20x20)": (320, 1), "448 (14x14)": (448, 2)}
SCENE_SIZE = 448
TRAIN_SEED = 50_000_000


def object_vectors(net, size: int, scenes) -> tuple[np.ndarray, list[tuple]]:
    """Each object's mask-weighted mean of its cells, and (category, size at 224 px,
    objects in its scene)."""
    run = tf.function(lambda x: net(x, training=False))
    vectors, rows = [], []
    for i in range(0, len(scenes), 16):
        batch = scenes[i:i + 16]
        pixels = np.stack([np.asarray(Image.fromarray(s.image).resize((size, size), Image.BILINEAR),
                                      np.float32) for s in batch])
        maps = run(tf.constant(pixels)).numpy()
        grid = maps.shape[1]
        for scene, fmap in zip(batch, maps):
            for o in scene.objects:
                cover = np.asarray(Image.fromarray(o.mask.astype(np.float32)).resize((grid, grid), Image.BOX))
                if cover.sum() < 1e-6:
                    continue
                vectors.append((fmap * cover[..., None]).sum((0, 1)) / cover.sum())
                x0, y0, x1, y1 = o.bbox
                rows.append((o.category, max(x1 - x0, y1 - y0) * 224 / scene.image.shape[0],
                             len(scene.objects)))
    return np.array(vectors), rows


def probe(setting: str, train, val) -> dict:
    size, stride = SETTINGS[setting]
    net = build_backbone(BackboneSpec(variant="lite0", input_size=size, weights="imagenet",
                                      last_stride=stride))
    t0 = time.time()
    x_train, r_train = object_vectors(net, size, train)
    x_val, r_val = object_vectors(net, size, val)
    seconds = time.time() - t0
    scaler = StandardScaler().fit(x_train)
    classifier = LogisticRegression(C=0.05, max_iter=2000).fit(scaler.transform(x_train),
                                                               [r[0] for r in r_train])
    said = classifier.predict(scaler.transform(x_val))
    right = np.array([s == r[0] for s, r in zip(said, r_val)])
    px = np.array([r[1] for r in r_val])
    two = np.array([r[2] == 2 for r in r_val])
    return {"grid": int(net.output_shape[1]), "objects": len(r_val), "accuracy": right.mean(),
            "two_object": right[two].mean(), "under_80px": right[px < 80].mean(),
            "80_120px": right[(px >= 80) & (px < 120)].mean(), "over_120px": right[px >= 120].mean(),
            "feature_seconds": round(seconds, 1)}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=list(SETTINGS))
    ap.add_argument("--train", type=int, default=3000, help="probe training scenes")
    ap.add_argument("--val", type=int, default=1000, help="validation scenes")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    train = held_out_scenes("objects", args.train, TRAIN_SEED, SCENE_SIZE, workers=2)
    val = held_out_scenes("objects", args.val, VAL_SEED, SCENE_SIZE, workers=2)
    result = {"scene_size": SCENE_SIZE, "train_scenes": [TRAIN_SEED, TRAIN_SEED + args.train - 1],
              "validation_scenes": [VAL_SEED, VAL_SEED + args.val - 1], "settings": {}}
    for setting in args.settings:
        r = result["settings"][setting] = {k: round(float(v), 4) if isinstance(v, float) else v
                                           for k, v in probe(setting, train, val).items()}
        print(f"{setting:22s} grid {r['grid']:2d}: objects named {r['accuracy']:.3f} "
              f"(two-object scenes {r['two_object']:.3f}; under 80 px {r['under_80px']:.3f}, "
              f"80-120 {r['80_120px']:.3f}, larger {r['over_120px']:.3f})", flush=True)
    if args.json:
        write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
