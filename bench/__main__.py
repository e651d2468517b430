"""Run every benchmark in sequence and print one summary table (markdown).

``python -m bench`` runs the handoff, cycles and waiters benchmarks with moderate
defaults, each on its own fresh server process, then the Redis stores benchmark
(``bench.redis_stores``: its own redis-server and servers; ``--no-redis`` skips it,
and it is skipped with a note when redis-server is not installed), prints each
one's full report, then a summary table for the README and the command that
reproduces it. Each benchmark measures its own baseline in the same run; see
their modules.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

from bench import cycles, handoff, redis_stores, waiters
from bench.baseline import (
    command_line,
    environment,
    non_negative_float,
    positive_float,
    positive_int,
    table,
)
from harness.redis_servers import RedisServerNotFound


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="All ticketlock benchmarks with moderate defaults, and a summary table. "
        "--<benchmark>-<option> is that benchmark's --<option> (--cycles-count: bench.cycles "
        "--count-cycles); the others keep their own defaults.",
    )
    p.add_argument("--handoff-rounds", type=positive_int, default=10)
    p.add_argument("--handoff-waiters", type=positive_int, default=20)
    p.add_argument("--handoff-hold-ms", type=non_negative_float, default=1.0)
    p.add_argument("--cycles-concurrency", type=positive_int, nargs="+", default=[1, 16, 64])
    p.add_argument("--cycles-rounds", type=positive_int, default=3)
    p.add_argument("--cycles-duration", type=positive_float, default=1.0)
    p.add_argument("--cycles-warmup", type=non_negative_float, default=0.2)
    p.add_argument("--cycles-count", type=positive_int, default=50)
    p.add_argument("--waiters-streams", type=positive_int, default=10_000)
    p.add_argument("--waiters-channels", type=positive_int, default=8)
    p.add_argument("--waiters-batch", type=int, default=500)
    p.add_argument("--waiters-protocol", choices=waiters.PROTOCOLS, default="lock")
    p.add_argument("--no-redis", action="store_true", help="skip the Redis stores benchmark")
    p.add_argument("--redis-count-cycles", type=positive_int, default=200)
    p.add_argument("--redis-rounds", type=positive_int, default=5)
    p.add_argument("--redis-duration", type=positive_float, default=0.8)
    p.add_argument("--redis-latency-cycles", type=positive_int, default=300)
    p.add_argument("--redis-keyspace", type=positive_int, default=1_000_000)
    p.add_argument("--redis-handoff-rounds", type=positive_int, default=200)
    p.add_argument(
        "--timeout", type=positive_float, default=600.0, help="bound on each benchmark, seconds"
    )
    return p


def forwarded(
    module_parser: argparse.ArgumentParser,
    args: argparse.Namespace,
    prefix: str,
    **renamed: str,
) -> argparse.Namespace:
    """One benchmark's options: its defaults, and what this run's ``args`` set for it.

    ``args.<prefix><dest>`` sets the benchmark's ``dest`` (``--cycles-rounds`` is
    ``bench.cycles --rounds``), ``renamed`` maps a ``dest`` whose option here has
    another name, and ``--timeout`` applies to every benchmark. An option with
    ``prefix`` that reaches none of the benchmark's options is an error, so that a
    new or renamed option cannot be dropped without a word.
    """
    options = module_parser.parse_args([])
    sources = {
        "timeout": "timeout",
        **{f"{prefix}{dest}": dest for dest in vars(options)},
        **{source: dest for dest, source in renamed.items()},
    }
    stray = [name for name in vars(args) if name.startswith(prefix) and name not in sources]
    if stray:
        raise ValueError(f"{module_parser.prog} has no option for {', '.join(stray)}")
    for source, dest in sources.items():
        if hasattr(args, source):
            setattr(options, dest, getattr(args, source))
    return options


def benchmark_args(args: argparse.Namespace) -> dict[str, argparse.Namespace]:
    """Each benchmark's options, by module name."""
    return {
        "handoff": forwarded(handoff.parser(), args, "handoff_"),
        "cycles": forwarded(cycles.parser(), args, "cycles_", count_cycles="cycles_count"),
        "waiters": forwarded(waiters.parser(), args, "waiters_"),
        "redis_stores": forwarded(redis_stores.parser(), args, "redis_"),
    }


def run_redis(args: argparse.Namespace) -> redis_stores.RedisStoresResult | None:
    """The Redis stores benchmark, or None (with a note) when redis-server is missing."""
    try:
        result = redis_stores.run(args)
    except RedisServerNotFound as error:
        print(f"## Redis stores: skipped ({error})", end="\n\n", flush=True)
        return None
    print(redis_stores.report(result), end="\n\n", flush=True)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    options = benchmark_args(args)
    started = time.monotonic()

    handoff_result = handoff.run(options["handoff"])
    print(handoff.report(handoff_result), end="\n\n", flush=True)

    cycles_result = cycles.run(options["cycles"])
    print(cycles.report(cycles_result), end="\n\n", flush=True)

    waiters_result = waiters.run(options["waiters"])
    print(waiters.report(waiters_result), end="\n\n", flush=True)

    redis_result = None if args.no_redis else run_redis(options["redis_stores"])

    rows = [
        *handoff.summary_rows(handoff_result),
        *cycles.summary_rows(cycles_result),
        *waiters.summary_rows(waiters_result),
        *([] if redis_result is None else redis_stores.summary_rows(redis_result)),
    ]
    print("## Summary", end="\n\n")
    print(table(["figure", "measured", "baseline (same run)", "target"], rows))
    print()
    servers = "in-memory store"
    if redis_result is not None:
        servers += " (and, for the Redis rows, the servers described in their report above)"
    print(environment(servers))
    print(f"total time: {time.monotonic() - started:,.0f} s")
    print(f"reproduce: {command_line('bench', parser(), args)}", flush=True)
    correct = (
        handoff_result.correct
        and waiters_result.correct
        and (redis_result is None or redis_result.correct)
    )
    return 0 if correct else 1


if __name__ == "__main__":
    sys.exit(main())
