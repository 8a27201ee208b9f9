"""Producing the next items of a loop in a background thread while the loop works on
the current one: a backbone pass runs in TensorFlow's own threads and releases the
GIL, so scikit-image's segmentation of the next image (which releases it too) runs
beside it instead of before it. Only worth it for work that leaves TensorFlow its
cores: gathering the next training batch this way made epochs 6 % slower here."""
from __future__ import annotations

import queue
import threading
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")
_END = object()


class _Raised:
    def __init__(self, error: BaseException):
        self.error = error


def ahead(items: Iterable[T], size: int = 2) -> Iterator[T]:
    """The items of ``items``, in order, each produced by a background thread while the
    consumer is at most ``size`` items behind. An exception raised while producing an
    item is raised here, at that item. ``ahead(map(fn, xs))`` computes fn ahead."""
    if size < 1:
        raise ValueError(f"size must be at least 1, got {size}")
    buffer: queue.Queue = queue.Queue(size)
    stop = threading.Event()

    def produce():
        try:
            for item in items:
                if stop.is_set():
                    return
                buffer.put(item)
        except BaseException as error:      # handed over to the consumer's thread
            buffer.put(_Raised(error))
            return
        buffer.put(_END)

    worker = threading.Thread(target=produce, name="prefetch", daemon=True)
    worker.start()
    try:
        while True:
            item = buffer.get()
            if item is _END:
                return
            if isinstance(item, _Raised):
                raise item.error
            yield item
    finally:
        # a consumer that stops early: let the producer finish its current put and end
        stop.set()
        while worker.is_alive():
            try:
                buffer.get(timeout=0.05)
            except queue.Empty:
                pass
