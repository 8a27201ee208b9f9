"""Validation photographs for the objects bundle: real photos that are neither trained
on nor the test photos, so that choices about real frames can be made on them.

In-world: photographs of things the objects world has words for, from Debian's
``gcompris-qt-data`` (GPL-3+; see ``data/gcompris.py``), listed here with the nouns a
person would accept, chosen by what each file shows before any model read them
(monuments are kept where "building" is the word a person would use; statues,
walls, gates, towers and pyramids are left out). Out-of-world: GCompris's photos of
the planets and the sun, and frames made here from a seed (printed text, star
fields, stained blobs like a microscope slide, noise), none of them the test set's
out-of-world images.

A second validation set, ``OPENCV_IN_WORLD`` / ``OPENCV_OUT_OF_WORLD``: OpenCV's
sample images from Debian's ``opencv-doc`` (Apache-2.0 AND BSD-3-Clause), everyday
photographs (people among them, which GCompris has none of) and frames from outside
the world, listed the same way before any model read them. The recipe's choices stay
on GCompris's set, so that a re-trained bundle makes the shipped bundle's choices;
``evaluate-photos --set opencv`` checks them on photographs from a second source.

``evaluation/photos.py`` (the test set, scikit-image / scikit-learn / matplotlib
photos) and this module are disjoint by construction: different packages.
"""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageFilter

_E = "erase/"                                       # GCompris's world-animal photos
_FARM = "explore_farm_animals/animals/"
_CAT = "categorization/images/"

IN_WORLD_VALIDATION = (
    [(f"gcompris:{_FARM}cat.webp", "a cat on a table", {"cat"}),
     (f"gcompris:{_E}kitten.webp", "a kitten", {"cat"}),
     (f"gcompris:{_FARM}dog.webp", "a dog", {"dog"}),
     (f"gcompris:{_FARM}horse.webp", "a horse", {"horse"}),
     (f"gcompris:{_E}horse.webp", "a pony", {"horse"})]
    + [(f"gcompris:{_FARM}{b}.webp", f"a {b}", {"bird"}) for b in ("chicken", "duck", "owl")]
    + [(f"gcompris:{_E}{b}.webp", f"a {b.replace('_', ' ')}", {"bird"})
       for b in ("kingfisher", "heron", "penguin", "toucan", "swans", "spoonbills", "gosling",
                 "northern_harrier")]
    + [(f"gcompris:{_CAT}fishes/fish{i}.webp", "a fish", {"fish"}) for i in range(1, 29)]
    + [(f"gcompris:{_CAT}monuments/{m}.webp", what, {"building"}) for m, what in (
        ("operaHouse", "the Sydney Opera House"), ("zimniPalace", "the Winter Palace"),
        ("tajMahal", "the Taj Mahal"), ("leMusee", "the Louvre"),
        ("cathedral", "a cathedral"), ("parthenon", "the Parthenon"),
        ("colosseum", "the Colosseum"), ("usCapitol", "the US Capitol"),
        ("victoriaMemorial", "the Victoria Memorial"), ("empireState", "the Empire State Building"),
        ("burj", "the Burj Khalifa"), ("monument1", "the Dome of the Rock"),
        ("monument3", "a church in a city"))]
    + [(f"gcompris:{_CAT}others/cup.webp", "a cup on a saucer", {"cup"}),
       (f"gcompris:{_CAT}others/chair.webp", "a white chair", {"chair"}),
       (f"gcompris:{_CAT}others/baseball.webp", "a baseball", {"ball"}),
       (f"gcompris:{_CAT}others/volleyball.webp", "a volleyball", {"ball"})]
    + [(f"gcompris:{_CAT}tools/scissors{i}.webp", "scissors", {"scissors"}) for i in range(1, 5)]
)

OUT_OF_WORLD_VALIDATION = (
    [(f"gcompris:solar_system/{p}.webp", f"{p} from space")
     for p in ("sun", "mercury", "venus", "earth", "mars", "jupiter", "saturn", "uranus", "neptune")]
    + [(f"made:{kind}:{seed}", what) for kind, what in (
        ("text", "a printed page (made here)"), ("stars", "a star field (made here)"),
        ("blobs", "stained blobs, like a microscope slide (made here)"),
        ("noise", "coloured noise (made here)")) for seed in range(3)]
)

# (file under opencv-doc's examples/, what it shows, the nouns a person would accept)
OPENCV_IN_WORLD = [(f"opencv:{f}", what, nouns) for f, what, nouns in (
    ("data/messi5.jpg", "a footballer kicking a ball", {"person", "ball"}),
    ("data/basketball1.png", "two men indoors, one holding a basketball", {"person", "ball"}),
    ("data/apple.jpg", "an apple", {"apple"}),
    ("data/orange.jpg", "an orange", {"orange"}),
    ("data/fruits.jpg", "cut oranges, lemons, a lime and a kiwi", {"orange"}),
    ("data/building.jpg", "a hotel building", {"building"}),
    ("data/home.jpg", "a palace under a sky with birds", {"building"}),
    ("data/leuvenA.jpg", "old houses along a street", {"building"}),
    ("reg/home.png", "a brick house", {"building"}),
    ("hfs/data/000.jpg", "a robin on a post", {"bird"}),
    ("hfs/data/002.jpg", "a tree on a meadow", {"tree"}),
    ("alphamat/input_images/plant.jpg", "a potted plant", {"plant"}),
    ("data/chicky_512.png", "a small dog", {"dog"}),
    ("data/licenseplate_motion.jpg", "the back of a car", {"car"}),
    ("data/ela_original.jpg", "a notebook with an elastic band", {"book"}))]
OPENCV_OUT_OF_WORLD = [(f"opencv:{f}", what) for f, what in (
    ("data/board.jpg", "a circuit board"),
    ("data/sudoku.png", "a printed sudoku"),
    ("data/left01.jpg", "a calibration chessboard held up (grey)"),
    ("data/chessboard.png", "a chessboard pattern"),
    ("data/pca_test1.jpg", "black bars on a white card"),
    ("data/digits.png", "handwritten digits"),
    ("data/text_defocus.jpg", "blurred printed text"),
    ("data/starry_night.jpg", "The Starry Night, a painting"),
    ("ximgproc/stanford.png", "a street map (a screenshot)"))]

PAIRS = 60           # side-by-side validation pairs, drawn with PAIR_SEED
PAIR_SEED = 0
MADE_SIZE = 480
_WORDS = ("the of and to in is that for it as was with be by on not he this are or his from at "
          "which but have an they you were her she there been one all we their has would when").split()


def made_frame(source: str) -> np.ndarray:
    """``made:<kind>:<seed>`` -> an out-of-world frame drawn from the seed."""
    _, kind, seed = source.split(":")
    rng = np.random.default_rng(int(seed))
    size = MADE_SIZE
    if kind == "text":
        im = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(225, 256, 3)))
        draw = ImageDraw.Draw(im)
        font = ImageFont.truetype("/usr/share/fonts/truetype/dejavu/DejaVuSerif.ttf",
                                  int(rng.integers(14, 24)))
        y = 10
        while y < size - 20:
            draw.text((12, y), " ".join(rng.choice(_WORDS, 12)), fill=(20, 20, 20), font=font)
            y += int(font.size * 1.5)
        return np.asarray(im)
    if kind == "stars":
        img = rng.normal(6, 3, (size, size, 3)).clip(0, 255)
        for x, y, b in zip(rng.integers(0, size, 400), rng.integers(0, size, 400),
                           rng.gamma(1.5, 40, 400)):
            img[max(y - 1, 0): y + 2, max(x - 1, 0): x + 2] += b * rng.uniform(0.7, 1.0, 3)
        return np.asarray(Image.fromarray(img.clip(0, 255).astype(np.uint8))
                          .filter(ImageFilter.GaussianBlur(0.8)))
    if kind == "blobs":
        from skimage.data import binary_blobs
        mask = binary_blobs(size, blob_size_fraction=0.06, volume_fraction=0.35,
                            rng=int(seed))
        stain = np.array([(120, 60, 40), (90, 60, 150), (160, 90, 110)][int(seed) % 3])
        img = np.where(mask[..., None], stain, (235, 225, 215)) + rng.normal(0, 12, (size, size, 3))
        return np.asarray(Image.fromarray(img.clip(0, 255).astype(np.uint8))
                          .filter(ImageFilter.GaussianBlur(1.5)))
    if kind == "noise":
        small = rng.integers(0, 256, (size // 16, size // 16, 3), dtype=np.uint8)
        return np.asarray(Image.fromarray(small).resize((size, size), Image.BICUBIC))
    raise ValueError(f"unknown made frame {source!r}")


def validation_pairs(in_world, n: int = PAIRS, seed: int = PAIR_SEED) -> list[tuple[int, int]]:
    """``n`` index pairs of photos with different nouns, drawn once from ``seed``."""
    candidates = [(i, j) for i in range(len(in_world)) for j in range(i + 1, len(in_world))
                  if not in_world[i][2] & in_world[j][2]]
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(candidates), min(n, len(candidates)), replace=False)
    return [candidates[k] for k in sorted(chosen)]


def validation_pair_entries(in_world) -> list[tuple[tuple, tuple]]:
    """The entries of ``validation_pairs`` (left, right), in their order."""
    return [(in_world[i], in_world[j]) for i, j in validation_pairs(in_world)]


def in_world_frames(entries=None) -> list[tuple[np.ndarray, set]]:
    """(frame, accepted nouns) for each in-world validation photo (of ``entries``, by
    default GCompris's) in each of the test's webcam-like variants; a clear error when
    any photo cannot be read."""
    from .photos import VARIANTS, all_available, load_photo, variant
    entries = IN_WORLD_VALIDATION if entries is None else entries
    return [(variant(load_photo(e[0]), v), e[2])
            for e in all_available(entries, "validation photos") for v in VARIANTS]


def out_of_world_frames(entries=None) -> list[np.ndarray]:
    """Each out-of-world validation frame (of ``entries``, by default the first set's)
    in the variants the evaluation tries them in."""
    from .photos import OUT_OF_WORLD_VARIANTS, all_available, load_photo, variant
    entries = OUT_OF_WORLD_VALIDATION if entries is None else entries
    return [variant(load_photo(e[0]), v)
            for e in all_available(entries, "out-of-world validation frames")
            for v in OUT_OF_WORLD_VARIANTS]


class PhotoChoiceData:
    """The validation photos' frames (each in-world photo in the test's webcam-like
    variants) and side-by-side pairs, read by the backbone once, to score decoding
    settings on: ``score()`` decodes them under the captioner's current settings."""

    def __init__(self, captioner, batch_size: int = 32, progress: bool = True):
        from tqdm import tqdm
        from .photos import load_photo, side_by_side
        frames = in_world_frames()                       # fails fast on a missing photo
        pairs = [(side_by_side(load_photo(a[0]), load_photo(b[0])), (a[2], b[2]))
                 for a, b in validation_pair_entries(IN_WORLD_VALIDATION)]
        self.captioner = captioner
        self.frame_nouns = [n for _, n in frames]
        self.pair_nouns = [n for _, n in pairs]
        images = [f for f, _ in frames] + [f for f, _ in pairs]
        self.parts = [captioner.cell_parts(captioner.features(captioner.preprocess(
                          images[s: s + batch_size])))
                      for s in tqdm(range(0, len(images), batch_size), desc="validation photos",
                                    disable=not progress)]

    def score(self, beam_width: int = 3) -> dict:
        """{"photo_nouns": mean over nouns of the share of frames naming it,
        "photo_pairs": share of pairs with both nouns named, "photo_score": their mean}."""
        from ..data.objects_world import caption_nouns
        from .photos import per_noun_rates
        said = [set(caption_nouns(c.text)) for p in self.parts
                for c in self.captioner.decode_parts(p, beam_width)]
        n = len(self.frame_nouns)
        rows = [{"accept": sorted(nouns), "right": bool(s & nouns)}
                for s, nouns in zip(said[:n], self.frame_nouns)]
        nouns = float(np.mean(list(per_noun_rates(rows).values())))
        pairs = float(np.mean([bool(s & a and s & b)
                               for s, (a, b) in zip(said[n:], self.pair_nouns)]))
        return {"photo_nouns": round(nouns, 4), "photo_pairs": round(pairs, 4),
                "photo_score": round((nouns + pairs) / 2, 4)}
