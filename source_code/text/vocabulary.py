"""Caption cleaning and the word vocabulary of the caption decoder.

The cleaning follows the classic Flickr8k captioning recipe: lowercase,
punctuation removed, tokens containing digits dropped and one-letter tokens
other than "a" dropped.  Here punctuation is replaced with a space (so
"dog-sled" becomes "dog sled" rather than "dogsled").

The vocabulary file (``vocab.txt``) holds one token a line, index = line
number, starting with the four special tokens ``<pad> <start> <end> <unk>``.
"""

from __future__ import annotations

import math
import operator
import os
import re
from collections import Counter
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from ..files import atomic_write_text

START, END, PAD, UNK = "<start>", "<end>", "<pad>", "<unk>"
SPECIALS: tuple[str, ...] = (PAD, START, END, UNK)

# Anything that is neither a letter/digit nor whitespace counts as
# punctuation; "_" is matched by \w, so it is listed explicitly.
_PUNCT_RE = re.compile(r"[^\w\s]|_")


def clean_caption(text: str) -> list[str]:
    """Normalise a raw caption into a list of word tokens.

    Lowercases, replaces punctuation with spaces, splits on whitespace, drops
    tokens containing a digit and single-character tokens other than "a".

    >>> clean_caption("A dog's 2 toys, on the grass.")
    ['a', 'dog', 'toys', 'on', 'the', 'grass']
    """
    if not isinstance(text, str):
        raise TypeError(f"caption must be a str, got {type(text).__name__}")
    text = _PUNCT_RE.sub(" ", text.lower())
    return [
        tok
        for tok in text.split()
        if not any(ch.isdigit() for ch in tok) and (len(tok) > 1 or tok == "a")
    ]


class Vocabulary:
    """Bidirectional word <-> index mapping with fixed special tokens.

    Index 0 is ``<pad>``, 1 ``<start>``, 2 ``<end>``, 3 ``<unk>``; the words
    follow.  Instances are immutable.
    """

    __slots__ = ("_tokens", "_index")

    def __init__(self, tokens: Sequence[str]):
        tokens = list(tokens)
        if tokens[: len(SPECIALS)] != list(SPECIALS):
            raise ValueError(
                f"vocabulary must start with the special tokens {list(SPECIALS)} "
                f"in that order, got {tokens[: len(SPECIALS)]}"
            )
        index: dict[str, int] = {}
        for i, tok in enumerate(tokens):
            if not isinstance(tok, str):
                raise ValueError(f"token {i} is not a str: {tok!r}")
            if not tok or any(ch.isspace() for ch in tok):
                raise ValueError(f"token {i} is empty or contains whitespace: {tok!r}")
            if tok in index:
                raise ValueError(
                    f"duplicate token {tok!r} at indices {index[tok]} and {i}"
                )
            index[tok] = i
        self._tokens = tokens
        self._index = index

    # -- construction / persistence ------------------------------------
    @classmethod
    def build(cls, captions: Iterable[Sequence[str]], min_count: int = 10) -> "Vocabulary":
        """Vocabulary of the words occurring at least ``min_count`` times.

        Words are ordered by decreasing count, ties broken alphabetically.
        Special tokens appearing in the captions are not counted as words.
        """
        if min_count < 1:
            raise ValueError(f"min_count must be >= 1, got {min_count}")
        counts: Counter[str] = Counter()
        for caption in captions:
            if isinstance(caption, str):
                raise TypeError("captions must be token lists, not strings "
                                "(use clean_caption first)")
            counts.update(caption)
        for special in SPECIALS:
            counts.pop(special, None)
        words = sorted(
            (w for w, c in counts.items() if c >= min_count),
            key=lambda w: (-counts[w], w),
        )
        return cls(list(SPECIALS) + words)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Vocabulary":
        """Read a ``vocab.txt`` written by :meth:`save`."""
        path = Path(path)
        with open(path, encoding="utf-8", newline="") as f:
            lines = f.read().split("\n")
        if lines and lines[-1] == "":
            lines.pop()  # trailing newline
        tokens = []
        for line_no, line in enumerate(lines, 1):
            tok = line[:-1] if line.endswith("\r") else line
            if not tok:
                raise ValueError(f"{path}: line {line_no} is empty")
            tokens.append(tok)
        try:
            return cls(tokens)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from None

    def save(self, path: str | os.PathLike) -> None:
        """Write one token a line, atomically (never a half-written file)."""
        atomic_write_text(path, "\n".join(self._tokens) + "\n")

    # -- lookups ---------------------------------------------------------
    @property
    def tokens(self) -> list[str]:
        """All tokens in index order (a copy)."""
        return list(self._tokens)

    @property
    def pad_id(self) -> int:
        return 0

    @property
    def start_id(self) -> int:
        return 1

    @property
    def end_id(self) -> int:
        return 2

    @property
    def unk_id(self) -> int:
        return 3

    def __len__(self) -> int:
        return len(self._tokens)

    def __contains__(self, word: object) -> bool:
        return word in self._index

    def __iter__(self) -> Iterator[str]:
        return iter(self._tokens)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Vocabulary):
            return NotImplemented
        return self._tokens == other._tokens

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Vocabulary({len(self)} tokens)"

    def index(self, word: str) -> int:
        """Index of ``word``; the ``<unk>`` index for unknown words."""
        return self._index.get(word, self.unk_id)

    def word(self, i: int) -> str:
        """Token at index ``i`` (IndexError when out of range)."""
        i = operator.index(i)
        if not 0 <= i < len(self._tokens):
            raise IndexError(f"token index {i} out of range [0, {len(self._tokens)})")
        return self._tokens[i]

    def encode(self, words: Sequence[str], max_len: int | None = None, *, pad: bool = False) -> list[int]:
        """``[<start>] + ids(words) + [<end>]``.

        ``max_len`` is the maximum number of *words* (as returned by
        :func:`max_caption_length`): longer captions are truncated, ``<end>``
        is still appended.  With ``pad=True`` the result is right-padded with
        ``<pad>`` to exactly ``max_len + 2`` ids.
        """
        if isinstance(words, str):
            raise TypeError("encode expects a token list, not a string")
        if max_len is not None:
            if max_len < 0:
                raise ValueError(f"max_len must be >= 0, got {max_len}")
            words = words[:max_len]
        elif pad:
            raise ValueError("pad=True needs max_len")
        ids = [self.start_id] + [self.index(w) for w in words] + [self.end_id]
        if pad:
            ids.extend([self.pad_id] * (max_len + 2 - len(ids)))  # type: ignore[operator]
        return ids

    def decode(self, ids: Iterable[int]) -> list[str]:
        """Words of an id sequence: stops at ``<end>``, drops ``<start>``/``<pad>``."""
        out = []
        for i in ids:
            i = int(i)
            if i == self.end_id:
                break
            if i in (self.start_id, self.pad_id):
                continue
            out.append(self.word(i))
        return out


def max_caption_length(captions: Iterable[Sequence[str]], percentile: float = 100.0) -> int:
    """Caption length in words (no ``<start>``/``<end>``) at ``percentile``.

    Returns the smallest length L such that at least ``percentile`` % of the
    captions have at most L words (100 -> the maximum, 0 -> the minimum).
    """
    if not 0.0 <= percentile <= 100.0:
        raise ValueError(f"percentile must be in [0, 100], got {percentile}")
    lengths = sorted(len(c) for c in captions)
    if not lengths:
        raise ValueError("no captions given")
    # Rank of the smallest length covering the requested share; the small
    # epsilon keeps e.g. 95 % of 20 at rank 19 despite float rounding.
    rank = math.ceil(percentile * len(lengths) / 100.0 - 1e-9)
    return lengths[max(rank, 1) - 1]
