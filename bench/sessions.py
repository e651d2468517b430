"""Lock sessions on reused streams: the targets of the sessions work, in one run.

Against one redis-server and ticketlock servers on the in-memory, redis and
concurrent_redis stores (two per Redis store, for handoffs across replicas), and
etcd when it is installed, in interleaved rounds at ``--tasks`` concurrent tasks
on distinct conversations:

- ``noop``: the no-op unary ``Check`` on the same server and channel (baseline);
- ``lock``: ``async with client.lock(cid): pass`` (``AsyncLockClient``);
- ``stream``: the server-side ceiling of a reused stream, through the generated
  stubs: one ``Lock`` stream per task (``ticketlock-reuse: 1``), each cycle
  ``acquire`` → ``acquired``, ``release`` → ``released``;
- ``pipelined``: the same, but the cycle does not wait for ``released``: the
  next cycle on that stream reads it before its ``acquired`` (what a stream pool
  can do);
- ``etcd``: etcd's ``Lock`` + ``Unlock`` on a lease granted once per task, with
  the same Python ``grpc.aio`` client (see ``bench.etcd``).

Also: calls and messages per cycle (counted by client interceptors on a separate
client), handoff p50/p99 in one server and across replicas, sync
``LockClient.lock()`` cycles at ``--threads`` threads beside the sync no-op
rate, the time until a holder whose connection goes silent is dropped with the
server's default settings, and the server's RSS for ``--idle-streams`` idle
reused streams.

Variants a server does not support (an older server without stream reuse) are
left out with ``--variants``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from ticketlock import AsyncLockClient, LockClient
from ticketlock.v1 import lock_service_pb2 as pb
from ticketlock.v1 import lock_service_pb2_grpc as pb_grpc

from bench import etcd as etcd_bench
from bench.baseline import (
    CallCounter,
    Distribution,
    add_timeout,
    benchmark_main,
    channel_of,
    command_line,
    environment,
    intercepted_channels,
    measure_rate,
    median,
    mib,
    ms,
    non_negative_float,
    per_second,
    positive_float,
    positive_int,
    rss_bytes,
    run_bounded,
    table,
)
from bench.cycles import lock_cycle, noop_op
from bench.handoff import lock_round
from bench.redis_stores import StoreResult, deployment, measure_handoffs
from harness.server import ServerProcess
from harness.silent_proxy import SilentProxy

STORES = ("in_memory", "redis", "concurrent_redis")
VARIANTS = ("noop", "lock", "stream", "pipelined")
LABELS = {
    "noop": "no-op Check (baseline)",
    "lock": "`async with client.lock()`",
    "stream": "reused stream, stubs, waits for released",
    "pipelined": "reused stream, stubs, release not awaited",
    "etcd": "etcd Lock + Unlock, reused lease",
}
# Targets of the sessions work: lock() cycles at 64 tasks as a share of no-op.
TARGETS = {"in_memory": 1.50, "redis": 0.75, "concurrent_redis": 0.75}
REUSE = (("ticketlock-reuse", "1"),)
_EOF: Any = grpc.aio.EOF  # type: ignore[attr-defined]
_RELEASE = pb.LockRequest(release=pb.Release())


# -- reused streams through the stubs ------------------------------------------------


@dataclass(slots=True)
class Messages:
    calls: int = 0
    sent: int = 0
    received: int = 0


class _Stream:
    def __init__(self, stub: pb_grpc.LockServiceStub, counts: Messages) -> None:
        self.call = stub.Lock(metadata=REUSE)
        self.owes_released = False
        self._counts = counts
        counts.calls += 1

    async def write(self, message: pb.LockRequest) -> None:
        self._counts.sent += 1
        await self.call.write(message)

    async def event(self) -> str:
        message = await self.call.read()
        if message is _EOF:
            raise RuntimeError("a reused Lock stream ended")
        self._counts.received += 1
        return str(message.WhichOneof("event"))


class ReusedStreams:
    """Idle reused ``Lock`` streams, last in first out; one more when none is idle."""

    def __init__(self, channel: grpc.aio.Channel, pipelined: bool) -> None:
        self._stub = pb_grpc.LockServiceStub(channel)
        self._pipelined = pipelined
        self._idle: list[_Stream] = []
        self.counts = Messages()

    async def cycle(self, cid: str) -> None:
        stream = self._idle.pop() if self._idle else _Stream(self._stub, self.counts)
        await stream.write(pb.LockRequest(acquire=pb.Acquire(conversation_id=cid)))
        if stream.owes_released and (event := await stream.event()) != "released":
            raise RuntimeError(f"expected released, got {event}")
        if (event := await stream.event()) != "acquired":
            raise RuntimeError(f"uncontended {cid!r}: expected acquired, got {event}")
        await stream.write(_RELEASE)
        if self._pipelined:
            stream.owes_released = True
        elif (event := await stream.event()) != "released":
            raise RuntimeError(f"expected released, got {event}")
        self._idle.append(stream)

    def close(self) -> None:
        for stream in self._idle:
            stream.call.cancel()
        self._idle.clear()


def stream_op(streams: ReusedStreams, prefix: str) -> Callable[[int], Awaitable[None]]:
    def op(sequence: int) -> Awaitable[None]:
        return streams.cycle(f"{prefix}-{sequence}")

    return op


# -- etcd ----------------------------------------------------------------------


class EtcdCycles:
    """Lock + Unlock of distinct names, each task's lease granted once and reused."""

    def __init__(self, locks: etcd_bench.EtcdLocks) -> None:
        self._locks = locks
        self._leases: list[int] = []

    async def cycle(self, name: str) -> None:
        lease = self._leases.pop() if self._leases else await self._locks.lease()
        try:
            key = await self._locks.lock(name, lease)
            await self._locks.unlock(key)
        finally:
            self._leases.append(lease)


# -- counting calls and messages ---------------------------------------------------


async def count_lock_traffic(target: str, cycles: int) -> Messages:
    """Calls and messages of ``cycles`` sequential ``client.lock()`` cycles.

    Counted as in ``bench.cycles``; the last cycle's ``released`` is read by the
    next user of its stream, so it is not counted.
    """
    counter = CallCounter()
    with intercepted_channels(counter.interceptors()):
        client = AsyncLockClient(target)
    try:
        op = lock_cycle(client, f"sessions-count-{uuid.uuid4().hex}")
        for sequence in range(cycles):
            await op(sequence)
    finally:
        await client.close()
    total = counter.total
    return Messages(total.calls, total.sent, total.received)


# -- sync clients in threads ----------------------------------------------------------


def thread_rate(op: Callable[[int], None], threads: int, duration: float) -> float:
    """``op(n)`` in ``threads`` loops for ``duration`` seconds: operations per second."""
    sequence = itertools.count()
    done = [0] * threads
    start = time.perf_counter()
    deadline = start + duration
    failures: list[BaseException] = []

    def loop(index: int) -> None:
        try:
            while time.perf_counter() < deadline:
                op(next(sequence))
                done[index] += 1
        except BaseException as error:  # reported below, not lost in the thread
            failures.append(error)

    workers = [threading.Thread(target=loop, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    if failures:
        raise failures[0]
    return sum(done) / (time.perf_counter() - start)


def sync_rates(target: str, args: argparse.Namespace) -> dict[str, list[float]]:
    rates: dict[str, list[float]] = {"noop": [], "lock": []}
    with LockClient(target) as client:
        check = health_pb2_grpc.HealthStub(client._channel).Check
        request = health_pb2.HealthCheckRequest()
        prefix = f"sessions-sync-{uuid.uuid4().hex}"

        def noop(_: int) -> None:
            check(request, timeout=10)

        def lock(n: int) -> None:
            with client.lock(f"{prefix}-{n}"):
                pass

        ops: dict[str, Callable[[int], None]] = {"noop": noop, "lock": lock}
        for op in ops.values():
            thread_rate(op, args.threads, 0.3)  # warm
        for _ in range(args.rounds):
            for variant, op in ops.items():
                rates[variant].append(thread_rate(op, args.threads, args.duration))
    return rates


# -- a silent holder, default settings ----------------------------------------------


async def detection_seconds(timeout: float = 60.0) -> float:
    """From the holder's connection going silent to the waiter's ``acquired``.

    A fresh server with its default options; the holder's stream runs through a
    proxy that stops forwarding without closing either socket.
    """
    cid = f"sessions-silent-{uuid.uuid4().hex}"
    with (
        ServerProcess(["--log-level", "warning"]) as server,
        SilentProxy.to(server.target) as proxy,
    ):
        async with (
            grpc.aio.insecure_channel(proxy.target) as silent,
            AsyncLockClient(server.target) as client,
        ):
            holder = pb_grpc.LockServiceStub(silent).Lock()
            await holder.write(pb.LockRequest(acquire=pb.Acquire(conversation_id=cid)))
            first = await holder.read()
            if first is _EOF or first.WhichOneof("event") != "acquired":
                raise RuntimeError(f"the holder did not acquire: {first}")
            acquired = asyncio.Event()

            async def wait() -> None:
                async with client.lock(cid, 120, timeout=timeout):
                    acquired.set()

            waiter = asyncio.ensure_future(wait())
            deadline = time.monotonic() + 10
            while not ((lock := await client.get_lock(cid)) and len(lock.tickets) == 2):
                if time.monotonic() > deadline:
                    raise RuntimeError("the waiter did not queue")
                await asyncio.sleep(0.01)
            proxy.silence()
            silenced = time.monotonic()
            await asyncio.wait_for(acquired.wait(), timeout)
            took = time.monotonic() - silenced
            await waiter
            holder.cancel()
            return took


# -- idle streams ------------------------------------------------------------------


async def idle_stream_rss(count: int, channels: int) -> tuple[int, int]:
    """Server RSS before and with ``count`` reused streams idle after one cycle each."""
    with ServerProcess(["--log-level", "warning"]) as server:
        pid = server.process.pid
        opened: list[grpc.aio.Channel] = [
            grpc.aio.insecure_channel(server.target) for _ in range(channels)
        ]
        pools = [ReusedStreams(channel, pipelined=False) for channel in opened]
        try:
            # Warm: the code paths, then the baseline with the channels connected.
            for pool in pools:
                await pool.cycle(f"idle-warm-{uuid.uuid4().hex}")
            await asyncio.sleep(0.5)
            before = rss_bytes(pid)
            prefix = f"idle-{uuid.uuid4().hex}"

            async def open_one(index: int) -> None:
                pool = pools[index % channels]
                stream = _Stream(pool._stub, pool.counts)
                pool._idle.append(stream)
                await stream.write(
                    pb.LockRequest(acquire=pb.Acquire(conversation_id=f"{prefix}-{index}"))
                )
                if await stream.event() != "acquired":
                    raise RuntimeError("an idle stream's cycle did not acquire")
                await stream.write(_RELEASE)
                if await stream.event() != "released":
                    raise RuntimeError("an idle stream's cycle did not release")

            for start in range(0, count, 100):
                await asyncio.gather(*(open_one(i) for i in range(start, min(count, start + 100))))
            await asyncio.sleep(1.0)
            return before, rss_bytes(pid)
        finally:
            for pool in pools:
                pool.close()
            for channel in opened:
                await channel.close(None)


# -- the run -----------------------------------------------------------------------


@dataclass(slots=True)
class SessionsResult:
    rates: dict[str, dict[str, list[float]]] = field(default_factory=dict)  # store->variant
    etcd_rates: list[float] = field(default_factory=list)
    etcd_noop: list[float] = field(default_factory=list)  # in-memory no-op, same rounds
    etcd_version: str = ""
    traffic: dict[str, tuple[float, float, float]] = field(default_factory=dict)
    handoff_single: dict[str, Distribution] = field(default_factory=dict)
    handoff_cross: dict[str, Distribution] = field(default_factory=dict)
    handoff_errors: list[str] = field(default_factory=list)
    sync: dict[str, list[float]] = field(default_factory=dict)
    detection: float | None = None
    idle_rss: tuple[int, int] | None = None
    tasks: int = 0
    threads: int = 0
    idle_streams: int = 0
    command: str = ""

    def median_rate(self, store: str, variant: str) -> float:
        return median(self.rates[store][variant])

    @property
    def correct(self) -> bool:
        return not self.handoff_errors


async def measure(servers: dict[str, tuple[str, str]], args: argparse.Namespace) -> SessionsResult:
    """``servers``: store -> (target of server A, target of server B or A)."""
    variants = [v for v in VARIANTS if v in args.variants]
    result = SessionsResult(tasks=args.tasks, threads=args.threads, idle_streams=args.idle_streams)
    clients = {store: AsyncLockClient(a) for store, (a, _) in servers.items()}
    others = {store: AsyncLockClient(b) for store, (_, b) in servers.items()}
    streams: dict[str, dict[str, ReusedStreams]] = {}
    etcd_stack = contextlib.ExitStack()
    etcd: EtcdCycles | None = None
    etcd_channel: grpc.aio.Channel | None = None
    try:
        if "etcd" in args.variants and etcd_bench.etcd_path() is not None:
            server = etcd_stack.enter_context(etcd_bench.etcd_server())
            etcd_channel = grpc.aio.insecure_channel(server.target)
            etcd = EtcdCycles(etcd_bench.EtcdLocks(etcd_channel))
            result.etcd_version = etcd_bench.etcd_version()
        for store, client in clients.items():
            streams[store] = {
                "stream": ReusedStreams(channel_of(client), pipelined=False),
                "pipelined": ReusedStreams(channel_of(client), pipelined=True),
            }
            result.rates[store] = {v: [] for v in variants}

        def ops(store: str, prefix: str) -> dict[str, Callable[[int], Awaitable[None]]]:
            client = clients[store]
            return {
                "noop": noop_op(client),
                "lock": lock_cycle(client, f"{prefix}-lock"),
                "stream": stream_op(streams[store]["stream"], f"{prefix}-stream"),
                "pipelined": stream_op(streams[store]["pipelined"], f"{prefix}-pipelined"),
            }

        def etcd_op(prefix: str) -> Callable[[int], Awaitable[None]]:
            assert etcd is not None
            return lambda n: etcd.cycle(f"{prefix}-{n}")

        run_id = uuid.uuid4().hex[:8]
        for store in clients:  # warm every path: channels, streams, scripts
            for variant in variants:
                await measure_rate(ops(store, f"s-warm-{run_id}")[variant], args.tasks, 0.3)
        if etcd is not None:
            await measure_rate(etcd_op(f"etcd-warm-{run_id}"), args.tasks, 0.3)
        for index in range(args.rounds):
            for store in clients:
                round_ops = ops(store, f"s-{run_id}-r{index}")
                for variant in variants:
                    rate = await measure_rate(
                        round_ops[variant], args.tasks, args.duration, args.warmup
                    )
                    result.rates[store][variant].append(rate.per_second)
            if etcd is not None:
                rate = await measure_rate(
                    etcd_op(f"etcd-{run_id}-r{index}"), args.tasks, args.duration, args.warmup
                )
                result.etcd_rates.append(rate.per_second)
                if "in_memory" in result.rates and "noop" in variants:
                    result.etcd_noop.append(result.rates["in_memory"]["noop"][-1])
        first_store = next(iter(servers))
        counted = await count_lock_traffic(servers[first_store][0], args.count_cycles)
        result.traffic["lock"] = (
            counted.calls / args.count_cycles,
            counted.sent / args.count_cycles,
            counted.received / args.count_cycles,
        )
        for variant in ("stream", "pipelined"):
            if variant in variants:
                pool = ReusedStreams(channel_of(clients[first_store]), variant == "pipelined")
                for n in range(args.count_cycles):
                    await pool.cycle(f"s-count-{run_id}-{variant}-{n}")
                c = pool.counts
                pool.close()
                # The pipelined pool's last released is read by no one: still a message.
                received = c.received + (1 if variant == "pipelined" else 0)
                result.traffic[variant] = (
                    c.calls / args.count_cycles,
                    c.sent / args.count_cycles,
                    received / args.count_cycles,
                )
        for store, client in clients.items():
            if store == "in_memory":
                handoffs: list[float] = []
                for index in range(-2, args.handoff_rounds):
                    one = await lock_round(client, f"s-handoff-{run_id}-{index}", 20, 0.001)
                    if index >= 0:
                        handoffs.extend(one.handoffs())
                    if not one.in_order() or one.overlaps():
                        result.handoff_errors.append(f"in_memory round {index}: order/overlap")
                result.handoff_single[store] = Distribution.of(handoffs)
            else:
                one_store = StoreResult()
                await measure_handoffs(
                    one_store, client, others[store], store, args.handoff_rounds * 20
                )
                result.handoff_errors += one_store.handoff_errors
                result.handoff_single[store] = Distribution.of(one_store.handoffs["single"])
                result.handoff_cross[store] = Distribution.of(one_store.handoffs["cross"])
    finally:
        for pools in streams.values():
            for pool in pools.values():
                pool.close()
        for client in [*clients.values(), *others.values()]:
            await client.close()
        if etcd_channel is not None:
            await etcd_channel.close(None)
        etcd_stack.close()
    return result


def run(args: argparse.Namespace) -> SessionsResult:
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="ticketlock-bench-sessions-") as directory:
        redis_stores = [s for s in args.stores if s != "in_memory"]
        with deployment(redis_stores, Path(directory)) as dep:
            servers: dict[str, tuple[str, str]] = {}
            if "in_memory" in args.stores:
                servers["in_memory"] = (dep.in_memory.target, dep.in_memory.target)
            for store in redis_stores:
                a, b = dep.servers[store]
                servers[store] = (a.target, b.target)
            result = run_bounded("sessions", args.timeout, measure(servers, args))
            if "sync" in args.variants:
                result.sync = sync_rates(dep.in_memory.target, args)
    if "detection" in args.variants:
        result.detection = run_bounded("sessions", args.timeout, detection_seconds())
    if "idle" in args.variants and args.idle_streams:
        result.idle_rss = run_bounded(
            "sessions", args.timeout, idle_stream_rss(args.idle_streams, args.idle_channels)
        )
    result.command = command_line("bench.sessions", parser(), args)
    print(f"(ran {time.monotonic() - started:,.0f} s)", file=sys.stderr)
    return result


ALL_VARIANTS = [*VARIANTS, "etcd", "sync", "detection", "idle"]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench.sessions",
        description="Lock cycles on reused streams per store, beside the no-op rate and etcd.",
    )
    p.add_argument("--stores", nargs="+", choices=STORES, default=list(STORES))
    p.add_argument(
        "--variants",
        nargs="+",
        choices=ALL_VARIANTS,
        default=ALL_VARIANTS,
        help="what to measure (leave out stream, pipelined and idle for a server "
        "without stream reuse; etcd is skipped when it is not installed)",
    )
    p.add_argument("--tasks", type=positive_int, default=64, help="concurrent asyncio tasks")
    p.add_argument("--rounds", type=positive_int, default=3, help="interleaved rounds")
    p.add_argument("--duration", type=positive_float, default=1.0, help="seconds per rate")
    p.add_argument("--warmup", type=non_negative_float, default=0.2)
    p.add_argument("--count-cycles", type=positive_int, default=100)
    p.add_argument(
        "--handoff-rounds",
        type=positive_int,
        default=10,
        help="in-memory: rounds of 20 queued waiters; Redis stores: 20x as many handoffs",
    )
    p.add_argument("--threads", type=positive_int, default=16, help="sync client threads")
    p.add_argument("--idle-streams", type=int, default=1000)
    p.add_argument("--idle-channels", type=positive_int, default=4)
    add_timeout(p, 900.0)
    return p


def _ratio(rate: float, base: float) -> str:
    return f"{rate / base:.0%}" if base else ""


def report(result: SessionsResult) -> str:
    lines = [
        f"## Lock cycles per second at {result.tasks} tasks, distinct conversations",
        "",
    ]
    rows = []
    for store, variants in result.rates.items():
        noop = median(variants["noop"]) if "noop" in variants else 0.0
        for variant, rates in variants.items():
            rate = median(rates)
            target = ""
            if variant == "lock" and store in TARGETS:
                met = noop and rate / noop >= TARGETS[store]
                target = f"≥ {TARGETS[store]:.0%} of no-op: {'met' if met else 'MISSED'}"
            rows.append(
                [
                    store,
                    LABELS[variant],
                    per_second(rate),
                    "" if variant == "noop" else _ratio(rate, noop),
                    target,
                    ", ".join(f"{r:,.0f}" for r in rates),
                ]
            )
    if result.etcd_rates:
        rate = median(result.etcd_rates)
        noop = median(result.etcd_noop) if result.etcd_noop else 0.0
        rows.append(
            [
                "etcd",
                LABELS["etcd"],
                per_second(rate),
                _ratio(rate, noop) + (" (of in-memory no-op)" if noop else ""),
                result.etcd_version,
                ", ".join(f"{r:,.0f}" for r in result.etcd_rates),
            ]
        )
    lines.append(
        table(["store", "operation", "median rate", "of no-op", "target / note", "rounds"], rows)
    )
    if result.etcd_rates and "in_memory" in result.rates and "lock" in result.rates["in_memory"]:
        etcd_rate = median(result.etcd_rates)
        ahead = ", ".join(
            f"{store} {median(v['lock']) / etcd_rate:.2f} times"
            for store, v in result.rates.items()
            if "lock" in v
        )
        lines += ["", f"`client.lock()` against etcd's lock, same run: {ahead}."]
    if result.traffic:
        lines += [
            "",
            "Per cycle (`bench.cycles`' client interceptors on a separate client for "
            "`client.lock()`; the stubs' own counts for the reused streams):",
            "",
            table(
                ["operation", "calls", "messages client→server", "messages server→client"],
                [
                    [LABELS[v], f"{c:.3g}", f"{s:.3g}", f"{r:.3g}"]
                    for v, (c, s, r) in result.traffic.items()
                ],
            ),
        ]
    if result.handoff_single:
        rows = []
        for store, single in result.handoff_single.items():
            cross = result.handoff_cross.get(store)
            rows.append(
                [
                    store,
                    f"{ms(single.p50)} / {ms(single.p99)} ({single.count})",
                    "" if cross is None else f"{ms(cross.p50)} / {ms(cross.p99)} ({cross.count})",
                ]
            )
        lines += [
            "",
            "Handoff (release → next holder's `acquired`), p50 / p99 (samples); targets "
            "≤ 2 / ≤ 10 ms in one server, p99 ≤ 15 ms across replicas:",
            "",
            table(["store", "one server", "across replicas"], rows),
        ]
        if result.handoff_errors:
            lines.append(f"HANDOFF ERRORS: {result.handoff_errors}")
    if result.sync:
        noop, lock = median(result.sync["noop"]), median(result.sync["lock"])
        lines += [
            "",
            f"Sync `LockClient.lock()` at {result.threads} threads (in-memory): "
            f"{per_second(lock)} ({_ratio(lock, noop)} of the sync no-op Check, "
            f"{per_second(noop)}); rounds {', '.join(f'{r:,.0f}' for r in result.sync['lock'])}.",
        ]
    if result.detection is not None:
        lines += [
            "",
            "Silent holder (proxy stops forwarding, sockets open), default server settings: "
            f"the waiter acquired {result.detection:.1f} s after the silence (lifetime 60 s).",
        ]
    if result.idle_rss is not None:
        before, after = result.idle_rss
        lines += [
            "",
            f"Server RSS with {result.idle_streams:,} idle reused streams: {mib(before)} → "
            f"{mib(after)} ({(after - before) / max(result.idle_streams, 1) / 1024:,.1f} KiB "
            "per stream).",
        ]
    lines += ["", environment("in-memory, redis and concurrent_redis stores"), ""]
    lines.append(f"reproduce: {result.command}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    return benchmark_main(argv, parser, run, report, lambda r: r.correct)


if __name__ == "__main__":
    sys.exit(main())
