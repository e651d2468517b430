"""The sessions benchmark runs end to end with tiny parameters and reports its figures.

It starts its own redis-server, ticketlock servers on every store and, when etcd is
installed, an etcd. No speed is asserted: only that every figure is there.
"""

from __future__ import annotations

import re

import pytest

from bench import etcd as etcd_bench
from tests.bench.test_bench_smoke import assert_reported, run_module

NUMBER = r"\d[\d,]*(?:\.\d+)?"


@pytest.mark.timeout(120)
def test_the_sessions_benchmark_reports_every_figure() -> None:
    output = run_module(
        "bench.sessions",
        "--tasks", "4", "--rounds", "1", "--duration", "0.1", "--warmup", "0",
        "--count-cycles", "5", "--handoff-rounds", "1", "--threads", "2",
        "--idle-streams", "20", "--idle-channels", "2", "--timeout", "100",
        "--variants", "noop", "lock", "stream", "pipelined", "etcd", "sync", "idle",
    )  # fmt: skip
    for store in ("in_memory", "redis", "concurrent_redis"):
        for label in ("no-op Check", "`async with client.lock()`", "reused stream, stubs"):
            assert re.search(rf"^\| {store} +\| {re.escape(label)}.*{NUMBER}/s", output, re.M), (
                store,
                label,
                output,
            )
        assert re.search(rf"^\| {store} +\| {NUMBER} ms / {NUMBER} ms", output, re.M), output
    if etcd_bench.etcd_path() is not None:
        assert re.search(rf"^\| etcd +\| etcd Lock \+ Unlock.*{NUMBER}/s", output, re.M), output
    # A reused stream costs two messages each way per cycle and (almost) no call.
    assert re.search(
        r"^\| reused stream, stubs, waits for released +\| 0\.2 +\| 2 +\| 2 ", output, re.M
    ), output
    assert re.search(rf"Sync `LockClient.lock\(\)` at 2 threads .*{NUMBER}/s", output), output
    assert re.search(rf"RSS with 20 idle reused streams: {NUMBER} MiB", output), output
    assert "HANDOFF ERRORS" not in output
    assert_reported(output, "bench.sessions")
