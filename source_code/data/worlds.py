"""The two synthetic worlds by name: the one place that maps a bundle's ``world`` (its
card's field) to the world's scene generator and held-out scenes. The CLI, the page's
sample scenes, the evaluations and the benchmarks all pick a world through here."""
from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from multiprocessing import get_context

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


# Scenes are drawn in worker processes from this many on: below it, starting the
# workers (each loads the world's catalogue) costs more than it saves.
PARALLEL_FROM = 200


def in_workers(fn, items, n: int, desc: str, progress: bool = False,
               workers: int | None = None, chunk: int = 32):
    """[fn(item) for item in items], in order, in up to ``workers`` processes (default:
    one per CPU) when there are at least PARALLEL_FROM items. Scene generation is pure
    Python and NumPy, one core a process; the results do not depend on the worker count.
    Workers are spawned, not forked: a fork of a process that runs TensorFlow's thread
    pools can deadlock."""
    workers = workers or os.cpu_count() or 1
    bar = partial(tqdm, total=n, desc=desc, disable=not progress, unit="img")
    if workers < 2 or n < PARALLEL_FROM:
        return [fn(item) for item in bar(items)]
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        return list(bar(pool.map(fn, items, chunksize=chunk)))


def _scene(seed: int, world: str, image_size: int, n_objects: int | None):
    return scene_generator(world)(seed, image_size=image_size, n_objects=n_objects)


def held_out_scenes(world: str, n: int, seed: int = HELD_OUT_SEED, image_size: int = 160,
                    n_objects: int | None = None, progress: bool = False,
                    workers: int | None = None) -> list:
    """n scenes of ``world`` from seeds seed .. seed + n - 1 (never training seeds by
    default); n_objects: 1 or 2 for every scene, None for the world's own mix. Many
    scenes are drawn in parallel (``in_workers``)."""
    scene_generator(world)      # an unknown world fails here, not in a worker
    return in_workers(partial(_scene, world=world, image_size=image_size, n_objects=n_objects),
                      range(seed, seed + n), n, f"held-out {world} scenes", progress, workers)
