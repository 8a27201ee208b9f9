"""The background producer of training batches and segmentations: same items, same
order, errors at the item that raised them, nothing left running."""
import threading
import time

import pytest

from source_code.prefetch import ahead


def test_items_come_in_order_and_ahead_of_the_consumer():
    produced = []

    def numbers():
        for i in range(6):
            produced.append(i)
            yield i
    seen = []
    for item in ahead(numbers(), size=2):
        if item == 0:
            deadline = time.monotonic() + 5
            while len(produced) < 3 and time.monotonic() < deadline:
                time.sleep(0.01)      # the producer fills the buffer meanwhile
            assert len(produced) == 3     # one handed over, two waiting: no further
        seen.append(item)
    assert seen == list(range(6))
    assert list(ahead(map(lambda x: x * x, range(5)), 4)) == [0, 1, 4, 9, 16]


def test_an_error_reaches_the_consumer_at_its_item():
    def failing():
        yield 1
        raise KeyError("broken item")
    got = []
    with pytest.raises(KeyError, match="broken item"):
        for item in ahead(failing()):
            got.append(item)
    assert got == [1]


def test_stopping_early_ends_the_producer():
    before = threading.active_count()
    for item in ahead(iter(range(1000)), size=2):
        if item == 3:
            break
    deadline = time.monotonic() + 5
    while threading.active_count() > before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert threading.active_count() == before
    with pytest.raises(ValueError, match="at least 1"):
        list(ahead([1], size=0))
