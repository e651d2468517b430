"""Many concurrent waiting streams on one server process, then a full drain.

One holder takes a conversation's lock; ``--streams`` waiters (``Lock`` streams,
or with ``--protocol ticket`` IssueTicket + ``WaitForTicket`` streams) queue behind
it from this one asyncio process, spread over ``--channels`` channels, each its
own TCP connection (a local subchannel pool: channels with equal arguments would
otherwise share one connection). Waits are opened in batches of ``--batch``, each
once the previous batch holds its tickets, as clients arriving over time would
(gRPC core drops calls that wait for the Python server beyond a limit: gRPC's
defaults of 1,000 and 3,000 failed a burst of 10,000 streams by the thousand with
``INTERNAL``; the server now raises the limits to 20,000 and 30,000). When every
ticket is issued, the holder releases and the waiters acquire one after the
other, each releasing at once.

Reported: server RSS idle (after start, before load), with every waiter queued,
and the peak over the run (sampled every 50 ms by a thread); the time to queue;
the time from the holder's release to the last waiter's ``acquired``, and the
handoff throughput; whether the acquisitions came in ticket order. Baselines
from the same run: the idle RSS, and the no-op ``Check`` round trip (and its
sequential rate) before the load and while every waiter is queued.

The ticket lifetime is ``--lifetime`` (not the 60 s default): a ticket's lifetime
runs while it waits, as in Rasa, so a default lifetime would expire the back of
a long queue before its turn.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil  # type: ignore[import-untyped,unused-ignore]
from ticketlock import AsyncLockClient, LockError
from ticketlock.v1 import lock_service_pb2 as pb
from ticketlock.v1 import lock_service_pb2_grpc as pb_grpc

from bench.baseline import (
    MIB,
    Distribution,
    Noop,
    RssSampler,
    add_timeout,
    benchmark_main,
    channel_of,
    command_line,
    environment,
    latencies,
    mib,
    ms,
    per_second,
    positive_float,
    positive_int,
    rss_bytes,
    run_on_server,
    table,
)

TARGET_IDLE_RSS = 80 * MIB
TARGET_PEAK_RSS = 1024 * MIB
PROTOCOLS = ("lock", "ticket")
CID = "waiters-bench"


@dataclass(frozen=True, slots=True)
class WaitersResult:
    protocol: str
    streams: int
    channels: int
    batch: int
    connections: int  # TCP connections the server had open while everyone waited
    rss_idle: int
    rss_waiting: int
    rss_peak: int
    client_rss_waiting: int
    queue_seconds: float
    drain_seconds: float
    intervals: Distribution  # between consecutive acquisitions during the drain
    in_order: bool
    acquired: int
    noop_idle: Distribution
    noop_waiting: Distribution
    command: str

    @property
    def throughput(self) -> float:
        return self.acquired / self.drain_seconds if self.drain_seconds > 0 else 0.0

    @property
    def correct(self) -> bool:
        """Every waiter acquired, in ticket order."""
        return self.in_order and self.acquired == self.streams


def _server_connections(pid: int) -> int:
    try:
        connections = psutil.Process(pid).net_connections(kind="tcp")
    except psutil.Error:
        return -1
    return sum(1 for c in connections if c.status == psutil.CONN_ESTABLISHED)


class QueueingFailed(Exception):
    def __init__(self, failed: int, started: int, first: BaseException | None) -> None:
        super().__init__(
            f"{failed:,} of the {started:,} waiters started so far failed while queueing "
            f"(first error: {first!r}). gRPC's server drops new calls that arrive faster than "
            "the application picks them up: some beyond 1,000 pending, all beyond 3,000 "
            "(grpc.server.max_pending_requests and ..._hard_limit); a smaller --batch paces "
            "the queueing."
        )


async def _wait_issued(
    client: AsyncLockClient, tickets: int, tasks: Sequence[asyncio.Future[None]]
) -> None:
    """Until the conversation holds ``tickets`` tickets; fail early if a waiter failed.

    Progress goes to stderr. A slow ``GetLock`` (the server busy queueing) is
    retried rather than fatal: the benchmark's own ``--timeout`` bounds the wait.
    """
    start = time.monotonic()
    reported = start
    have = 0
    while True:
        failed = [t.exception() for t in tasks if t.done() and not t.cancelled() and t.exception()]
        if failed:
            raise QueueingFailed(len(failed), len(tasks), failed[0])
        try:
            lock = await client.get_lock(CID)
            have = 0 if lock is None else len(lock.tickets)
        except LockError as error:
            print(f"  (GetLock while queueing: {error}; retrying)", file=sys.stderr, flush=True)
        if have >= tickets:
            return
        now = time.monotonic()
        if now - reported >= 5:
            reported = now
            print(
                f"  queueing: {have:,} of {tickets:,} tickets issued after {now - start:.0f} s",
                file=sys.stderr,
                flush=True,
            )
        await asyncio.sleep(0.1)


Record = Callable[[int], None]


def lock_waiter(client: AsyncLockClient, lifetime: float, record: Record) -> Awaitable[None]:
    async def wait() -> None:
        async with client.lock(CID, lock_lifetime=lifetime) as held:
            record(held.fencing_token)

    return wait()


def ticket_waiter(client: AsyncLockClient, lifetime: float, record: Record) -> Awaitable[None]:
    stub = pb_grpc.LockServiceStub(channel_of(client))

    async def wait() -> None:
        issued = await client.issue(CID, lock_lifetime=lifetime)
        number = issued.ticket.number
        if not issued.acquired:
            request = pb.WaitForTicketRequest(conversation_id=CID, ticket_number=number)
            async for message in stub.WaitForTicket(request):
                if message.acquired:
                    break
        record(number)
        await client.cleanup(CID, number)

    return wait()


async def measure(target: str, pid: int, args: argparse.Namespace) -> WaitersResult:
    waiter = lock_waiter if args.protocol == "lock" else ticket_waiter
    order: list[int] = []
    times: list[float] = []

    def record(number: int) -> None:
        times.append(time.perf_counter())
        order.append(number)

    tasks: list[asyncio.Future[None]] = []
    with RssSampler(pid) as sampler:
        # Own connections: a local subchannel pool per channel.
        clients = [
            AsyncLockClient(target, options=[("grpc.use_local_subchannel_pool", 1)])
            for _ in range(args.channels)
        ]
        # Polls GetLock while the server is busy queueing: a long deadline.
        observer = AsyncLockClient(target, timeout=60.0)
        try:
            noop = Noop(channel_of(clients[0]))
            await latencies(noop, 50)
            await asyncio.sleep(0.5)
            rss_idle = sampler.reset_peak()
            noop_idle = Distribution.of(await latencies(noop, args.noop_calls))

            async with clients[0].lock(CID, lock_lifetime=args.lifetime) as holder:
                start = time.perf_counter()
                spread = itertools.cycle(clients)
                batch = args.batch or args.streams
                while len(tasks) < args.streams:
                    size = min(batch, args.streams - len(tasks))
                    tasks.extend(
                        asyncio.ensure_future(waiter(next(spread), args.lifetime, record))
                        for _ in range(size)
                    )
                    await _wait_issued(observer, len(tasks) + 1, tasks)
                queue_seconds = time.perf_counter() - start
                await asyncio.sleep(1.0)  # let every wait settle on the server
                rss_waiting = rss_bytes(pid)
                client_rss_waiting = rss_bytes(psutil.Process().pid)
                connections = _server_connections(pid)
                noop_waiting = Distribution.of(await latencies(noop, args.noop_calls))
                released = time.perf_counter()
            await asyncio.gather(*tasks)
            rss_peak = max(sampler.peak, rss_waiting)
        finally:
            # On failure or timeout: end every wait before the channels close.
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await asyncio.gather(*(c.close() for c in [*clients, observer]))
    expected = list(range(holder.fencing_token + 1, holder.fencing_token + 1 + args.streams))
    return WaitersResult(
        protocol=args.protocol,
        streams=args.streams,
        channels=args.channels,
        batch=args.batch or args.streams,
        connections=connections,
        rss_idle=rss_idle,
        rss_waiting=rss_waiting,
        rss_peak=rss_peak,
        client_rss_waiting=client_rss_waiting,
        queue_seconds=queue_seconds,
        drain_seconds=times[-1] - released,
        intervals=Distribution.of([b - a for a, b in itertools.pairwise([released, *times])]),
        in_order=order == expected,
        acquired=len(order),
        noop_idle=noop_idle,
        noop_waiting=noop_waiting,
        command=command_line("bench.waiters", parser(), args),
    )


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench.waiters",
        description="Concurrent waiting streams on one conversation of one server, then a drain.",
    )
    p.add_argument("--streams", type=positive_int, default=10_000, help="waiters queued")
    p.add_argument("--channels", type=positive_int, default=8, help="client channels (TCP)")
    p.add_argument("--protocol", choices=PROTOCOLS, default="lock", help="how waiters wait")
    p.add_argument(
        "--batch",
        type=int,
        default=500,
        help="open waits in batches of this many, each once the previous one is queued "
        "(0: all at once; the server accepts up to 20,000 calls not yet picked up)",
    )
    p.add_argument(
        "--lifetime", type=positive_float, default=3600.0, help="ticket lifetime, seconds"
    )
    p.add_argument(
        "--noop-calls", type=positive_int, default=200, help="no-op calls per baseline sample"
    )
    add_timeout(p)
    return p


def run(args: argparse.Namespace) -> WaitersResult:
    # One conversation holds every waiter's ticket and the holder's: far beyond the
    # default max_tickets_per_conversation, which this server raises to fit.
    with tempfile.TemporaryDirectory(prefix="bench-waiters-") as directory:
        endpoints = Path(directory) / "endpoints.yml"
        endpoints.write_text(
            f"lock_store:\n  type: in_memory\n  max_tickets_per_conversation: {args.streams + 1}\n",
            encoding="utf-8",
        )
        try:
            return run_on_server(
                "waiters",
                args.timeout,
                lambda p: measure(p.target, p.process.pid, args),
                ["--endpoints", str(endpoints)],
            )
        except QueueingFailed as error:
            raise SystemExit(f"bench.waiters: {error}") from None


def report(result: WaitersResult) -> str:
    def verdict(ok: bool) -> str:
        return "met" if ok else "MISSED"

    n = result.streams
    noop_rate = 1 / result.noop_waiting.p50
    rows = [
        [
            "server RSS idle (after start, before load)",
            mib(result.rss_idle),
            "",
            f"≤ {mib(TARGET_IDLE_RSS)} ({verdict(result.rss_idle <= TARGET_IDLE_RSS)})",
        ],
        [
            f"server RSS with {n:,} waiting",
            mib(result.rss_waiting),
            f"idle + {mib(result.rss_waiting - result.rss_idle)} "
            f"({(result.rss_waiting - result.rss_idle) / n / 1024:,.1f} KiB per waiter)",
            "",
        ],
        [
            "server RSS peak over the run",
            mib(result.rss_peak),
            f"idle {mib(result.rss_idle)}",
            f"≤ {mib(TARGET_PEAK_RSS)} ({verdict(result.rss_peak <= TARGET_PEAK_RSS)})",
        ],
        [
            f"time to queue {n:,} waiters (all tickets issued; batches of {result.batch:,})",
            f"{result.queue_seconds:,.2f} s",
            "",
            "",
        ],
        [
            f"time for all {n:,} to acquire after the holder's release",
            f"{result.drain_seconds:,.2f} s",
            f"{n:,} x no-op round trip = {n * result.noop_waiting.p50:,.2f} s",
            "",
        ],
        [
            "handoff throughput during the drain",
            per_second(result.throughput),
            f"sequential no-op Check rate {per_second(noop_rate)}",
            "",
        ],
        [
            "time between consecutive acquisitions, p50 / p99 / max",
            f"{ms(result.intervals.p50)} / {ms(result.intervals.p99)} / "
            f"{ms(result.intervals.maximum)}",
            f"no-op round trip p50 / p99 {ms(result.noop_waiting.p50)} / "
            f"{ms(result.noop_waiting.p99)}",
            "",
        ],
        [
            "no-op Check round trip p50 / p99, idle server",
            f"{ms(result.noop_idle.p50)} / {ms(result.noop_idle.p99)}",
            "",
            "",
        ],
        [
            f"no-op Check round trip p50 / p99, {n:,} waiting",
            f"{ms(result.noop_waiting.p50)} / {ms(result.noop_waiting.p99)}",
            f"idle: {ms(result.noop_idle.p50)} / {ms(result.noop_idle.p99)}",
            "",
        ],
    ]
    label = "`Lock` streams" if result.protocol == "lock" else "IssueTicket + WaitForTicket streams"
    return "\n".join(
        [
            f"## {n:,} concurrent waiters ({label}) on one conversation of one server",
            "",
            table(["figure", "measured", "baseline (same run)", "target"], rows),
            "",
            f"acquired in ticket order: {'yes' if result.in_order else 'NO'} "
            f"({result.acquired:,} of {n:,} acquired)",
            f"client: 1 asyncio process, {result.channels} waiter channels + 1 observer channel "
            f"(GetLock polls); server TCP connections while waiting: {result.connections}; "
            "client RSS while waiting: "
            f"{mib(result.client_rss_waiting)}",
            environment(),
            f"reproduce: {result.command}",
        ]
    )


def summary_rows(result: WaitersResult) -> list[list[str]]:
    """Rows for the combined table: figure, measured, baseline (same run), target."""
    n = result.streams
    idle_ok = result.rss_idle <= TARGET_IDLE_RSS
    peak_ok = result.rss_peak <= TARGET_PEAK_RSS
    return [
        [
            "server RSS idle",
            mib(result.rss_idle),
            "",
            f"≤ {mib(TARGET_IDLE_RSS)}: {'met' if idle_ok else 'MISSED'}",
        ],
        [
            f"server RSS peak, {n:,} waiting streams",
            mib(result.rss_peak),
            f"idle {mib(result.rss_idle)}",
            f"≤ {mib(TARGET_PEAK_RSS)}: {'met' if peak_ok else 'MISSED'}",
        ],
        [
            f"all {n:,} acquire after release (drain), handoffs/s",
            f"{result.drain_seconds:,.1f} s, {per_second(result.throughput)}",
            f"sequential no-op Check {per_second(1 / result.noop_waiting.p50)}",
            f"ticket order: {'held' if result.in_order else 'BROKEN'}",
        ],
    ]


def main(argv: Sequence[str] | None = None) -> int:
    return benchmark_main(argv, parser, run, report, lambda result: result.correct)


if __name__ == "__main__":
    sys.exit(main())
