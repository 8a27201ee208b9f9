"""Which ImageNet-1k classes name which caption nouns (``imagenet_nouns.json``), for the
decoder's ImageNet noun prior (``CaptionDecoder.set_noun_prior``).

The table was written from the class names alone (WordNet lemmas in the standard
ImageNet-1k order), before any photograph was looked at: a noun gets the classes
that are kinds of it (``cat``: tabby, tiger cat, Persian, Siamese, Egyptian cat).
"""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import numpy as np

TABLE = Path(__file__).with_name("imagenet_nouns.json")
IMAGENET_CLASSES = 1000


@lru_cache(maxsize=1)
def noun_classes() -> dict[str, list[int]]:
    """{noun: [ImageNet class indices]}."""
    table = json.loads(TABLE.read_text())["categories"]
    return {noun: sorted(int(k) for k in classes) for noun, classes in table.items()}


def class_token_matrix(vocab) -> np.ndarray:
    """[1000, len(vocab)]: 1 where an ImageNet class names the vocabulary's token."""
    m = np.zeros((IMAGENET_CLASSES, len(vocab)), np.float32)
    for noun, classes in noun_classes().items():
        if noun in vocab:
            m[classes, vocab.index(noun)] = 1.0
    return m


ARTICLES = ("a", "an")


def noun_article(noun: str) -> str:
    """The indefinite article of one of the table's nouns (all of them are said as
    spelt: "an" before a vowel letter; tests check this against the objects catalogue)."""
    return "an" if noun[0] in "aeiou" else "a"


def article_tokens(vocab) -> tuple[list[int], np.ndarray]:
    """(ids of the vocabulary's articles, [A, len(vocab)] with 1 where a noun of the
    table takes that article): what the prior's article agreement reads."""
    present = [a for a in ARTICLES if a in vocab]
    m = np.zeros((len(present), len(vocab)), np.float32)
    for noun in noun_classes():
        if noun in vocab and noun_article(noun) in present:
            m[present.index(noun_article(noun)), vocab.index(noun)] = 1.0
    return [vocab.index(a) for a in present], m
