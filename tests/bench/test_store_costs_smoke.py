"""The store costs benchmark runs end to end with tiny parameters and reports its figures.

No figure is asserted beyond being there: per store, a memory cost per
conversation, and a Redis time for every operation at the ticket limit.
"""

from __future__ import annotations

import re

import pytest

from tests.bench.test_bench_smoke import run_module


@pytest.mark.timeout(120)
def test_store_costs_reports_memory_and_redis_time_per_store() -> None:
    output = run_module(
        "bench.store_costs", "--conversations", "200", "--tickets", "5", "--repeat", "1"
    )
    for store in ("in_memory", "redis", "concurrent_redis"):
        assert re.search(rf"^\| {store} \| [\d,]+ B \| [\d,]+ B \|$", output, re.M), output
    rows = re.findall(
        r"^\| (?:\w|[ ()']).+ \| [\d,]+ / [\d,]+ \| [\d,]+ / [\d,]+ \|$", output, re.M
    )
    assert len(rows) == 7, output
