"""Tuning the backbone's last block on the world's object categories, before the decoder.

Frozen ImageNet features tell many cut-outs apart poorly: a probe of this kind on
frozen Lite0 named a one-object validation scene's category 0.685 of the time (3,000
training scenes, 8 epochs). With the tail tuned by this stage (the objects recipe's
14,400 scenes, 2 epochs, ``train-default --world objects --tune-tail``) the probe names
it 0.884 of the time, and both categories of a two-object scene are its top two 0.642
of the time (1,600 validation scenes). This stage tunes that tail and nothing else:

* the trunk (everything before ``blocks_{from_block}_expand_conv``) stays frozen, and
  its outputs are computed once and cached (float16, resumable);
* the tail (that block onward, to ``top_activation``) learns a multi-label probe: a
  1x1 convolution per cell, the largest cell score per category, a sigmoid against the
  scene's categories (the probe is thrown away afterwards);
* at the same time it is kept close to what ImageNet taught: the KL divergence between
  the ImageNet classifier's class distribution on the original tail's cells and on the
  tuned tail's (learning without forgetting, Li and Hoiem 2016), on a random subset of
  cells per image. The decoder's ImageNet head, its noun prior and familiarity's
  evidence all read that classifier, so it must keep naming ImageNet classes;
* BatchNorm keeps its ImageNet statistics (inference mode), as in the probe.

The tuned weights live in the backbone itself (the tail shares its layers), and the
bundle then carries them. The decoder's features come from the same trunk cache.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from tqdm import tqdm

from .features import cached_array, fingerprint
from .samples import load_images

log = logging.getLogger(__name__)

TAIL_DEFAULTS = {"from_block": 15, "epochs": 2, "learning_rate": 1e-4,
                 "probe_learning_rate": 1e-3, "batch_size": 32, "distill_weight": 1.0,
                 "distill_cells": 49}
# What tuning keeps in the training work folder: the trunk's caches, the tuned tail, its record.
TRUNK_TRAIN, TRUNK_VAL = "trunk_train", "trunk_val"
TAIL_WEIGHTS, TAIL_RECORD = "tail.weights.h5", "tail.json"


def split_backbone(backbone: keras.Model, from_block: int) -> tuple[keras.Model, keras.Model]:
    """(trunk, tail): pixels -> the input of block ``from_block``, and that -> the
    feature map. Both share the backbone's layers (training the tail trains it)."""
    try:
        cut = backbone.get_layer(f"blocks_{from_block}_expand_conv").input
    except ValueError as exc:
        raise ValueError(f"the backbone has no block {from_block} with an expansion "
                         f"convolution to cut at") from exc
    return keras.Model(backbone.input, cut), keras.Model(cut, backbone.output)


def scene_categories(grounding: dict, ids) -> list[str]:
    """The object categories of these scenes, sorted."""
    return sorted({o["category"] for i in ids for o in grounding[i]["objects"]})


def scene_labels(grounding: dict, ids, categories: list[str]) -> np.ndarray:
    """[n, K] 1 where the scene shows the category."""
    index = {c: k for k, c in enumerate(categories)}
    labels = np.zeros((len(ids), len(categories)), np.float32)
    for row, i in enumerate(ids):
        for o in grounding[i]["objects"]:
            if o["category"] in index:
                labels[row, index[o["category"]]] = 1.0
    return labels


def probe_scores(scores: np.ndarray, labels: np.ndarray) -> dict:
    """Validation figures of the probe: one-object scenes' top category right,
    two-object scenes' two categories the top two, exact label set (p > 0.5)."""
    count = labels.sum(1)
    order = np.argsort(-scores, axis=1)
    one = count == 1
    two = count == 2
    top1 = labels[np.arange(len(labels)), order[:, 0]] == 1
    top2 = np.take_along_axis(labels, order[:, :2], 1).sum(1) == 2
    exact = ((scores > 0) == (labels > 0)).all(1)
    return {"one_object_top1": float(top1[one].mean()) if one.any() else None,
            "two_object_top2": float(top2[two].mean()) if two.any() else None,
            "exact_set": float(exact.mean())}


def tune_tail(captioner, dataset, train_ids, val_ids, grounding: dict, settings: dict,
              work: Path, progress: bool = True) -> tuple[dict, np.ndarray, np.ndarray]:
    """Tune the captioner's backbone tail in place. Returns the card's record (settings,
    categories, per-epoch history, the tuned weights' digest) and the cached trunk
    outputs of the training and validation images."""
    s = {**TAIL_DEFAULTS, **settings}
    kernel, bias = _classifier(captioner)
    trunk, tail = split_backbone(captioner.backbone, s["from_block"])
    teacher = keras.models.clone_model(tail)
    teacher.set_weights(tail.get_weights())
    categories = scene_categories(grounding, train_ids)
    y_train = scene_labels(grounding, train_ids, categories)
    y_val = scene_labels(grounding, val_ids, categories)
    x_train = trunk_cache(captioner, trunk, s["from_block"], dataset, train_ids,
                          work / TRUNK_TRAIN, progress)
    x_val = trunk_cache(captioner, trunk, s["from_block"], dataset, val_ids, work / TRUNK_VAL,
                        progress)

    done = work / TAIL_WEIGHTS
    record_path = work / TAIL_RECORD
    if done.exists() and record_path.exists():        # a resumed run: tuned already
        tail.load_weights(done)
        record = json.loads(record_path.read_text())
        log.info("backbone tail: tuned weights loaded from %s", done)
        return record, x_train, x_val

    probe = category_probe(y_train, tail.output_shape)
    step, evaluate = _step_functions(tail, teacher, probe, kernel, bias, s)
    rng = np.random.default_rng(captioner.config.get("seed", 0))
    history = []
    batch = s["batch_size"]
    for epoch in range(s["epochs"]):
        t0 = time.time()
        order = rng.permutation(len(train_ids))
        n_batches = len(order) // batch
        sums = np.zeros(2)
        bar = tqdm(range(n_batches), desc=f"tuning backbone tail {epoch + 1}/{s['epochs']}",
                   disable=not progress, unit="batch")
        for b in bar:
            idx = np.sort(order[b * batch: (b + 1) * batch])
            cells = rng.integers(0, tail.output_shape[1] * tail.output_shape[2],
                                 (len(idx), s["distill_cells"]))
            bce, kl = step(tf.constant(x_train[idx], tf.float32), tf.constant(y_train[idx]),
                           tf.constant(cells, tf.int32))
            sums += (float(bce), float(kl))
            if (b + 1) % 10 == 0:
                bar.set_postfix(bce=f"{sums[0] / (b + 1):.4f}", kl=f"{sums[1] / (b + 1):.4f}")
        val = _validate(evaluate, x_val, y_val, batch, s["distill_cells"])
        history.append({"epoch": epoch + 1, "bce": float(sums[0] / max(n_batches, 1)),
                        "kl": float(sums[1] / max(n_batches, 1)), **val,
                        "seconds": round(time.time() - t0, 1)})
        log.info("backbone tail epoch %d: %s", epoch + 1, history[-1])
    tail.save_weights(work / "tail.tmp.weights.h5")
    record = {**s, "categories": categories, "history": history,
              "weights_digest": _digest(tail.get_weights())}
    record_path.write_text(json.dumps(record, indent=1))
    (work / "tail.tmp.weights.h5").rename(done)
    return record, x_train, x_val


def _digest(weights) -> str:
    h = hashlib.sha256()
    for w in weights:
        h.update(np.ascontiguousarray(w).tobytes())
    return h.hexdigest()[:16]


def category_probe(labels: np.ndarray, feature_shape) -> keras.layers.Layer:
    """The probe: a 1x1 convolution, kernel zero, bias each category's prior log-odds,
    so it starts at the base rate (a bias at zero starts every category at one half,
    and Adam takes thousands of steps to walk the biases down to the rare positives)."""
    prior = np.clip(labels.mean(0), 1e-4, 1 - 1e-4)
    probe = keras.layers.Conv2D(labels.shape[1], 1, kernel_initializer="zeros",
                                bias_initializer=keras.initializers.Constant(np.log(prior / (1 - prior))),
                                name="category_probe")
    probe.build(feature_shape)
    return probe


def trunk_cache(captioner, trunk, from_block: int, dataset, ids, cache_dir,
                progress) -> np.ndarray:
    """The outputs of the trunk (the backbone before block ``from_block``) for these
    images (float16 memmap, resumable)."""
    run = tf.function(lambda x: trunk(x, training=False), reduce_retracing=True)

    def compute(start, stop):
        pixels = load_images([dataset.image_path(i) for i in ids[start: stop]],
                             captioner.input_size, progress=False)
        return run(tf.constant(pixels, tf.float32)).numpy()
    # named by the block, not by the trunk's tensors: Keras numbers those afresh for each
    # model built in a process, and a later decoder draw builds its own
    key = fingerprint(captioner.config["backbone"], "trunk before block", from_block, list(ids))
    return cached_array(compute, (len(ids),) + tuple(trunk.output_shape[1:]), key, cache_dir,
                        "caching the backbone trunk", progress)


def tail_features(captioner, trunk_rows: np.ndarray, cache_dir, progress) -> np.ndarray:
    """The (tuned) feature maps of cached trunk outputs, themselves cached."""
    _, tail = split_backbone(captioner.backbone, captioner.config["backbone_tail"]["from_block"])
    run = tf.function(lambda x: tail(x, training=False), reduce_retracing=True)
    key = fingerprint(captioner.config["backbone"], captioner.config["backbone_tail"],
                      len(trunk_rows), "tail")
    return cached_array(lambda a, b: run(tf.constant(trunk_rows[a:b], tf.float32)).numpy(),
                        (len(trunk_rows),) + tuple(tail.output_shape[1:]), key, cache_dir,
                        "caching tuned features", progress, batch_size=64)


def _classifier(captioner):
    classifier = captioner.imagenet_noun_classifier()
    if classifier is None:
        raise ValueError("tuning the backbone tail keeps the ImageNet classifier's meaning, "
                         "so it needs a backbone with one (lite0 with ImageNet weights)")
    kernel, bias, _ = classifier
    return tf.constant(kernel, tf.float32), tf.constant(bias, tf.float32)


def _step_functions(tail, teacher, probe, kernel, bias, s):
    """(train step, evaluation). The probe starts at zero and learns faster than the
    tail it reads (its own learning rate), so the tail is tuned towards a probe that
    already points somewhere."""
    tail_opt = keras.optimizers.Adam(s["learning_rate"])
    probe_opt = keras.optimizers.Adam(s["probe_learning_rate"])
    n_tail = len(tail.trainable_variables)
    variables = tail.trainable_variables + probe.trainable_variables

    def losses(x, y, cells):
        features = tail(x, training=False)                     # BatchNorm: ImageNet statistics
        scores = tf.reduce_max(probe(features), axis=[1, 2])   # [B, K]
        bce = tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels=y, logits=scores))
        flat = tf.reshape(features, [tf.shape(x)[0], -1, features.shape[-1]])
        before = tf.reshape(teacher(x, training=False), tf.shape(flat))
        student = tf.gather(flat, cells, batch_dims=1) @ kernel + bias
        target = tf.nn.softmax(tf.gather(before, cells, batch_dims=1) @ kernel + bias)
        kl = tf.reduce_mean(tf.reduce_sum(
            target * (tf.math.log(target + 1e-8) - tf.nn.log_softmax(student)), -1))
        return bce, kl, scores

    @tf.function(reduce_retracing=True)
    def step(x, y, cells):
        with tf.GradientTape() as tape:
            bce, kl, _ = losses(x, y, cells)
            loss = bce + s["distill_weight"] * kl
        grads = tape.gradient(loss, variables)
        tail_opt.apply_gradients(zip(grads[:n_tail], variables[:n_tail]))
        probe_opt.apply_gradients(zip(grads[n_tail:], variables[n_tail:]))
        return bce, kl

    @tf.function(reduce_retracing=True)
    def evaluate(x, y, cells):
        return losses(x, y, cells)
    return step, evaluate


def _validate(evaluate, x_val, y_val, batch: int, n_cells: int) -> dict:
    if not len(y_val):
        return {}
    rng = np.random.default_rng(0)
    scores, sums = [], np.zeros(2)
    for start in range(0, len(y_val), batch):
        x = tf.constant(x_val[start: start + batch], tf.float32)
        cells = rng.integers(0, x.shape[1] * x.shape[2], (len(x), n_cells))
        bce, kl, sc = evaluate(x, tf.constant(y_val[start: start + batch]),
                               tf.constant(cells, tf.int32))
        scores.append(sc.numpy())
        sums += (float(bce) * len(x), float(kl) * len(x))
    return {"val_bce": float(sums[0] / len(y_val)), "val_kl": float(sums[1] / len(y_val)),
            **{f"val_{k}": v for k, v in probe_scores(np.concatenate(scores), y_val).items()}}
