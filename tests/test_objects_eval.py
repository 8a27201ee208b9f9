"""Held-out scoring of objects-world captions: batching and exact match."""
from types import SimpleNamespace

import numpy as np

from source_code.evaluation.objects_eval import captions_of, evaluate_objects, exact_hits


class ScriptedCaptioner:
    """Says the scripted caption of each frame, recording the batch sizes it was given."""

    def __init__(self, texts):
        self.texts, self.batches = list(texts), []

    def caption(self, images, beam_width):
        self.batches.append(len(images))
        return [SimpleNamespace(text=self.texts.pop(0)) for _ in images]


def scene(caption, n_objects):
    return SimpleNamespace(image=np.zeros((4, 4, 3), np.uint8), caption=caption,
                           objects=[None] * n_objects)


def test_exact_hits_count_either_ordering_of_a_pair_and_nothing_else():
    scenes = [scene("a cup left of a dog", 2), scene("a cat", 1), scene("a cup above a dog", 2)]
    said = ["a dog right of a cup", "a dog", "a dog above a cup"]
    assert exact_hits(scenes, said) == [True, False, False]


def test_captions_of_batches_every_scene_once_in_order():
    captioner = ScriptedCaptioner([f"a cat {i}" for i in range(5)])
    said = captions_of(captioner, [scene("a cat", 1)] * 5, batch_size=2)
    assert said == [f"a cat {i}" for i in range(5)]
    assert captioner.batches == [2, 2, 1]


def test_evaluate_objects_splits_one_and_two_object_scenes():
    scenes = [scene("a cup", 1), scene("a cat", 1), scene("a cup left of a dog", 2)]
    captioner = ScriptedCaptioner(["a cup", "a dog", "a dog right of a cup"])
    result = evaluate_objects(captioner, scenes, progress=False)
    assert result["exact_match"] == 2 / 3
    assert result["one_object_exact_match"] == 0.5
    assert result["two_object_exact_match"] == 1.0
    assert result["noun_accuracy"] == 2 / 3
    assert result["grammatical"] == 1.0
