"""Tuning the backbone's tail (training/tail.py) on a tiny objects world: Lite0 with its
ImageNet weights at 64 px (a 4 x 4 grid), a few scenes."""
import numpy as np
import pytest
import tensorflow as tf

from source_code.data.datasets import load_dataset
from source_code.data.objects_world import write_objects_dataset
from source_code.model.backbone import BackboneSpec
from source_code.model.captioner import Captioner
from source_code.training import tail as T
from source_code.training.samples import load_grounding, load_images
from source_code.training.train import TrainConfig, train

SPEC = BackboneSpec(variant="lite0", input_size=64, weights="imagenet", last_stride=1)
DECODER = {"kind": "attention", "units": 32, "imagenet_head": 1000}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("tail_world")
    write_objects_dataset(root, 40, seed=700_000, image_size=64, progress=False)
    return load_dataset("flickr8k", root), root / "scenes.jsonl"


def _captioner(dataset):
    from source_code.training.train import prepare_vocabulary
    vocab, length = prepare_vocabulary(dataset, TrainConfig(min_word_count=1))
    return Captioner.build(vocab, SPEC, DECODER, length)


def test_trunk_then_tail_is_the_backbone_and_tuning_the_tail_changes_the_backbone(world):
    captioner = _captioner(world[0])
    trunk, tail = T.split_backbone(captioner.backbone, 15)
    x = tf.random.uniform((2, 64, 64, 3), 0, 255, seed=1)
    whole = captioner.backbone(x).numpy()
    np.testing.assert_array_equal(tail(trunk(x)).numpy(), whole)
    layer = tail.get_layer("blocks_15_project_conv")
    layer.kernel.assign(layer.kernel * 0.5)
    assert np.abs(captioner.backbone(x).numpy() - whole).max() > 0.01
    with pytest.raises(ValueError, match="no block 99"):
        T.split_backbone(captioner.backbone, 99)


def test_labels_and_probe_scores_on_a_known_case():
    grounding = {"a": {"objects": [{"category": "cup"}]},
                 "b": {"objects": [{"category": "cat"}, {"category": "cup"}]},
                 "c": {"objects": [{"category": "dog"}]}}
    cats = T.scene_categories(grounding, ["a", "b", "c"])
    assert cats == ["cat", "cup", "dog"]
    labels = T.scene_labels(grounding, ["a", "b", "c"], cats)
    np.testing.assert_array_equal(labels, [[0, 1, 0], [1, 1, 0], [0, 0, 1]])
    scores = np.array([[-1, 2, -3],      # cup: top-1 right, exact
                       [1, -2, 3],       # cat + dog on top: top-2 wrong, not exact
                       [2, -1, 1]])      # cat on top: wrong; dog > 0 too
    got = T.probe_scores(scores, labels)
    assert got == {"one_object_top1": 0.5, "two_object_top2": 0.0, "exact_set": 1 / 3}


def _tune(dataset, grounding, tmp_path, distill_weight):
    captioner = _captioner(dataset)
    ids, val = dataset.splits["train"], dataset.splits["val"]
    record, x_train, _ = T.tune_tail(
        captioner, dataset, ids, val, grounding,
        {"epochs": 10, "learning_rate": 2e-3, "probe_learning_rate": 3e-3, "batch_size": 8,
         "distill_weight": distill_weight, "distill_cells": 8}, tmp_path, progress=False)
    return captioner, record, x_train


def test_tuning_learns_the_categories_and_distillation_keeps_the_imagenet_classes(world, tmp_path):
    dataset, scenes = world
    grounding = load_grounding(scenes)
    stock = _captioner(dataset)
    pixels = load_images([dataset.image_path(i) for i in dataset.splits["train"][:8]], 64, False)
    trunk_before = T.split_backbone(stock.backbone, 15)[0](pixels).numpy()
    kept, record, x_train = _tune(dataset, grounding, tmp_path / "kept", 1.0)
    free, record_free, _ = _tune(dataset, grounding, tmp_path / "free", 0.0)
    # The probe learns: it starts at the categories' base rates, and ends well below
    # the loss of always answering them.
    prior = T.scene_labels(grounding, dataset.splits["train"], record["categories"]).mean(0)
    base_rate_loss = -np.mean(prior * np.log(prior) + (1 - prior) * np.log(1 - prior))
    losses = [h["bce"] for h in record["history"]]
    assert losses[-1] < 0.8 * base_rate_loss and losses[-1] < losses[0]
    # The trunk is untouched and cached as it computes.
    np.testing.assert_allclose(np.asarray(x_train[:8], np.float32), trunk_before, rtol=1e-2, atol=1e-2)
    assert np.abs(T.split_backbone(kept.backbone, 15)[0](pixels).numpy() - trunk_before).max() == 0

    def imagenet_kl(captioner):
        kernel, bias, _ = stock.imagenet_noun_classifier()
        p = tf.nn.softmax(stock.backbone(pixels).numpy() @ kernel + bias).numpy()
        q = tf.nn.log_softmax(captioner.backbone(pixels).numpy() @ kernel + bias).numpy()
        return float((p * (np.log(p + 1e-8) - q)).sum(-1).mean())
    # Distillation keeps the cells' ImageNet class distributions close to the original.
    assert imagenet_kl(kept) < 0.5 * imagenet_kl(free)
    assert record["weights_digest"] != record_free["weights_digest"]


def test_a_bundle_with_a_tuned_tail_carries_it_and_keeps_its_imagenet_classifier(world, tmp_path):
    dataset, scenes = world
    cfg = TrainConfig(backbone=SPEC, decoder=DECODER, epochs=1, batch_size=8, min_word_count=1,
                      tune_tail={"epochs": 1, "batch_size": 8})
    trained = train(dataset, tmp_path / "bundle", cfg, grounding_file=scenes, progress=False)
    loaded = Captioner.load(tmp_path / "bundle")
    tail = loaded.config["backbone_tail"]
    assert tail["from_block"] == 15 and len(tail["history"]) == 1 and tail["categories"]
    assert loaded.config["backbone_weights_in_bundle"] and not loaded.config["backbone_trained"]
    assert loaded.imagenet_noun_classifier() is not None
    x = tf.random.uniform((1, 64, 64, 3), 0, 255, seed=2)
    np.testing.assert_array_equal(loaded.features(x).numpy(), trained.features(x).numpy())
    # The decoder was trained on the tuned features: the cache holds them.
    cached = np.load(tmp_path / "bundle.work" / "features_train" / "features.npy", mmap_mode="r")
    first = load_images([dataset.image_path(dataset.splits["train"][0])], 64, False)
    np.testing.assert_allclose(np.asarray(cached[0], np.float32), loaded.features(first).numpy()[0],
                               rtol=1e-2, atol=2e-2)


def test_tuning_the_tail_without_scene_categories_is_a_clear_error(world, tmp_path):
    cfg = TrainConfig(backbone=SPEC, decoder=DECODER, epochs=1, batch_size=8, min_word_count=1,
                      tune_tail={})
    with pytest.raises(ValueError, match="scenes' categories"):
        train(world[0], tmp_path / "bundle", cfg, grounding_file=None, progress=False)


def test_a_second_model_built_in_the_same_process_reads_the_trunk_cache(world, tmp_path, monkeypatch):
    """A later decoder draw builds its own captioner in the recipe's process and reads
    the first draw's trunk cache: the cache is named by the block, not by the tensors
    Keras numbers afresh for each model."""
    dataset, _ = world
    ids = dataset.splits["train"][:4]
    first = _captioner(dataset)
    rows = T.trunk_cache(first, T.split_backbone(first.backbone, 15)[0], 15, dataset, ids,
                         tmp_path / "trunk", False)
    monkeypatch.setattr(T, "load_images", lambda *a, **k: pytest.fail("trunk computed again"))
    second = _captioner(dataset)
    again = T.trunk_cache(second, T.split_backbone(second.backbone, 15)[0], 15, dataset, ids,
                          tmp_path / "trunk", False)
    np.testing.assert_array_equal(np.asarray(again), np.asarray(rows))
