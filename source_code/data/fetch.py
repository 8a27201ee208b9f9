"""Download the data sets and pretrained weights the project needs.

``python -m source_code fetch NAME [--dest DIR] [--mirror URL] [--force] [--no-extract]``

Each resource in :data:`RESOURCES` lists one or more :class:`RemoteFile` s.  A file
is streamed with :mod:`urllib` into ``FILENAME.part`` next to its final place,
resumed with an HTTP ``Range`` request when a ``.part`` is already there, checked
against its published checksum (md5 or sha256), and only then renamed to
``FILENAME``.  Archives are then extracted into the destination (refusing any
member that would land outside it) and a marker ``.extracted-FILENAME`` is left so
that a second run skips the work.

What happens to the ``.part`` file:

* connection cut, timeout, connection refused, Ctrl-C: kept, the next attempt
  (or the next run) resumes from it;
* checksum or size mismatch, corrupt zip, HTTP error such as 404: deleted,
  because resuming from it could never give the right file.

Every failure is raised as :class:`FetchError` with a message meant for people;
:func:`run_fetch` turns it into a line on stderr and a non-zero exit code.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import os
import posixpath
import re
import shutil
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

from tqdm import tqdm

__all__ = [
    "DEFAULT_RETRIES",
    "DEFAULT_TIMEOUT",
    "FetchError",
    "VerificationError",
    "RESOURCES",
    "RemoteFile",
    "Resource",
    "add_fetch_arguments",
    "download",
    "extract",
    "fetch",
    "hash_file",
    "keras_cache_dir",
    "main",
    "main_fetch",
    "mirror_url",
    "run_fetch",
]

DEFAULT_TIMEOUT = 60.0  # seconds, per socket operation (connect / each read)
DEFAULT_RETRIES = 3  # attempts per URL on connection errors
RETRY_BACKOFF_S = 1.0  # sleep ``RETRY_BACKOFF_S * attempt`` between attempts
CHUNK_SIZE = 1 << 16
USER_AGENT = "source_code-fetch/1.0 (+python-urllib)"

_HASH_LENGTHS = {32: "md5", 64: "sha256"}


class FetchError(Exception):
    """A download, verification or extraction failed; the message says why."""


class VerificationError(FetchError):
    """The downloaded bytes are not the expected file (checksum, size or zip test)."""


class _ConnectionCut(Exception):
    """Internal: the transfer stopped early; the ``.part`` file is worth resuming."""


# --------------------------------------------------------------------------- #
# Registry
# --------------------------------------------------------------------------- #
@dataclass(frozen=True)
class RemoteFile:
    """One file to download.

    ``md5`` / ``sha256``: published checksum (at most one is used; sha256 wins).
    ``size``: size in bytes when known (checked as well).  ``mirrors``: other URLs
    serving the same bytes, tried in order when ``url`` fails with a network or
    HTTP error (the checksum still decides whether the result is accepted).
    ``checksum_source``: where the checksum was taken from.
    """

    url: str
    filename: str
    md5: str | None = None
    sha256: str | None = None
    size: int | None = None
    mirrors: tuple[str, ...] = ()
    checksum_source: str = ""

    @property
    def checksum(self) -> str | None:
        return self.sha256 or self.md5

    @property
    def algorithm(self) -> str | None:
        if self.sha256:
            return "sha256"
        if self.md5:
            return "md5"
        return None


@dataclass(frozen=True)
class Resource:
    """A named group of files with a default destination."""

    name: str
    files: tuple[RemoteFile, ...]
    dest: str | Callable[[], Path]
    extract: bool
    description: str
    notes: str = field(default="", compare=False)

    def default_dest(self) -> Path:
        """The destination used when ``--dest`` is not given (relative to the cwd)."""
        return Path(self.dest()) if callable(self.dest) else Path(self.dest)


def keras_cache_dir(subdir: str = "models") -> Path:
    """Directory where ``keras.utils.get_file(..., cache_subdir=subdir)`` looks.

    Mirrors Keras 3 (``keras/src/backend/config.py`` and
    ``keras/src/utils/file_utils.py``): ``$KERAS_HOME`` if set, else ``~/.keras``
    (``/tmp/.keras`` when the home directory is not writable); if that base is not
    writable Keras falls back to ``/tmp/.keras``.  The environment is read at call
    time, so tests can point ``KERAS_HOME`` at a temporary directory.
    """
    base = os.environ.get("KERAS_HOME")
    if base is None:
        home = os.path.expanduser("~")
        base = os.path.join(home if os.access(home, os.W_OK) else "/tmp", ".keras")
    base = os.path.expanduser(base)
    # Keras creates its home directory when imported; one that exists but is not
    # writable makes get_file use /tmp/.keras instead.
    if os.path.exists(base) and not os.access(base, os.W_OK):
        base = os.path.join("/tmp" if os.path.isdir("/tmp") else tempfile.gettempdir(), ".keras")
    return Path(base) / subdir


# Keras ImageNet weights for EfficientNetV2.  URL prefix and hashes are copied from
# keras/src/applications/efficientnet_v2.py (Keras 3.15.1): BASE_WEIGHTS_PATH and
# WEIGHTS_HASHES[<variant>][1] (the "_notop" entry).  The hashes are 32 hex digits,
# which keras.utils.get_file(hash_algorithm="auto") checks as md5.  Sizes unknown.
KERAS_EFFICIENTNET_V2_BASE = (
    "https://storage.googleapis.com/tensorflow/keras-applications/efficientnet_v2/"
)
_KERAS_HASH_SOURCE = (
    "keras 3.15.1 keras/src/applications/efficientnet_v2.py WEIGHTS_HASHES (notop)"
)


def _keras_weights(name: str, variant: str, md5: str) -> Resource:
    filename = f"efficientnetv2-{variant}_notop.h5"
    return Resource(
        name=name,
        files=(
            RemoteFile(
                url=KERAS_EFFICIENTNET_V2_BASE + filename,
                filename=filename,
                md5=md5,
                checksum_source=_KERAS_HASH_SOURCE,
            ),
        ),
        dest=keras_cache_dir,
        extract=False,
        description=(
            f"Keras ImageNet weights for EfficientNetV2{variant.upper()} without the "
            "classification head, placed in the Keras cache ($KERAS_HOME/models or "
            f"~/.keras/models) so keras.applications.EfficientNetV2{variant.upper()}"
            "(include_top=False, weights='imagenet') loads them offline"
        ),
    )


RESOURCES: dict[str, Resource] = {
    "flickr8k": Resource(
        name="flickr8k",
        files=(
            # MD5s: mlverse/torchvision (R package), R/dataset-flickr.R,
            # flickr8k_caption_dataset `resources`, which checks these exact
            # jbrownlee/Datasets release URLs with tools::md5sum.  The same values
            # also appear as EXPECTED_MD5 in independent CMake download scripts.
            # Sizes: not published next to these checksums, so left unknown.
            RemoteFile(
                url="https://github.com/jbrownlee/Datasets/releases/download/Flickr8k/Flickr8k_Dataset.zip",
                filename="Flickr8k_Dataset.zip",
                md5="f18a1e2920de5bd84dae7cf08ec78978",
                checksum_source="mlverse/torchvision R/dataset-flickr.R",
            ),
            RemoteFile(
                url="https://github.com/jbrownlee/Datasets/releases/download/Flickr8k/Flickr8k_text.zip",
                filename="Flickr8k_text.zip",
                md5="bf6c1abcb8e4a833b7f922104de18627",
                checksum_source="mlverse/torchvision R/dataset-flickr.R",
            ),
        ),
        dest="data/flickr8k",
        extract=True,
        description=(
            "Flickr8k images (Flickr8k_Dataset.zip, ~1 GB, unpacks to "
            "Flicker8k_Dataset/) and captions/splits (Flickr8k_text.zip: "
            "Flickr8k.token.txt, Flickr_8k.trainImages.txt, ...)"
        ),
        notes="macOS resource-fork entries (__MACOSX/) in the archives are not extracted.",
    ),
    "glove": Resource(
        name="glove",
        files=(
            # MD5: used by several independent projects that verify this exact file,
            # e.g. wedavey/atnlp (atnlp/.../install_glove.py, MD5ZIP) and various
            # download scripts (glove_md5=...).  Size 862182613 bytes: the
            # Content-Length reported by nlp.stanford.edu / downloads.cs.stanford.edu
            # in published wget logs ("Length: 862182613 (822M)").
            # Fallback mirror: the Hugging Face copy of the same archive (its bytes
            # are still checked against the md5/size above).
            RemoteFile(
                url="https://nlp.stanford.edu/data/glove.6B.zip",
                filename="glove.6B.zip",
                md5="056ea991adb4740ac6bf1b6d9b50408b",
                size=862182613,
                mirrors=("https://huggingface.co/stanfordnlp/glove/resolve/main/glove.6B.zip",),
                checksum_source="wedavey/atnlp install_glove.py MD5ZIP (and others)",
            ),
        ),
        dest="data/glove",
        extract=True,
        description="GloVe 6B word vectors (glove.6B.{50,100,200,300}d.txt, 822 MB zip)",
    ),
    "efficientnetv2l": _keras_weights("efficientnetv2l", "l", "b0b66b5c863aef5b46e8608fe1711615"),
    "efficientnetv2s": _keras_weights("efficientnetv2s", "s", "af0682fb74e8c54910f2d4393339c070"),
    "efficientnetv2b0": _keras_weights("efficientnetv2b0", "b0", "893217f2bb855e2983157299931e43ff"),
}


# --------------------------------------------------------------------------- #
# Helpers
# --------------------------------------------------------------------------- #
def _say(message: str, quiet: bool = False) -> None:
    if not quiet:
        print(message, file=sys.stderr, flush=True)


def _resolve_algorithm(checksum: str | None, algorithm: str | None) -> str | None:
    if checksum is None:
        return None
    checksum = checksum.strip().lower()
    if algorithm is None:
        algorithm = _HASH_LENGTHS.get(len(checksum))
        if algorithm is None:
            raise FetchError(
                f"cannot tell the hash algorithm of checksum {checksum!r} "
                "(expected 32 hex digits for md5 or 64 for sha256)"
            )
    algorithm = algorithm.lower()
    if algorithm not in ("md5", "sha256"):
        raise FetchError(f"unsupported hash algorithm {algorithm!r} (use md5 or sha256)")
    if not re.fullmatch(r"[0-9a-f]+", checksum) or len(checksum) != (32 if algorithm == "md5" else 64):
        raise FetchError(f"malformed {algorithm} checksum {checksum!r}")
    return algorithm


def _new_hasher(algorithm: str | None):
    return hashlib.new(algorithm) if algorithm else None


def hash_file(path: str | os.PathLike, algorithm: str = "sha256") -> str:
    """Hex digest of a file."""
    hasher = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            hasher.update(block)
    return hasher.hexdigest()


def _file_ok(path: Path, checksum: str | None, algorithm: str | None, size: int | None) -> bool:
    """Whether an existing file can be trusted as the finished download."""
    if not path.is_file():
        return False
    if size is not None and path.stat().st_size != size:
        return False
    if checksum is not None:
        return hash_file(path, algorithm) == checksum.lower()
    if path.suffix.lower() == ".zip":
        return _zip_is_intact(path)
    return True


def _zip_is_intact(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as zf:
            return zf.testzip() is None
    except (zipfile.BadZipFile, OSError, EOFError):
        return False


def _remove(*paths: Path) -> None:
    for p in paths:
        try:
            p.unlink()
        except FileNotFoundError:
            pass


def mirror_url(mirror: str, filename: str) -> str:
    """URL of ``filename`` on a mirror: ``mirror.rstrip('/') + '/' + filename``."""
    return mirror.rstrip("/") + "/" + filename


def _describe_url_error(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None)
    return str(reason if reason is not None else exc) or type(exc).__name__


def _parse_content_range(value: str | None) -> tuple[int | None, int | None]:
    """``bytes START-END/TOTAL`` (or ``bytes */TOTAL``) -> (START, TOTAL)."""
    if not value:
        return None, None
    m = re.match(r"\s*bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)", value)
    if not m:
        return None, None
    start = int(m.group(1)) if m.group(1) is not None else None
    total = int(m.group(2)) if m.group(2) != "*" else None
    return start, total


# --------------------------------------------------------------------------- #
# Download
# --------------------------------------------------------------------------- #
def download(
    url: str,
    dest_path: str | os.PathLike,
    checksum: str | None = None,
    algorithm: str | None = None,
    progress: bool = True,
    retries: int = DEFAULT_RETRIES,
    *,
    size: int | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    force: bool = False,
) -> Path:
    """Download ``url`` to ``dest_path`` (a file path; an existing directory gets
    the URL's base name), resuming from ``dest_path + '.part'`` when present.

    ``checksum``: expected hex digest; ``algorithm`` "md5"/"sha256" or None to infer
    it from the length (32 -> md5, 64 -> sha256).  Without a checksum, a ``.zip``
    is checked with :meth:`zipfile.ZipFile.testzip` and ``size`` (if given) is
    compared.  An existing file that verifies is returned without any request
    unless ``force``.  Raises :class:`FetchError`; on Ctrl-C the ``.part`` file is
    kept and :class:`KeyboardInterrupt` propagates.
    """
    dest = Path(dest_path)
    if dest.is_dir():
        name = posixpath.basename(urllib.request.urlparse(url).path)
        if not name:
            raise FetchError(f"cannot derive a file name from {url}; pass a file path")
        dest = dest / name
    algorithm = _resolve_algorithm(checksum, algorithm)
    checksum = checksum.strip().lower() if checksum else None
    retries = max(1, int(retries))
    part = dest.with_name(dest.name + ".part")

    if force:
        _remove(dest, part)
    elif dest.exists():
        if _file_ok(dest, checksum, algorithm, size):
            return dest
        # Present but wrong (truncated, outdated): fetch it again.
        _remove(dest)

    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FetchError(f"cannot create directory {dest.parent}: {exc}") from None

    last_error = ""
    for attempt in range(1, retries + 1):
        try:
            digest = _transfer(url, part, algorithm, size, progress, timeout)
        except _ConnectionCut as exc:
            last_error = str(exc)
            if attempt < retries:
                have = part.stat().st_size if part.exists() else 0
                _say(
                    f"{dest.name}: {exc}; retrying ({attempt + 1}/{retries}) from byte {have}",
                    quiet=not progress,
                )
                time.sleep(RETRY_BACKOFF_S * attempt)
            continue
        _verify_and_commit(url, dest, part, checksum, algorithm, size, digest)
        return dest

    kept = part.exists() and part.stat().st_size > 0
    raise FetchError(
        f"download of {url} failed after {retries} attempt(s): {last_error}"
        + (f". The partial file {part} was kept; run again to resume." if kept else "")
    )


def _transfer(
    url: str,
    part: Path,
    algorithm: str | None,
    size: int | None,
    progress: bool,
    timeout: float,
) -> str | None:
    """One attempt: append to ``part`` (resuming) until the body is complete.

    Returns the hex digest of the whole ``.part`` (or None without an algorithm).
    Raises _ConnectionCut for transient failures (part kept), FetchError for
    final ones (part removed).
    """
    offset = part.stat().st_size if part.exists() else 0
    if size is not None and offset > size:  # cannot be a prefix of the right file
        _remove(part)
        offset = 0
    if size is not None and offset == size and offset > 0:
        return _hash_existing(part, algorithm)  # already complete; just verify

    headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        code = exc.code
        content_range = exc.headers.get("Content-Range") if exc.headers else None
        exc.close()
        if code == 416 and offset:
            _, total = _parse_content_range(content_range)
            if total is not None and total == offset:  # the .part is complete
                return _hash_existing(part, algorithm)
            _remove(part)  # server disagrees with what we have: start over
            raise _ConnectionCut(f"server refused to resume (HTTP 416) for {url}") from None
        if code >= 500 or code == 429:
            raise _ConnectionCut(f"HTTP {code} {exc.reason} for {url}") from None
        _remove(part)
        raise FetchError(f"HTTP {code} {exc.reason} for {url}") from None
    except urllib.error.URLError as exc:
        raise _ConnectionCut(f"cannot reach {url}: {_describe_url_error(exc)}") from None
    except (OSError, http.client.HTTPException) as exc:  # timeouts, resets
        raise _ConnectionCut(f"connection to {url} failed: {exc or type(exc).__name__}") from None

    with response:
        status = response.status
        if status == 206:
            start, total = _parse_content_range(response.headers.get("Content-Range"))
            if start != offset:  # not the range we asked for: start from scratch
                response.close()
                _remove(part)
                raise _ConnectionCut(f"server resumed at byte {start}, expected {offset}")
            mode = "ab"
        else:
            if status != 200:
                _remove(part)
                raise FetchError(f"unexpected HTTP {status} for {url}")
            offset = 0  # server ignored Range (or none was sent): restart
            total = None
            mode = "wb"
        length = response.headers.get("Content-Length")
        remaining = int(length) if length and length.isdigit() else None
        if total is None and remaining is not None:
            total = offset + remaining
        if total is None:
            total = size

        hasher = _new_hasher(algorithm)
        if hasher is not None and offset:
            _hash_into(part, hasher)
        written = 0
        bar = tqdm(
            total=total,
            initial=offset,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc=part.name[: -len(".part")],
            disable=not progress,
            file=sys.stderr,
            leave=True,
        )
        try:
            with open(part, mode) as out:
                while True:
                    try:
                        chunk = response.read(CHUNK_SIZE)
                    except (OSError, http.client.HTTPException) as exc:
                        raise _ConnectionCut(
                            f"connection cut after {offset + written} bytes ({exc or type(exc).__name__})"
                        ) from None
                    if not chunk:
                        break
                    out.write(chunk)
                    if hasher is not None:
                        hasher.update(chunk)
                    written += len(chunk)
                    bar.update(len(chunk))
        finally:
            bar.close()
        if remaining is not None and written < remaining:
            raise _ConnectionCut(
                f"connection cut after {offset + written} of {offset + remaining} bytes"
            )
    return hasher.hexdigest() if hasher is not None else None


def _hash_into(path: Path, hasher) -> None:
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            hasher.update(block)


def _hash_existing(path: Path, algorithm: str | None) -> str | None:
    if algorithm is None:
        return None
    hasher = _new_hasher(algorithm)
    _hash_into(path, hasher)
    return hasher.hexdigest()


def _verify_and_commit(
    url: str,
    dest: Path,
    part: Path,
    checksum: str | None,
    algorithm: str | None,
    size: int | None,
    digest: str | None,
) -> None:
    got_size = part.stat().st_size
    if size is not None and got_size != size:
        _remove(part, dest)
        raise VerificationError(
            f"size mismatch for {dest.name} from {url}: expected {size} bytes, got "
            f"{got_size}; the download was deleted, run again to retry"
        )
    if checksum is not None and digest != checksum:
        _remove(part, dest)
        raise VerificationError(
            f"{algorithm} checksum mismatch for {dest.name} from {url}: expected "
            f"{checksum}, got {digest}; the download was deleted, run again to retry "
            "(if it keeps failing, the server or mirror serves a different file)"
        )
    if checksum is None and dest.suffix.lower() == ".zip" and not _zip_is_intact(part):
        _remove(part, dest)
        raise VerificationError(
            f"{dest.name} from {url} is not a valid zip archive (zip integrity test "
            "failed); the download was deleted"
        )
    os.replace(part, dest)


# --------------------------------------------------------------------------- #
# Extraction
# --------------------------------------------------------------------------- #
def _unsafe_member(name: str) -> bool:
    """True for absolute paths, drive letters and any ``..`` component."""
    normalized = name.replace("\\", "/")
    if normalized.startswith("/") or re.match(r"^[A-Za-z]:", normalized):
        return True
    return any(part == ".." for part in normalized.split("/"))


def _unsafe_tar_member(info: tarfile.TarInfo) -> str | None:
    """Why a tar member must not be extracted, or None when it is fine."""
    if _unsafe_member(info.name):
        return "would be written outside the destination"
    if info.issym() or info.islnk():
        target = info.linkname
        if info.issym():
            target = posixpath.join(posixpath.dirname(info.name.replace("\\", "/")), target)
        if _unsafe_member(info.linkname) or posixpath.normpath(target).startswith(".."):
            return f"links outside the destination ({info.linkname!r})"
    if info.ischr() or info.isblk() or info.isfifo():
        return "is a device or fifo"
    return None


def _skip_member(name: str) -> bool:
    """macOS resource-fork junk shipped inside some archives (e.g. Flickr8k)."""
    normalized = name.replace("\\", "/")
    return normalized.startswith("__MACOSX/") or normalized == "__MACOSX"


_TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")


def _archive_kind(archive: Path) -> str:
    name = archive.name.lower()
    if name.endswith(".zip"):
        return "zip"
    if name.endswith(_TAR_SUFFIXES):
        return "tar"
    if zipfile.is_zipfile(archive):
        return "zip"
    if tarfile.is_tarfile(archive):
        return "tar"
    raise FetchError(f"don't know how to extract {archive.name} (expected .zip or .tar[.gz])")


def _merge_move(src: Path, dst: Path) -> None:
    """Move ``src`` onto ``dst``, merging directories and replacing files."""
    if src.is_dir() and not src.is_symlink() and dst.is_dir() and not dst.is_symlink():
        for child in list(src.iterdir()):
            _merge_move(child, dst / child.name)
        src.rmdir()
        return
    if dst.is_symlink() or dst.is_file():
        dst.unlink()
    elif dst.is_dir():
        shutil.rmtree(dst)
    os.replace(src, dst)


def extract(archive: str | os.PathLike, dest: str | os.PathLike, *, force: bool = False) -> Path:
    """Extract a .zip / .tar(.gz) archive into ``dest`` safely and idempotently.

    Members with absolute paths or ``..`` components are refused (nothing is
    extracted then); tar links and special files are subject to tarfile's "data"
    filter.  Members are unpacked into a temporary directory inside ``dest`` and
    then moved into place, so an interrupted extraction leaves no half-written
    tree behind.  A marker ``dest/.extracted-ARCHIVENAME`` records success; when
    it exists the archive is not extracted again (unless ``force``).
    """
    archive = Path(archive)
    dest = Path(dest)
    if not archive.is_file():
        raise FetchError(f"archive not found: {archive}")
    dest.mkdir(parents=True, exist_ok=True)
    marker = dest / f".extracted-{archive.name}"
    if marker.exists() and not force:
        return dest
    kind = _archive_kind(archive)

    tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=dest))
    try:
        count = 0
        if kind == "zip":
            try:
                with zipfile.ZipFile(archive) as zf:
                    members = zf.infolist()
                    for info in members:
                        if _unsafe_member(info.filename):
                            raise FetchError(
                                f"refusing to extract {archive.name}: member "
                                f"{info.filename!r} would be written outside {dest}"
                            )
                    for info in members:
                        if _skip_member(info.filename):
                            continue
                        zf.extract(info, tmp)
                        count += 1
            except (zipfile.BadZipFile, EOFError) as exc:
                raise FetchError(f"{archive.name} is not a valid zip archive: {exc}") from None
        else:
            try:
                with tarfile.open(archive) as tf:
                    members = tf.getmembers()
                    for info in members:
                        problem = _unsafe_tar_member(info)
                        if problem:
                            raise FetchError(
                                f"refusing to extract {archive.name}: member "
                                f"{info.name!r} {problem}"
                            )
                    keep = [m for m in members if not _skip_member(m.name)]
                    if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4
                        try:
                            tf.extractall(tmp, members=keep, filter="data")
                        except tarfile.FilterError as exc:
                            raise FetchError(f"refusing to extract {archive.name}: {exc}") from None
                    else:  # pragma: no cover - older interpreters
                        tf.extractall(tmp, members=keep)
                    count = len(keep)
            except tarfile.TarError as exc:
                raise FetchError(f"{archive.name} is not a valid tar archive: {exc}") from None
        for child in list(tmp.iterdir()):
            _merge_move(child, dest / child.name)
        marker.write_text(f"{archive.name}\n{count} members\n", encoding="utf-8")
    except OSError as exc:
        raise FetchError(f"extracting {archive.name} into {dest} failed: {exc}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


_extract_archive = extract  # ``fetch`` has a parameter named ``extract``


# --------------------------------------------------------------------------- #
# Resource-level fetch
# --------------------------------------------------------------------------- #
def _candidate_urls(remote: RemoteFile, mirror: str | None) -> list[str]:
    if mirror:
        return [mirror_url(mirror, remote.filename)]
    return [remote.url, *remote.mirrors]


def fetch(
    name: str,
    dest: str | os.PathLike | None = None,
    mirror: str | None = None,
    force: bool = False,
    extract: bool = True,
    progress: bool = True,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    retries: int = DEFAULT_RETRIES,
) -> list[Path]:
    """Download (and, for archives, extract) resource ``name``; return the files.

    ``dest`` overrides the resource's default directory; ``mirror`` replaces the
    URL prefix of every file (``MIRROR/FILENAME``); ``force`` re-downloads and
    re-extracts even when verified copies exist.
    """
    resource = RESOURCES.get(name)
    if resource is None:
        available = ", ".join(sorted(RESOURCES)) or "(none)"
        raise FetchError(f"unknown resource {name!r}; available: {available}")
    target = Path(dest) if dest is not None else resource.default_dest()
    do_extract = extract and resource.extract
    quiet = not progress

    paths: list[Path] = []
    for remote in resource.files:
        path = target / remote.filename
        if not force and path.exists() and _file_ok(path, remote.checksum, remote.algorithm, remote.size):
            _say(f"{remote.filename}: already present and verified, skipping download", quiet)
        else:
            errors: list[str] = []
            force_download = force
            for url in _candidate_urls(remote, mirror):
                _say(f"{remote.filename}: downloading {url}", quiet)
                try:
                    download(
                        url,
                        path,
                        checksum=remote.checksum,
                        algorithm=remote.algorithm,
                        progress=progress,
                        retries=retries,
                        size=remote.size,
                        timeout=timeout,
                        force=force_download,
                    )
                    break
                except VerificationError:  # wrong bytes: report, don't hide it
                    raise
                except FetchError as exc:
                    errors.append(str(exc))
                    force_download = False  # keep the .part for the next URL
            else:
                raise FetchError(
                    f"could not download {remote.filename}: " + " | ".join(errors)
                )
        paths.append(path)
        if do_extract:
            marker = target / f".extracted-{remote.filename}"
            if marker.exists() and not force:
                _say(f"{remote.filename}: already extracted into {target}, skipping", quiet)
            else:
                _say(f"{remote.filename}: extracting into {target}", quiet)
                _extract_archive(path, target, force=True)
    return paths


# --------------------------------------------------------------------------- #
# Command line
# --------------------------------------------------------------------------- #
def _describe_resources(resources: Iterable[Resource]) -> str:
    lines = []
    for res in resources:
        try:
            where = res.default_dest()
        except Exception:  # pragma: no cover - defensive: listing must not fail
            where = "?"
        lines.append(f"  {res.name:<18} -> {where}\n      {res.description}")
    return "\n".join(lines)


def add_fetch_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``fetch`` options to ``parser`` (a sub-command parser)."""
    parser.add_argument(
        "name",
        nargs="?",
        metavar="NAME",
        help="resource to download: " + ", ".join(RESOURCES) + " (use --list for details)",
    )
    parser.add_argument(
        "--dest",
        metavar="DIR",
        default=None,
        help="destination directory (default: the resource's own, e.g. data/flickr8k; "
        "Keras weights go to $KERAS_HOME/models or ~/.keras/models)",
    )
    parser.add_argument(
        "--mirror",
        metavar="URL",
        default=None,
        help="fetch every file from URL/FILENAME instead of its default URL",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="download and extract again even if verified copies exist",
    )
    parser.add_argument(
        "--no-extract",
        dest="extract",
        action="store_false",
        help="keep archives packed",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help=f"socket timeout (default {DEFAULT_TIMEOUT:g})",
    )
    parser.add_argument(
        "--retries",
        type=int,
        default=DEFAULT_RETRIES,
        metavar="N",
        help=f"attempts per URL on connection errors, resuming each time (default {DEFAULT_RETRIES})",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars or messages")
    parser.add_argument("--list", action="store_true", help="list the resources and exit")
    parser.set_defaults(extract=True)
    return parser


def run_fetch(args: argparse.Namespace) -> int:
    """Execute parsed ``fetch`` arguments; 0 on success, non-zero on failure."""
    if getattr(args, "list", False):
        print(_describe_resources(RESOURCES.values()))
        return 0
    name = getattr(args, "name", None)
    if not name:
        print(
            "error: fetch needs a resource NAME; available: " + ", ".join(sorted(RESOURCES)),
            file=sys.stderr,
        )
        return 2
    quiet = bool(getattr(args, "quiet", False))
    try:
        paths = fetch(
            name,
            dest=getattr(args, "dest", None),
            mirror=getattr(args, "mirror", None),
            force=bool(getattr(args, "force", False)),
            extract=bool(getattr(args, "extract", True)),
            progress=not quiet,
            timeout=float(getattr(args, "timeout", DEFAULT_TIMEOUT) or DEFAULT_TIMEOUT),
            retries=int(getattr(args, "retries", DEFAULT_RETRIES) or DEFAULT_RETRIES),
        )
    except FetchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(
            "\ninterrupted: partial downloads (*.part) were kept; run the same command "
            "again to resume",
            file=sys.stderr,
        )
        return 130
    except OSError as exc:  # disk full, permissions, ...
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for path in paths:
        print(path)
    return 0


main_fetch = run_fetch


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m source_code.data.fetch NAME ...``"""
    parser = argparse.ArgumentParser(
        prog="python -m source_code fetch",
        description="Download the data sets and pretrained weights used by the project.",
    )
    add_fetch_arguments(parser)
    return run_fetch(parser.parse_args(argv))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
