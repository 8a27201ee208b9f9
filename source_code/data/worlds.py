"""The two synthetic worlds by name: the one place that maps a bundle's ``world`` (its
card's field) to the world's scene generator and held-out scenes. The CLI, the page's
sample scenes, the evaluations and the benchmarks all pick a world through here."""
from __future__ import annotations

from tqdm import tqdm

WORLDS = ("shapes", "objects")
# Training recipes draw seeds below 1,000,000; held-out evaluation starts here.
HELD_OUT_SEED = 10_000_000


def scene_generator(world: str):
    """``generate(seed, image_size=..., n_objects=None)`` -> one scene of ``world``
    (deterministic for a seed); its objects carry masks and attributes."""
    if world == "objects":
        from .objects_world import generate_object_scene
        return generate_object_scene
    if world == "shapes":
        from .synthetic import generate_scene
        return generate_scene
    raise ValueError(f"unknown world {world!r}: one of {', '.join(WORLDS)}")


def held_out_scenes(world: str, n: int, seed: int = HELD_OUT_SEED, image_size: int = 160,
                    n_objects: int | None = None, progress: bool = False) -> list:
    """n scenes of ``world`` from seeds seed .. seed + n - 1 (never training seeds by
    default); n_objects: 1 or 2 for every scene, None for the world's own mix."""
    generate = scene_generator(world)
    return [generate(seed + i, image_size=image_size, n_objects=n_objects)
            for i in tqdm(range(n), desc=f"held-out {world} scenes", disable=not progress,
                          unit="img")]
