"""The benchmarks run and report numbers, with tiny counts.

Proves the scripts work end to end against real server processes; it asserts
no speed, only that each report has its figures and its reproduce command.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from bench import __main__ as bench_main

ROOT = Path(__file__).resolve().parents[2]
NUMBER = re.compile(r"\d[\d,]*(\.\d+)? (ms|/s|MiB|s)\b")


def run_module(module: str, *args: str) -> str:
    completed = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    return completed.stdout


def assert_reported(output: str, module: str) -> None:
    assert NUMBER.search(output), output
    assert re.search(rf"^reproduce: cd .* -m {re.escape(module)} ", output, re.M), output


@pytest.mark.timeout(60)
def test_all_benchmarks_run_and_summarize() -> None:
    output = run_module(
        "bench",
        "--handoff-rounds", "1", "--handoff-waiters", "3", "--handoff-hold-ms", "0",
        "--cycles-concurrency", "1", "4", "--cycles-rounds", "1",
        "--cycles-duration", "0.1", "--cycles-warmup", "0", "--cycles-count", "20",
        "--waiters-streams", "50", "--waiters-channels", "2", "--waiters-batch", "25",
        "--timeout", "60", "--no-redis",  # tests/bench/test_redis_bench_smoke.py runs that
    )  # fmt: skip
    for heading in ("## Handoff latency", "## Uncontended lock cycles", "## 50 concurrent waiters"):
        assert heading in output, output
    summary = output.split("## Summary", 1)[1]
    assert "handoff, `Lock` stream" in summary
    assert "`Lock` stream cycle" in summary
    assert "server RSS peak, 50 waiting streams" in summary
    assert "acquired in ticket order: yes (50 of 50 acquired)" in output
    for module in ("bench.handoff", "bench.cycles", "bench.waiters", "bench"):
        assert_reported(output, module)


@pytest.mark.timeout(60)
def test_baseline_runs() -> None:
    output = run_module(
        "bench.baseline", "--calls", "20", "--concurrency", "1", "4", "--duration", "0.1",
        "--rounds", "1",
    )  # fmt: skip
    assert "no-op Check round trip, sequential" in output
    assert_reported(output, "bench.baseline")


@pytest.mark.timeout(60)
def test_waiters_over_the_ticket_protocol() -> None:
    output = run_module(
        "bench.waiters", "--streams", "20", "--channels", "2", "--protocol", "ticket",
        "--noop-calls", "10", "--timeout", "60",
    )  # fmt: skip
    assert "IssueTicket + WaitForTicket streams" in output
    assert "acquired in ticket order: yes (20 of 20 acquired)" in output
    assert_reported(output, "bench.waiters")


def test_summary_options_reach_their_benchmarks() -> None:
    args = bench_main.parser().parse_args(
        [
            "--handoff-hold-ms", "3", "--cycles-concurrency", "2", "5", "--cycles-count", "7",
            "--waiters-protocol", "ticket", "--redis-keyspace", "1234", "--timeout", "9",
        ]
    )  # fmt: skip
    options = bench_main.benchmark_args(args)
    assert options["handoff"].hold_ms == 3.0
    assert options["cycles"].concurrency == [2, 5]
    assert options["cycles"].count_cycles == 7  # --cycles-count, renamed
    assert options["waiters"].protocol == "ticket"
    assert options["redis_stores"].keyspace == 1234
    assert options["redis_stores"].tasks == 64  # no --redis-tasks: the benchmark's default
    assert {o.timeout for o in options.values()} == {9.0}


def test_a_summary_option_that_reaches_no_benchmark_is_an_error() -> None:
    parser = bench_main.parser()
    parser.add_argument("--cycles-rounds-typo", type=int, default=1)
    with pytest.raises(ValueError, match="cycles_rounds_typo"):
        bench_main.benchmark_args(parser.parse_args([]))
