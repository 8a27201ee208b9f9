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
  request. glibc's own trimming thresholds are left alone: a fixed low mmap
  threshold also returned memory, but page-faulting every tensor afresh made a
  backward pass through EfficientNetV2L twice as slow.

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


@lru_cache(maxsize=1)
def _libc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:          # not glibc (musl...): its own allocator, nothing to tune
        return None


def configure_process_memory() -> None:
    """Call once, early: before TensorFlow is imported and before threads start."""
    os.environ.setdefault("TF_ONEDNN_USE_SYSTEM_ALLOCATOR", "1")
    libc = _libc()
    if libc is None:
        return
    if not os.environ.get("MALLOC_ARENA_MAX"):
        libc.mallopt(M_ARENA_MAX, MALLOC_ARENAS)


def release_free_memory() -> None:
    """Give free heap memory back to the system (after a request's peak)."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)
