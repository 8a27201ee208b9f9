"""Keep the server's resident memory near what the model needs, not near its peak.

A request through a large backbone (EfficientNetV2L at 480 px) briefly needs
gigabytes of activations for its backward passes. Left to the defaults, that
peak stays resident for the life of the process:

* TensorFlow's oneDNN build allocates large tensors from its own BFC pool, which
  never gives memory back: ``TF_ONEDNN_USE_SYSTEM_ALLOCATOR=1`` sends them to
  malloc instead. Read when TensorFlow creates its allocator, so
  ``configure_process_memory`` must run before TensorFlow is imported.
* glibc gives threads that allocate at once arenas of their own (up to 8 per
  core) and keeps their freed memory: capped at two, as ``MALLOC_ARENA_MAX=2``;
* ``release_free_memory`` (``malloc_trim``) returns what is left free after a
  request, when that is much (``TRIM_ABOVE``): trimming after every request made
  the next one page-fault its tensors afresh, and cost the small bundles a third of
  their latency (shapes, in process: explain 30.9 against 18.3 ms, caption 22.3
  against 13.2), for the ~30 MB they leave free. glibc's own trimming thresholds
  are left alone: a fixed low mmap threshold also returned memory, but
  page-faulting every tensor afresh made a backward pass through EfficientNetV2L
  twice as slow.

Measured with EfficientNetV2L (bench/latency.py --model l --server): see the README.
Each setting already present in the environment is left as the user set it.
"""
from __future__ import annotations

import ctypes
import os
import sys
from functools import lru_cache

M_ARENA_MAX = -8          # glibc's mallopt parameter
MALLOC_ARENAS = 2
TRIM_ABOVE = 256 * 2**20  # bytes free in the heap before a request's end trims it


class _MallInfo2(ctypes.Structure):
    """glibc's struct mallinfo2 (glibc >= 2.33)."""
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]


@lru_cache(maxsize=1)
def _libc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:          # not glibc (musl...): its own allocator, nothing to tune
        return None
    if hasattr(libc, "mallinfo2"):
        libc.mallinfo2.restype = _MallInfo2
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


def configure_process_memory() -> None:
    """Call once, early: before TensorFlow is imported and before threads start."""
    os.environ.setdefault("TF_ONEDNN_USE_SYSTEM_ALLOCATOR", "1")
    libc = _libc()
    if libc is None:
        return
    if not os.environ.get("MALLOC_ARENA_MAX"):
        libc.mallopt(M_ARENA_MAX, MALLOC_ARENAS)


def free_heap_bytes() -> int | None:
    """Bytes free in glibc's heap (mallinfo2's fordblks), None where it cannot say."""
    libc = _libc()
    if libc is None or not hasattr(libc, "mallinfo2"):
        return None
    return int(libc.mallinfo2().fordblks)


def release_free_memory(above: int = 0) -> None:
    """Give free heap memory back to the system (after a request's peak), when more
    than ``above`` bytes lie free (always, where the heap cannot be measured)."""
    libc = _libc()
    if libc is None:
        return
    free = free_heap_bytes() if above else None
    if free is None or free > above:
        libc.malloc_trim(0)
