"""Caption accuracy and pointing on held-out objects-world scenes (unseen seeds).

Exact match counts the two orderings of a two-object caption as one caption
("a cup left of a dog" = "a dog right of a cup"); noun accuracy asks only
whether the set of object nouns is right.
"""
from __future__ import annotations

from tqdm import tqdm

from ..data.objects_world import canonical_object_caption, caption_nouns, parse_object_caption
from ..data.worlds import HELD_OUT_SEED, held_out_scenes
from ..explain.pointing import WORLD_TOLERANCE


def generate_held_out_objects(n: int, seed: int = HELD_OUT_SEED, image_size: int = 224,
                              progress: bool = False, n_objects: int | None = None):
    return held_out_scenes("objects", n, seed, image_size, n_objects, progress)


def captions_of(captioner, scenes, beam_width: int = 3, batch_size: int = 32,
                progress: bool = False) -> list[str]:
    """The captioner's caption of each scene, as it serves (batches of ``batch_size``)."""
    said = []
    for start in tqdm(range(0, len(scenes), batch_size), desc="captioning held-out scenes",
                      disable=not progress, unit="batch"):
        batch = scenes[start: start + batch_size]
        said += [c.text for c in captioner.caption([s.image for s in batch], beam_width)]
    return said


def exact_hits(scenes, said: list[str]) -> list[bool]:
    """Per scene: is the caption said its own, either ordering of a pair counting?"""
    return [canonical_object_caption(t) == canonical_object_caption(s.caption)
            for s, t in zip(scenes, said)]


def evaluate_objects(captioner, scenes, beam_width: int = 3, batch_size: int = 32,
                     progress: bool = True) -> dict:
    said = captions_of(captioner, scenes, beam_width, batch_size, progress)
    exact = nouns_ok = grammatical = 0
    by_count = {1: [0, 0], 2: [0, 0]}
    for scene, text, ok in zip(scenes, said, exact_hits(scenes, said)):
        exact += ok
        nouns_ok += sorted(caption_nouns(text)) == sorted(caption_nouns(scene.caption))
        try:
            parse_object_caption(text)
            grammatical += 1
        except ValueError:
            pass
        by_count[len(scene.objects)][0] += ok
        by_count[len(scene.objects)][1] += 1
    n = len(scenes)
    return {"scenes": n, "exact_match": exact / n, "noun_accuracy": nouns_ok / n,
            "grammatical": grammatical / n,
            "one_object_exact_match": by_count[1][0] / max(by_count[1][1], 1),
            "two_object_exact_match": by_count[2][0] / max(by_count[2][1], 1),
            "two_object_scenes": by_count[2][1]}


def pointing_objects(captioner, scenes, tolerance: int = WORLD_TOLERANCE["objects"],
                     progress: bool = True) -> dict:
    """Per-word Grad-CAM pointing on object nouns of the model's own captions."""
    from ..explain import gradcam as gradcam_lib
    from ..explain.pointing import pointing_game
    from ..explain.target import caption_target

    def explain_words(scene):
        pixels = captioner.preprocess(scene.image)
        fmap = captioner.features(pixels)
        caption = captioner.decode_features(fmap, beam_width=3)[0]
        if not caption.words:
            return caption.text, []
        target = caption_target(captioner, caption.words)
        return caption.text, gradcam_lib.gradcam(captioner, fmap, target)["words"]

    bar = tqdm(scenes, desc="pointing game", disable=not progress, unit="scene")
    return pointing_game(explain_words, bar, tolerance=tolerance)
