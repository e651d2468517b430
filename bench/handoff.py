"""Handoff latency: the previous holder's release -> the next waiter's ``acquired``.

Each round takes a fresh conversation: a first holder takes the lock, ``--waiters``
tasks of this same client process queue behind it, and once every ticket is
issued (and its wait open on the server) the first holder releases. Each waiter
then holds the lock for ``--hold-ms`` and releases, so the lock is handed down
the queue ``--waiters`` times per round. Timestamps are ``time.perf_counter`` in
this one process:

- release: taken in the releasing task just before the release call starts;
- acquired: taken in the next waiter the moment it learns it holds the lock
  (``async with client.lock()`` entered; for the ticket protocol, the
  ``WaitForTicket`` message with ``acquired = true`` read).

Two protocols, interleaved round by round:

- ``Lock`` stream: ``AsyncLockClient.lock()`` (one bidirectional stream per holder);
- ticket protocol: ``IssueTicket``, then a ``WaitForTicket`` stream, then ``Cleanup``
  (the ``WaitForTicket`` stream is opened on the client's own channel, by a stub,
  because the client's ``wait_for_ticket`` does not report when the wait is open).

The baseline, measured in between the rounds on the same channel, is the no-op
health ``Check`` round trip.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from ticketlock import AsyncLockClient
from ticketlock.v1 import lock_service_pb2 as pb
from ticketlock.v1 import lock_service_pb2_grpc as pb_grpc

from bench.baseline import (
    Distribution,
    Noop,
    add_timeout,
    benchmark_main,
    channel_of,
    command_line,
    environment,
    latencies,
    ms,
    non_negative_float,
    positive_int,
    run_on_server,
    table,
)

TARGET_P50 = 0.002
TARGET_P99 = 0.010
# Rasa Pro 3.21's InMemoryLockStore as measured on these machines (default 1 s poll,
# waiters arriving at random times): context, not measured here.
RASA_P50 = 0.512
RASA_P90 = 0.875

PROTOCOLS = ("lock", "ticket")


@dataclass(slots=True)
class Round:
    """Timestamps of one round, by ticket number."""

    acquired: dict[int, float] = field(default_factory=dict)
    released: dict[int, float] = field(default_factory=dict)
    order: list[int] = field(default_factory=list)  # ticket numbers as they acquired

    def handoffs(self) -> list[float]:
        numbers = sorted(self.acquired)
        return [self.acquired[n] - self.released[p] for p, n in itertools.pairwise(numbers)]

    def in_order(self) -> bool:
        return self.order == sorted(self.order)

    def overlaps(self) -> int:
        """Handoffs where the next holder acquired before the previous one released."""
        return sum(1 for h in self.handoffs() if h < 0)


@dataclass(slots=True)
class ProtocolResult:
    handoffs: list[float] = field(default_factory=list)
    rounds: int = 0
    rounds_in_order: int = 0
    overlaps: int = 0

    def add(self, one: Round) -> None:
        self.handoffs.extend(one.handoffs())
        self.rounds += 1
        self.rounds_in_order += one.in_order()
        self.overlaps += one.overlaps()


@dataclass(frozen=True, slots=True)
class HandoffResult:
    protocols: dict[str, Distribution]
    in_order: dict[str, tuple[int, int]]  # protocol -> (rounds in order, rounds)
    overlaps: dict[str, int]
    noop: Distribution
    waiters: int
    hold: float
    command: str

    @property
    def correct(self) -> bool:
        return all(ok == total for ok, total in self.in_order.values()) and not any(
            self.overlaps.values()
        )


async def _hold(seconds: float) -> None:
    await asyncio.sleep(seconds)


async def _wait_queued(client: AsyncLockClient, cid: str, tickets: int, timeout: float) -> None:
    """Until the conversation has ``tickets`` tickets (all waiters issued theirs)."""
    deadline = time.monotonic() + timeout
    while True:
        lock = await client.get_lock(cid)
        if lock is not None and len(lock.tickets) >= tickets:
            return
        if time.monotonic() > deadline:
            have = 0 if lock is None else len(lock.tickets)
            raise RuntimeError(f"only {have} of {tickets} tickets issued within {timeout} s")
        await asyncio.sleep(0.002)


async def lock_round(client: AsyncLockClient, cid: str, waiters: int, hold: float) -> Round:
    """One round over ``Lock`` streams (``AsyncLockClient.lock()``)."""
    result = Round()

    async def waiter() -> None:
        async with client.lock(cid) as held:
            number = held.fencing_token
            result.acquired[number] = time.perf_counter()
            result.order.append(number)
            await _hold(hold)
            result.released[number] = time.perf_counter()

    async with client.lock(cid) as first:
        result.acquired[first.fencing_token] = time.perf_counter()
        tasks = [asyncio.ensure_future(waiter()) for _ in range(waiters)]
        await _wait_queued(client, cid, waiters + 1, 10.0)
        # Issued is not yet waiting: give the server a moment to open every wait.
        await asyncio.sleep(0.02)
        result.released[first.fencing_token] = time.perf_counter()
    await asyncio.gather(*tasks)
    return result


async def ticket_round(client: AsyncLockClient, cid: str, waiters: int, hold: float) -> Round:
    """One round over the ticket protocol: IssueTicket, WaitForTicket, Cleanup."""
    result = Round()
    stub = pb_grpc.LockServiceStub(channel_of(client))
    all_waiting = asyncio.Event()
    waiting = 0

    def one_more_waiting() -> None:
        nonlocal waiting
        waiting += 1
        if waiting == waiters:
            all_waiting.set()

    async def waiter() -> None:
        issued = await client.issue(cid)
        number = issued.ticket.number
        if issued.acquired:
            one_more_waiting()
        else:
            request = pb.WaitForTicketRequest(conversation_id=cid, ticket_number=number)
            first_message = True
            async for message in stub.WaitForTicket(request, timeout=60):
                if message.acquired:
                    break
                if first_message:
                    first_message = False
                    one_more_waiting()
            if first_message:  # acquired in the first message: never waited
                one_more_waiting()
        result.acquired[number] = time.perf_counter()
        result.order.append(number)
        await _hold(hold)
        result.released[number] = time.perf_counter()
        await client.cleanup(cid, number)

    first = await client.issue(cid)
    if not first.acquired:
        raise RuntimeError(f"conversation {cid!r} was not free")
    number = first.ticket.number
    result.acquired[number] = time.perf_counter()
    tasks = [asyncio.ensure_future(waiter()) for _ in range(waiters)]
    await asyncio.wait_for(all_waiting.wait(), 10.0)
    result.released[number] = time.perf_counter()
    await client.cleanup(cid, number)
    await asyncio.gather(*tasks)
    return result


async def measure(target: str, args: argparse.Namespace) -> HandoffResult:
    results = {p: ProtocolResult() for p in args.protocols}
    noop_samples: list[float] = []
    hold = args.hold_ms / 1000
    async with AsyncLockClient(target) as client:
        noop = Noop(channel_of(client))
        await latencies(noop, 100)  # warm-up
        await lock_round(client, "handoff-warmup-lock", args.waiters, hold)
        await ticket_round(client, "handoff-warmup-ticket", args.waiters, hold)
        for index in range(args.rounds):
            for protocol in args.protocols:
                cid = f"handoff-{protocol}-{index}"
                if protocol == "lock":
                    one = await lock_round(client, cid, args.waiters, hold)
                else:
                    one = await ticket_round(client, cid, args.waiters, hold)
                results[protocol].add(one)
            noop_samples.extend(await latencies(noop, args.waiters))
    return HandoffResult(
        protocols={p: Distribution.of(r.handoffs) for p, r in results.items()},
        in_order={p: (r.rounds_in_order, r.rounds) for p, r in results.items()},
        overlaps={p: r.overlaps for p, r in results.items()},
        noop=Distribution.of(noop_samples),
        waiters=args.waiters,
        hold=hold,
        command=command_line("bench.handoff", parser(), args),
    )


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench.handoff",
        description="Handoff latency (release -> next waiter acquired) with queued waiters.",
    )
    p.add_argument("--rounds", type=positive_int, default=25, help="rounds per protocol")
    p.add_argument(
        "--waiters", type=positive_int, default=20, help="waiters queued behind the first holder"
    )
    p.add_argument(
        "--hold-ms", type=non_negative_float, default=1.0, help="how long each waiter holds"
    )
    p.add_argument(
        "--protocols", nargs="+", choices=PROTOCOLS, default=list(PROTOCOLS), help="what to time"
    )
    add_timeout(p, 300.0)
    return p


def run(args: argparse.Namespace) -> HandoffResult:
    return run_on_server("handoff", args.timeout, lambda process: measure(process.target, args))


LABELS = {
    "lock": "handoff, `Lock` stream (`AsyncLockClient.lock()`)",
    "ticket": "handoff, ticket protocol (IssueTicket + WaitForTicket + Cleanup)",
}


def report(result: HandoffResult) -> str:
    target = f"p50 ≤ {ms(TARGET_P50)}, p99 ≤ {ms(TARGET_P99)}"
    rows = []
    for protocol, d in result.protocols.items():
        met = d.p50 <= TARGET_P50 and d.p99 <= TARGET_P99
        rows.append(
            [
                LABELS[protocol],
                ms(d.p50),
                ms(d.p90),
                ms(d.p99),
                ms(d.maximum),
                str(d.count),
                f"{target} ({'met' if met else 'MISSED'})",
            ]
        )
    n = result.noop
    rows.append(
        [
            "baseline: no-op Check round trip, same run",
            ms(n.p50),
            ms(n.p90),
            ms(n.p99),
            ms(n.maximum),
            str(n.count),
            "",
        ]
    )
    rows.append(
        [
            "Rasa InMemoryLockStore, 1 s poll (Rasa Pro 3.21, not measured here)",
            ms(RASA_P50),
            ms(RASA_P90),
            "-",
            "-",
            "-",
            "",
        ]
    )
    checks = [
        f"{LABELS[p]}: acquired in ticket order in {ok}/{total} rounds, "
        f"{result.overlaps[p]} overlapping holders"
        for p, (ok, total) in result.in_order.items()
    ]
    return "\n".join(
        [
            f"## Handoff latency: release -> next waiter acquired "
            f"({result.waiters} queued waiters, each holding {ms(result.hold)})",
            "",
            table(["figure", "p50", "p90", "p99", "max", "samples", "target"], rows),
            "",
            *checks,
            environment(),
            f"reproduce: {result.command}",
        ]
    )


def summary_rows(result: HandoffResult) -> list[list[str]]:
    """Rows for the combined table: figure, measured, baseline (same run), target."""
    n = result.noop
    rows = []
    for protocol, d in result.protocols.items():
        met = d.p50 <= TARGET_P50 and d.p99 <= TARGET_P99
        ok, total = result.in_order[protocol]
        rows.append(
            [
                f"{LABELS[protocol]}, {result.waiters} queued, p50 / p99",
                f"{ms(d.p50)} / {ms(d.p99)}",
                f"no-op round trip {ms(n.p50)} / {ms(n.p99)}",
                f"p50 ≤ {ms(TARGET_P50)}, p99 ≤ {ms(TARGET_P99)}: {'met' if met else 'MISSED'}; "
                f"ticket order {ok}/{total} rounds",
            ]
        )
    rows.append(
        [
            "Rasa InMemoryLockStore handoff, 1 s poll, p50 / p90 (Rasa Pro 3.21, not measured)",
            f"{ms(RASA_P50)} / {ms(RASA_P90)}",
            "",
            "context",
        ]
    )
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    return benchmark_main(argv, parser, run, report, lambda result: result.correct)


if __name__ == "__main__":
    sys.exit(main())
