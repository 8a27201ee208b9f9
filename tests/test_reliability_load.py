"""A short run of bench/load.py (about 70 s): `python app.py` on the bundled default model
under six concurrent clients mixing captions, explanations and bad inputs, with a queue
small enough to fill. The three-minute run behind the README's figures is the same code:
`python bench/load.py`."""
from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
import load as bench  # bench/load.py

from conftest import SHAPES_BUNDLE


@pytest.mark.slow
def test_the_server_under_load(tmp_path):
    log = tmp_path / "server.log"
    report = bench.load_test(SHAPES_BUNDLE, clients=6, duration=45, timeout=60, queue_size=2,
                             threads=6, rss_interval=1, warm_up_s=20, log_path=log)
    table = bench.format_report(report)
    print(table)
    # no 5xx but 503, every 503 with Retry-After, no request without an answer in 60 s,
    # every answer the expected one, RSS within 10 % after warm-up, healthy at the end
    assert report["problems"] == [], table
    statuses = report["all"]["statuses"]
    assert statuses.get("200", 0) >= 20, table
    assert statuses.get("503", 0) >= 1, "the queue never filled: the 503 path went untested"
    assert "400" in statuses and "413" in statuses, table
    assert report["setup"]["server_exit_code"] == 0
    assert "Traceback" not in log.read_text(errors="replace")
