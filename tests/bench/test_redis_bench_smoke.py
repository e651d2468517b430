"""The Redis stores benchmark runs end to end with tiny parameters and reports its figures.

It starts its own redis-server and four ticketlock servers, like a full run; only the
counts are small. No speed is asserted: only that every figure is there, per store,
and that the run left none of the processes it started behind.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import psutil  # type: ignore[import-untyped,unused-ignore]
import pytest

from bench import __main__ as bench_main
from tests.bench.test_bench_smoke import ROOT, assert_reported, run_module

TINY = (
    "--count-cycles", "5", "--tasks", "4", "--rounds", "1", "--duration", "0.1",
    "--warmup", "0", "--latency-cycles", "10", "--latency-warmup", "2",
    "--small-keyspace", "50", "--keyspace", "600", "--keyspace-rounds", "2",
    "--handoff-rounds", "3",
)  # fmt: skip
NUMBER = r"\d[\d,]*(?:\.\d+)?"
STORES = ("RedisLockStore", "ConcurrentRedisLockStore")


def processes_under(directory: Path) -> list[str]:
    """Processes whose command line or working directory is inside ``directory``."""
    found = []
    for process in psutil.process_iter(["pid", "cmdline", "cwd"]):
        if process.pid == os.getpid():
            continue
        cmdline = " ".join(process.info["cmdline"] or ())
        if str(directory) in cmdline or str(directory) in (process.info["cwd"] or ""):
            found.append(f"{process.info['pid']}: {cmdline}")
    return found


def servers_started_by(pid: int) -> list[psutil.Process]:
    """The ticketlock servers below process ``pid`` (its watchdog, which names them, aside).

    Found by ancestry: the in-memory store's server has nothing of the benchmark's
    directory in its command line.
    """
    try:
        descendants = psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []
    found = []
    for process in descendants:
        with contextlib.suppress(psutil.Error):
            if process.cmdline()[1:3] == ["-m", "ticketlock_server"]:
                found.append(process)
    return found


def running(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


@pytest.mark.timeout(90)
def test_redis_benchmark_reports_every_figure_per_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The benchmark keeps redis-server's directory and the endpoints files in its
    # temporary directory: here, so that leftover processes can be told apart.
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    output = run_module("bench.redis_stores", *TINY, "--timeout", "60")
    assert_reported(output, "bench.redis_stores")
    for store in STORES:
        for cycle, shares in (
            # Only the Lock cycle is set against the same cycle on the in-memory store.
            ("`Lock` stream cycle", rf"{NUMBER}% of no-op, {NUMBER}% of in-memory"),
            (r"unary cycle \(IssueTicket \+ Cleanup\)", rf"{NUMBER}% of no-op"),
        ):
            round_trips = re.search(
                rf"^\| {store}: Redis round trips per {cycle} +\| ({NUMBER}) \(EVALSHA",
                output,
                re.M,
            )
            assert round_trips, output
            float(round_trips.group(1).replace(",", ""))
            assert re.search(
                rf"^\| {store}: {cycle}, cycles/s at 4 tasks .*\| {NUMBER}/s \({shares}\) +\| "
                rf"no-op Check {NUMBER}/s; in-memory store Lock cycle {NUMBER}/s; "
                rf"redis-py PING {NUMBER}/s",
                output,
                re.M,
            ), output
            assert re.search(
                rf"^\| {store}: {cycle} median, .* keys in Redis +\| {NUMBER} ms -> {NUMBER} ms "
                rf"\(ratio {NUMBER}\)",
                output,
                re.M,
            ), output
        assert re.search(
            rf"^\| {store}: handoff across replicas \(A -> B\), p50 / p99 +\| {NUMBER} ms / "
            rf"{NUMBER} ms +\| one replica {NUMBER} ms / {NUMBER} ms",
            output,
            re.M,
        ), output
        assert re.search(
            rf"^\| {store} +\| in-memory store `Lock` cycle \(baseline\) +\| {NUMBER}/s +\| "
            rf"{NUMBER}% +\| +\| {NUMBER}",
            output,
            re.M,
        ), output
    assert re.search(
        r"server: Redis stores on redis-server .* one on the in-memory store", output
    ), output
    assert "ERROR" not in output, output
    assert not processes_under(tmp_path)


@pytest.mark.timeout(60)
def test_a_killed_benchmark_leaves_no_server_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGKILL (what a caller's timeout sends) runs no cleanup: the watchdog stops them."""
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    benchmark = subprocess.Popen(
        # Long rate runs (the last --duration wins), so that it is killed mid-run.
        [sys.executable, "-m", "bench.redis_stores", *TINY, "--duration", "5", "--timeout", "30"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    servers: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + 30
        # Kill it once the redis-server and the four ticketlock servers on it run,
        # and the fifth, on the in-memory store.
        while (len(processes_under(tmp_path)) < 5 or len(servers) < 5) and benchmark.poll() is None:
            assert time.monotonic() < deadline, processes_under(tmp_path)
            time.sleep(0.1)
            servers = servers_started_by(benchmark.pid)
        killed_mid_run = benchmark.poll() is None
    finally:
        benchmark.kill()
        benchmark.wait()
    assert killed_mid_run
    deadline = time.monotonic() + 15
    while (processes_under(tmp_path) or any(map(running, servers))) and (
        time.monotonic() < deadline
    ):
        time.sleep(0.1)
    assert not processes_under(tmp_path)
    assert not [s.pid for s in servers if running(s)]
    # ...and removes the benchmark's temporary directory (its servers' files).
    deadline = time.monotonic() + 10
    while list(tmp_path.glob("bench-redis-*")) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not list(tmp_path.glob("bench-redis-*"))


def test_summary_run_can_skip_the_redis_benchmark() -> None:
    args = bench_main.parser().parse_args(["--no-redis"])
    assert args.no_redis
    assert not bench_main.parser().parse_args([]).no_redis
