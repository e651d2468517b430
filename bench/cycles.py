"""Uncontended lock cycles per second, beside the no-op RPC rate.

A cycle takes and releases the lock of a conversation nobody else uses (a new id
for every cycle). Two variants:

- ``Lock`` stream: ``async with client.lock(cid): pass`` (``AsyncLockClient.lock()``);
- unary: ``IssueTicket`` (which answers ``now_serving`` equal to the ticket's
  number: acquired without waiting), then ``Cleanup``.

At each concurrency (concurrent asyncio tasks, one client, one channel) the
no-op health ``Check`` rate and both cycle rates are measured one after the
other, for several rounds, and the medians are reported: the machine has two
cores that client and server share, and interleaving spreads the noise over all
three figures alike.

RPC calls and messages per cycle are counted by client interceptors on a
separate client (interceptors change the timing, so they are not on the timed
one), over ``--count-cycles`` sequential cycles of each variant.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from ticketlock import AsyncLockClient

from bench.baseline import (
    CallCounter,
    Noop,
    add_timeout,
    benchmark_main,
    channel_of,
    command_line,
    environment,
    intercepted_channels,
    measure_rate,
    median,
    mib,
    non_negative_float,
    per_second,
    positive_float,
    positive_int,
    rss_bytes,
    run_on_server,
    table,
)

TARGET_RATIO = 0.40
TARGET_AT = 64
VARIANTS = ("noop", "lock", "unary")
LABELS = {
    "noop": "no-op Check (baseline)",
    "lock": "`Lock` stream cycle (`async with client.lock()`)",
    "unary": "unary cycle (IssueTicket + Cleanup)",
}


def lock_cycle(client: AsyncLockClient, prefix: str) -> Callable[[int], Awaitable[None]]:
    async def cycle(sequence: int) -> None:
        async with client.lock(f"{prefix}-{sequence}"):
            pass

    return cycle


def unary_cycle(client: AsyncLockClient, prefix: str) -> Callable[[int], Awaitable[None]]:
    async def cycle(sequence: int) -> None:
        cid = f"{prefix}-{sequence}"
        issued = await client.issue(cid)
        if not issued.acquired:
            raise RuntimeError(f"uncontended IssueTicket did not acquire {cid!r}: {issued}")
        await client.cleanup(cid, issued.ticket.number)

    return cycle


def noop_op(client: AsyncLockClient) -> Callable[[int], Awaitable[None]]:
    noop = Noop(channel_of(client))

    async def call(_: int) -> None:
        await noop()

    return call


@dataclass(frozen=True, slots=True)
class Traffic:
    """Per cycle: RPC calls, messages client -> server, messages server -> client."""

    calls: float
    sent: float
    received: float
    by_method: dict[str, tuple[float, float, float]]


@dataclass(frozen=True, slots=True)
class CyclesResult:
    rates: dict[int, dict[str, list[float]]]  # tasks -> variant -> rate per round
    traffic: dict[str, Traffic]
    leftover_locks: dict[str, bool]  # variant -> a lock object remains after a cycle
    rss_before: int
    rss_after: int
    cycles_run: int
    counted_cycles: int
    command: str

    def median_rate(self, tasks: int, variant: str) -> float:
        return median(self.rates[tasks][variant])


async def count_traffic(target: str, cycles: int) -> dict[str, Traffic]:
    """Calls and messages per operation, counted by client interceptors."""
    counter = CallCounter()
    with intercepted_channels(counter.interceptors()):
        client = AsyncLockClient(target)
    traffic: dict[str, Traffic] = {}
    try:
        ops = {
            "noop": noop_op(client),
            "lock": lock_cycle(client, "cycles-count-lock"),
            "unary": unary_cycle(client, "cycles-count-unary"),
        }
        for variant, op in ops.items():
            counter.reset()
            for sequence in range(cycles):
                await op(sequence)
            await asyncio.sleep(0)
            traffic[variant] = Traffic(
                calls=counter.total.calls / cycles,
                sent=counter.total.sent / cycles,
                received=counter.total.received / cycles,
                by_method={
                    name: (m.calls / cycles, m.sent / cycles, m.received / cycles)
                    for name, m in sorted(counter.methods.items())
                },
            )
    finally:
        await client.close()
    return traffic


async def leftover_locks(client: AsyncLockClient) -> dict[str, bool]:
    """Whether a finished uncontended cycle leaves a lock behind on the server."""
    await lock_cycle(client, "cycles-leftover-lock")(0)
    await unary_cycle(client, "cycles-leftover-unary")(0)
    return {
        "lock": await client.get_lock("cycles-leftover-lock-0") is not None,
        "unary": await client.get_lock("cycles-leftover-unary-0") is not None,
    }


async def measure(target: str, pid: int, args: argparse.Namespace) -> CyclesResult:
    traffic = await count_traffic(target, args.count_cycles)
    rates: dict[int, dict[str, list[float]]] = {
        tasks: {v: [] for v in VARIANTS} for tasks in args.concurrency
    }
    cycles_run = 0
    async with AsyncLockClient(target) as client:
        leftovers = await leftover_locks(client)
        ops = {
            "noop": noop_op(client),
            "lock": lock_cycle(client, "cycles-lock"),
            "unary": unary_cycle(client, "cycles-unary"),
        }
        # Warm the channel and both code paths before anything is timed.
        for op in ops.values():
            await measure_rate(op, 4, 0.2)
        rss_before = rss_bytes(pid)
        for index in range(args.rounds):
            for tasks in args.concurrency:
                for variant in VARIANTS:
                    op = ops[variant]
                    prefixed = _with_prefix(op, index, tasks)
                    rate = await measure_rate(prefixed, tasks, args.duration, args.warmup)
                    rates[tasks][variant].append(rate.per_second)
                    if variant != "noop":
                        cycles_run += rate.operations
        rss_after = rss_bytes(pid)
    return CyclesResult(
        rates=rates,
        traffic=traffic,
        leftover_locks=leftovers,
        rss_before=rss_before,
        rss_after=rss_after,
        cycles_run=cycles_run,
        counted_cycles=args.count_cycles,
        command=command_line("bench.cycles", parser(), args),
    )


def _with_prefix(
    op: Callable[[int], Awaitable[None]], index: int, tasks: int
) -> Callable[[int], Awaitable[None]]:
    """Keep conversation ids distinct across runs: fold round and tasks into the number."""
    offset = (index * 1000 + tasks) * 10_000_000

    def shifted(sequence: int) -> Awaitable[None]:
        return op(offset + sequence)

    return shifted


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench.cycles",
        description="Uncontended lock cycles per second beside the no-op RPC rate.",
    )
    p.add_argument(
        "--concurrency", type=positive_int, nargs="+", default=[1, 16, 64], help="task counts"
    )
    p.add_argument("--rounds", type=positive_int, default=3, help="interleaved rounds")
    p.add_argument("--duration", type=positive_float, default=1.5, help="seconds per measurement")
    p.add_argument(
        "--warmup", type=non_negative_float, default=0.2, help="untimed seconds before each"
    )
    p.add_argument(
        "--count-cycles", type=positive_int, default=50, help="cycles for counting messages"
    )
    add_timeout(p)
    return p


def run(args: argparse.Namespace) -> CyclesResult:
    return run_on_server("cycles", args.timeout, lambda p: measure(p.target, p.process.pid, args))


def _num(value: float) -> str:
    return f"{value:g}"


def report(result: CyclesResult) -> str:
    rows = []
    for tasks in result.rates:
        noop = result.median_rate(tasks, "noop")
        for variant in VARIANTS:
            rate = result.median_rate(tasks, variant)
            rounds = ", ".join(f"{r:,.0f}" for r in result.rates[tasks][variant])
            ratio = "" if variant == "noop" else f"{rate / noop:.0%}"
            target = ""
            if variant == "lock" and tasks == TARGET_AT:
                met = rate / noop >= TARGET_RATIO
                target = f"≥ {TARGET_RATIO:.0%} at {TARGET_AT} tasks ({'met' if met else 'MISSED'})"
            elif variant == "lock":
                target = f"(target applies at {TARGET_AT} tasks)"
            elif variant == "unary":
                target = "comparison: what lock() would cost over unary calls"
            rows.append([str(tasks), LABELS[variant], per_second(rate), ratio, target, rounds])
    traffic_rows = []
    for variant, t in result.traffic.items():
        traffic_rows.append([LABELS[variant], "all", _num(t.calls), _num(t.sent), _num(t.received)])
        for method, (calls, sent, received) in t.by_method.items():
            traffic_rows.append(["", method, _num(calls), _num(sent), _num(received)])
    leftover = "; ".join(
        f"{LABELS[v]}: {'a lock object remains' if left else 'no lock left'}"
        for v, left in result.leftover_locks.items()
    )
    growth = result.rss_after - result.rss_before
    per_cycle = growth / result.cycles_run if result.cycles_run else 0.0
    return "\n".join(
        [
            "## Uncontended lock cycles per second (distinct conversation ids)",
            "",
            table(
                ["tasks", "operation", "median rate", "cycles/noop", "target", "rounds"],
                rows,
            ),
            "",
            f"Per cycle, counted by client interceptors over {result.counted_cycles} "
            "sequential cycles of each operation (gRPC status and the HTTP/2 frames "
            "around the messages are not counted):",
            "",
            table(
                ["operation", "RPC", "calls", "messages client→server", "messages server→client"],
                traffic_rows,
            ),
            "",
            f"Afterwards, GetLock on a finished cycle's id: {leftover}.",
            f"Server RSS across the timed runs: {mib(result.rss_before)} -> "
            f"{mib(result.rss_after)} over {result.cycles_run:,} cycles "
            f"({per_cycle:,.0f} bytes per cycle).",
            environment(),
            f"reproduce: {result.command}",
        ]
    )


def summary_rows(result: CyclesResult) -> list[list[str]]:
    """Rows for the combined table: figure, measured, baseline (same run), target."""
    rows = []
    for variant in ("lock", "unary"):
        for tasks in result.rates:
            noop = result.median_rate(tasks, "noop")
            rate = result.median_rate(tasks, variant)
            target = ""
            if variant == "lock" and tasks == TARGET_AT:
                met = rate / noop >= TARGET_RATIO
                target = f"≥ {TARGET_RATIO:.0%} of no-op: {'met' if met else 'MISSED'}"
            rows.append(
                [
                    f"{LABELS[variant]}, {tasks} task{'' if tasks == 1 else 's'}",
                    f"{per_second(rate)} ({rate / noop:.0%} of no-op)",
                    f"no-op Check {per_second(noop)}",
                    target,
                ]
            )
    for variant in ("lock", "unary"):
        t = result.traffic[variant]
        rows.append(
            [
                f"{LABELS[variant]}: RPCs / messages each way per cycle",
                f"{_num(t.calls)} / {_num(t.sent)} up, {_num(t.received)} down",
                "no-op Check: 1 / 1 up, 1 down",
                "",
            ]
        )
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    return benchmark_main(argv, parser, run, report)


if __name__ == "__main__":
    sys.exit(main())
