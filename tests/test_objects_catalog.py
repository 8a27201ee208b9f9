"""The objects-world asset catalogue: JSON shape, caption nouns, and rendering of
the installed sources (skipped per kind where its Debian package is absent)."""
from __future__ import annotations

import json
import os
import re

import numpy as np
import pytest

from source_code.data.objects_catalog import (CATALOG_PATH, Catalog, Category, available,
                                              load_catalog, render_source, source_exists)

KINDS = ("stamp", "clipart", "emoji")
SAMPLES_PER_KIND = 8
# Nouns starting with a vowel letter but a consonant sound (and vice versa) would
# need listing here; none of the catalogue's nouns do at present.
ARTICLE_EXCEPTIONS: dict[str, str] = {}


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return load_catalog()


def test_json_is_valid_and_versioned():
    raw = json.loads(CATALOG_PATH.read_text(encoding="utf-8"))
    assert raw["version"] == 1
    assert set(raw) >= {"categories", "backgrounds", "packages"}


def test_every_source_is_well_formed(catalog):
    for cat in catalog.categories.values():
        for s in cat.sources:
            assert s["kind"] in KINDS, (cat.name, s)
            assert s["package"] in catalog.packages, (cat.name, s)
            assert s.get("licence"), (cat.name, s)
            if s["kind"] == "emoji":
                assert s["text"], (cat.name, s)
            else:
                assert os.path.isabs(s["path"]) and s["path"].endswith(".png"), (cat.name, s)


def test_categories_are_single_lowercase_words_with_enough_sources(catalog):
    assert len(catalog.categories) >= 36
    for name, cat in catalog.categories.items():
        assert re.fullmatch(r"[a-z]+", name), name
        assert cat.name == name
        assert len(cat.sources) >= 3, name
        assert len({json.dumps(s, sort_keys=True) for s in cat.sources}) == len(cat.sources), name


def test_articles_follow_the_vowel_sound(catalog):
    for name, cat in catalog.categories.items():
        expected = ARTICLE_EXCEPTIONS.get(name, "an" if name[0] in "aeiou" else "a")
        assert cat.article == expected, name


def test_backgrounds_and_packages_carry_licences(catalog):
    assert len(catalog.backgrounds) >= 6
    for b in catalog.backgrounds:
        assert os.path.isabs(b["path"]) and b["package"] in catalog.packages and b["licence"]
    for info in catalog.packages.values():
        assert info["licence"] and info["attribution"]


def test_available_drops_missing_files_and_reports_empty_categories():
    fake = Catalog(
        {"cup": Category("cup", "a", [{"kind": "stamp", "path": "/nonexistent/cup.png"},
                                      {"kind": "clipart", "path": __file__}]),
         "ghost": Category("ghost", "a", [{"kind": "clipart", "path": "/nonexistent/ghost.png"}])},
        [{"path": "/nonexistent/bg.jpg"}, {"path": __file__}])
    kept, empty = available(fake)
    assert list(kept.categories) == ["cup"]
    assert kept.categories["cup"].sources == [{"kind": "clipart", "path": __file__}]
    assert empty == ["ghost"]
    assert kept.backgrounds == [{"path": __file__}]


def _sample(catalog: Catalog, kind: str) -> list[dict]:
    """Up to SAMPLES_PER_KIND installed sources of a kind, spread over categories."""
    rng = np.random.default_rng(0)
    pool = [s for c in catalog.categories.values() for s in c.sources
            if s["kind"] == kind and source_exists(s)]
    if not pool:
        pytest.skip(f"no {kind} source installed (its Debian package is absent)")
    picks = rng.choice(len(pool), size=min(SAMPLES_PER_KIND, len(pool)), replace=False)
    return [pool[i] for i in sorted(picks)]


@pytest.mark.parametrize("kind", KINDS)
def test_render_source_gives_a_cut_out(catalog, kind):
    for s in _sample(catalog, kind):
        rgba = render_source(s)
        assert rgba.dtype == np.uint8 and rgba.ndim == 3 and rgba.shape[2] == 4, s
        alpha = rgba[..., 3]
        assert (alpha == 255).any(), s
        assert (alpha < 128).any(), s
        # Cropped to the alpha bbox: every border row/column touches the object.
        assert alpha[0].any() and alpha[-1].any() and alpha[:, 0].any() and alpha[:, -1].any(), s


def test_emoji_skin_tone_sequence_renders_as_one_glyph(catalog):
    tone = {"kind": "emoji", "text": "\U0001F9D1\U0001F3FD"}
    if not source_exists(tone):
        pytest.skip("fonts-noto-color-emoji is not installed")
    base = render_source({"kind": "emoji", "text": "\U0001F9D1"})
    toned = render_source(tone)
    # A modifier that failed to combine would draw a second glyph beside the first.
    assert toned.shape[1] < 1.5 * base.shape[1]
    assert not np.array_equal(base[..., :3].mean(axis=(0, 1)), toned[..., :3].mean(axis=(0, 1)))
