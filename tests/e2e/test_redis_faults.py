"""Redis faults under load, through real ticketlock servers on real ports.

Redis killed and restarted, Redis hung (SIGSTOP), a sentinel master killed, clients and
ticketlock servers that vanish or stop while they hold a lock. Every section has
``socket_timeout: 1``; a failing call must fail with UNAVAILABLE naming the store (never
INTERNAL, UNKNOWN or a hang) within a generous bound derived from it, and service must
come back without restarting ticketlock. Recovery times are printed, not asserted
beyond those bounds.

Calls go through raw stubs on channels without gRPC retries, so each status and
duration seen here is the server's own answer to one call.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc
from ticketlock.v1 import lock_service_pb2 as pb
from ticketlock.v1 import lock_service_pb2_grpc as pb_grpc
from ticketlock_server.config import load_store_config
from ticketlock_server.stores import create_store
from ticketlock_server.stores.redis_store import OPERATIONS, script_text

from harness.redis_servers import RedisDeployment
from harness.server import ServerProcess

T = TypeVar("T")

STORE_TYPES = ("redis", "concurrent_redis")
STORE_CLASSES = {"redis": "RedisLockStore", "concurrent_redis": "ConcurrentRedisLockStore"}
FAMILIES = {"redis": "json", "concurrent_redis": "concurrent"}
SOCKET_TIMEOUT = 1.0
# A failing call: the store's own timeout, once to connect and once to read, plus slack.
FAIL_WITHIN = 2 * SOCKET_TIMEOUT + 2.0
# No call may take longer than this; hitting it counts as a hang.
CALL_TIMEOUT = 10.0
# From the store being back to calls succeeding: the health probe runs every second.
RECOVER_WITHIN = 5.0
# A waiter re-checks on its own after 5 s at the latest; a pushed wake-up is far sooner.
PUSHED_WITHIN = 2.5
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
NO_RETRIES = [("grpc.enable_retries", 0)]
OK = grpc.StatusCode.OK


# --------------------------------------------------------------------------- servers


def write_endpoints(path: Path, section: Mapping[str, Any]) -> Path:
    path.write_text(yaml.safe_dump({"lock_store": dict(section)}, sort_keys=False), "utf-8")
    return path


def endpoints_for(tmp_path: Path, deployment: RedisDeployment, store_type: str) -> Path:
    section = deployment.lock_store_section(store_type, socket_timeout=SOCKET_TIMEOUT)
    return write_endpoints(tmp_path / f"{store_type}.yml", section)


def both_stores(tmp_path: Path, deployment: RedisDeployment) -> tuple[list[Path], dict[str, str]]:
    """An endpoints file per store type, and how each store names itself in errors."""
    paths = [endpoints_for(tmp_path, deployment, kind) for kind in STORE_TYPES]
    if deployment.mode == "sentinel":
        where = f"sentinel service {deployment.sentinel_service}"
    else:
        where = f"{deployment.host}:{deployment.port}/1)"
    return paths, {kind: f"{STORE_CLASSES[kind]} ({where}" for kind in STORE_TYPES}


def start_servers(
    stack: contextlib.ExitStack, endpoints: Sequence[Path], args: Sequence[str] = ()
) -> list[ServerProcess]:
    """One ticketlock server per endpoints file, started in parallel, each SERVING."""
    servers = []
    for path in endpoints:
        server = ServerProcess(["--endpoints", str(path), "--log-level", "info", *args])
        stack.callback(server.__exit__, None, None, None)
        servers.append(server)
    for server in servers:
        server.wait_serving()
    return servers


async def health(target: str) -> int | None:
    async with grpc.aio.insecure_channel(target) as channel:
        try:
            response = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=1.0
            )
        except grpc.aio.AioRpcError:
            return None
        return int(response.status)


async def wait_health(server: ServerProcess, expected: int, timeout: float) -> float:
    """Seconds until the health service reports ``expected`` (fails after ``timeout``)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if await health(server.target) == expected:
            return time.monotonic() - started
        await asyncio.sleep(0.05)
    raise AssertionError(f"health not {expected} within {timeout} s:\n{server.log}")


@contextlib.asynccontextmanager
async def stub_for(server: ServerProcess) -> AsyncIterator[Any]:
    async with grpc.aio.insecure_channel(server.target, options=NO_RETRIES) as channel:
        yield pb_grpc.LockServiceStub(channel)


def new_cid(tag: str) -> str:
    return f"{tag}-{uuid.uuid4().hex}"


# --------------------------------------------------------------------------- cycles under faults


@dataclass
class Call:
    rpc: str
    started: float
    elapsed: float
    code: grpc.StatusCode | None  # None: no answer within CALL_TIMEOUT (a hang)
    details: str


@dataclass
class CycleLoop:
    """Full lock cycles in a loop, each RPC timed and its status recorded."""

    name: str
    stub: Any
    calls: list[Call] = field(default_factory=list)
    # (start, end) of every successful cycle
    cycles: list[tuple[float, float]] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def timed(self, rpc: str, call: Awaitable[T]) -> T:
        started = time.monotonic()
        try:
            result = await asyncio.wait_for(call, CALL_TIMEOUT)
        except grpc.aio.AioRpcError as error:
            elapsed = time.monotonic() - started
            self.calls.append(Call(rpc, started, elapsed, error.code(), error.details() or ""))
            raise
        except asyncio.TimeoutError:
            self.calls.append(Call(rpc, started, time.monotonic() - started, None, "no answer"))
            raise
        self.calls.append(Call(rpc, started, time.monotonic() - started, OK, ""))
        return result

    async def cycle(self, cid: str) -> None:
        stub = self.stub

        def issue() -> Any:
            request = pb.IssueTicketRequest(conversation_id=cid, lifetime_seconds=10)
            return stub.IssueTicket(request, timeout=CALL_TIMEOUT)

        def cleanup(number: int) -> Any:
            request = pb.CleanupRequest(conversation_id=cid, ticket_number=number)
            return stub.Cleanup(request, timeout=CALL_TIMEOUT)

        holder = await self.timed("IssueTicket", issue())
        assert holder.ticket.number == holder.now_serving
        waiter = await self.timed("IssueTicket", issue())
        assert waiter.now_serving == holder.ticket.number
        lock = await self.timed(
            "GetLock", stub.GetLock(pb.GetLockRequest(conversation_id=cid), timeout=CALL_TIMEOUT)
        )
        assert [t.number for t in lock.lock.tickets] == [
            holder.ticket.number,
            waiter.ticket.number,
        ]
        stream = stub.WaitForTicket(
            pb.WaitForTicketRequest(conversation_id=cid, ticket_number=waiter.ticket.number),
            timeout=CALL_TIMEOUT,
        )
        try:
            queued = await self.timed("WaitForTicket", stream.read())
            assert not queued.acquired
            await self.timed("Cleanup", cleanup(holder.ticket.number))
            acquired = await self.timed("WaitForTicket", stream.read())
            assert acquired.acquired
        finally:
            stream.cancel()
        done = await self.timed("Cleanup", cleanup(waiter.ticket.number))
        assert done.lock_deleted

    async def run(self, max_cycles: int = 20_000) -> None:
        for _ in range(max_cycles):
            if self.stop.is_set():
                return
            started = time.monotonic()
            try:
                await self.cycle(new_cid(f"fault-{self.name}"))
            except (grpc.aio.AioRpcError, asyncio.TimeoutError):
                await asyncio.sleep(0.05)
            else:
                self.cycles.append((started, time.monotonic()))
                await asyncio.sleep(0.01)

    def successes_between(self, start: float, end: float) -> int:
        return sum(1 for s, e in self.cycles if s >= start and e <= end)

    def first_success_after(self, moment: float) -> float | None:
        ends = [e for s, e in self.cycles if s >= moment]
        return min(ends) - moment if ends else None

    def failures(self) -> list[Call]:
        return [call for call in self.calls if call.code != OK]

    def check_failures(self, store: str) -> list[Call]:
        """Every failed call: UNAVAILABLE naming the store, within ``FAIL_WITHIN``."""
        failures = self.failures()
        for call in failures:
            assert call.code == grpc.StatusCode.UNAVAILABLE, (self.name, call)
            assert store in call.details, (self.name, call)
            assert call.elapsed < FAIL_WITHIN, (self.name, call)
        return failures

    def summary(self, failures: list[Call]) -> str:
        slowest = max((c.elapsed for c in failures), default=0.0)
        rpcs = sorted({c.rpc for c in failures})
        return (
            f"{len(self.cycles)} cycles ok, {len(failures)} calls failed "
            f"(slowest failure {slowest:.2f} s; {', '.join(rpcs)})"
        )


@contextlib.asynccontextmanager
async def cycling(loops: Sequence[CycleLoop]) -> AsyncIterator[None]:
    tasks = [asyncio.ensure_future(loop.run()) for loop in loops]
    try:
        yield
    finally:
        for loop in loops:
            loop.stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 2 * CALL_TIMEOUT)
    for task in tasks:
        task.result()  # an assertion inside a cycle (wrong state) fails the test


async def wait_for_failures(loops: Sequence[CycleLoop], since: float, timeout: float) -> None:
    """Until every loop has seen a failed call started after ``since``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(any(c.started >= since for c in loop.failures()) for loop in loops):
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the cycles did not notice the fault")


async def wait_for_cycles(loops: Sequence[CycleLoop], since: float, timeout: float) -> None:
    """Until every loop has completed a cycle that started after ``since``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(loop.first_success_after(since) is not None for loop in loops):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"no successful cycle within {timeout} s")


# --------------------------------------------------------------------------- Lock sessions


async def open_session(stub: Any, cid: str, lifetime: float) -> tuple[Any, Any]:
    """A ``Lock`` stream that sent ``acquire``; returns it and its first answer."""
    call = stub.Lock(timeout=60)
    await call.write(
        pb.LockRequest(acquire=pb.Acquire(conversation_id=cid, lifetime_seconds=lifetime))
    )
    first = await asyncio.wait_for(call.read(), CALL_TIMEOUT)
    return call, first


async def until_acquired(call: Any) -> Any:
    """Read a ``Lock`` stream up to its ``acquired`` event (errors propagate)."""
    while True:
        message = await call.read()
        assert message is not grpc.aio.EOF, "the Lock stream ended without acquiring"  # type: ignore[attr-defined]
        if message.WhichOneof("event") == "acquired":
            return message.acquired


async def stream_end(call: Any) -> tuple[grpc.StatusCode, str, float]:
    """Read a ``Lock`` stream until it fails; the status, details and when."""
    try:
        await until_acquired(call)
    except grpc.aio.AioRpcError as error:
        return error.code(), error.details() or "", time.monotonic()
    raise AssertionError("acquired a ticket that no longer exists")


async def assert_feeds_wake(stubs: Sequence[Any], paths: Sequence[Path], when: str) -> None:
    """On each server, a release by another replica still wakes a waiter at once."""
    for kind, stub, path in zip(STORE_TYPES, stubs, paths, strict=True):
        woken = await pushed_handoff(stub, path)
        print(f"{kind}: {when}, a release by another replica woke the waiter in "
              f"{woken * 1000:.0f} ms")  # fmt: skip
        assert woken < PUSHED_WITHIN


async def pushed_handoff(stub: Any, path: Path) -> float:
    """A waiter on the server is woken by a release from another replica (pub/sub).

    The other replica is an in-process store built from the same endpoints file; the
    server learns of its release only through its change feed. Returns the seconds
    from the release to the waiter's turn.
    """
    cid = new_cid("pushed")
    other = create_store(load_store_config(str(path), {}))
    try:
        request = pb.IssueTicketRequest(conversation_id=cid, lifetime_seconds=30)
        holder = await stub.IssueTicket(request, timeout=CALL_TIMEOUT)
        waiter = await stub.IssueTicket(request, timeout=CALL_TIMEOUT)
        stream = stub.WaitForTicket(
            pb.WaitForTicketRequest(conversation_id=cid, ticket_number=waiter.ticket.number),
            timeout=CALL_TIMEOUT,
        )
        try:
            queued = await asyncio.wait_for(stream.read(), CALL_TIMEOUT)
            assert not queued.acquired
            released = time.monotonic()
            await asyncio.wait_for(other.cleanup(cid, holder.ticket.number), CALL_TIMEOUT)
            acquired = await asyncio.wait_for(stream.read(), CALL_TIMEOUT)
            woken = time.monotonic() - released
            assert acquired.acquired
        finally:
            stream.cancel()
        await asyncio.wait_for(other.cleanup(cid, waiter.ticket.number), CALL_TIMEOUT)
    finally:
        await other.close()
    return woken


# --------------------------------------------------------------------------- 6. Redis killed


async def test_redis_killed_mid_run_then_restarted_on_the_same_port(
    tmp_path: Path, fresh_standalone: RedisDeployment
) -> None:
    """SIGKILL Redis under load, restart it empty on the same port.

    What the contract says about the lost data: a non-persistent Redis forgets every
    ticket, so a ticket issued before the crash no longer exists. A session queued
    before the crash must not be stranded: it ends with NOT_FOUND once the store is
    back (its ticket is gone; UNAVAILABLE if it happened to re-check during the
    outage). The session that held the lock is told too (NOT_FOUND: it no longer
    holds it), so it cannot release a post-crash ticket that got its number, and a
    new session acquires at once.
    """
    redis_process = fresh_standalone.processes[0]
    paths, names = both_stores(tmp_path, fresh_standalone)
    with contextlib.ExitStack() as stack:
        servers = start_servers(stack, paths)
        async with contextlib.AsyncExitStack() as astack:
            stubs = [await astack.enter_async_context(stub_for(s)) for s in servers]
            # Before the crash: on conversation W, a holder and a queued session.
            waited_on = new_cid("crash-w")
            sessions = []
            for stub in stubs:
                holder, first = await open_session(stub, waited_on, 30)
                assert first.WhichOneof("event") == "acquired"
                waiter, queued = await open_session(stub, waited_on, 30)
                assert queued.WhichOneof("event") == "queued"
                sessions.append((holder, waiter, asyncio.ensure_future(stream_end(waiter))))

            loops = [CycleLoop(kind, stub) for kind, stub in zip(STORE_TYPES, stubs, strict=True)]
            async with cycling(loops):
                began = time.monotonic()
                await wait_for_cycles(loops, began, RECOVER_WITHIN)
                killed = time.monotonic()
                assert all(loop.successes_between(began, killed) > 0 for loop in loops)
                await asyncio.to_thread(redis_process.kill)
                not_serving = await asyncio.gather(
                    *(wait_health(s, NOT_SERVING, 5 * SOCKET_TIMEOUT + 3) for s in servers)
                )
                await wait_for_failures(loops, killed, FAIL_WITHIN)
                await asyncio.sleep(1.0)  # an outage of a couple of seconds
                restarted = time.monotonic()
                await asyncio.to_thread(redis_process.restart)
                serving = await asyncio.gather(
                    *(wait_health(s, SERVING, RECOVER_WITHIN) for s in servers)
                )
                await wait_for_cycles(loops, restarted, RECOVER_WITHIN)
                await asyncio.sleep(0.3)

            for kind, loop, down, up in zip(STORE_TYPES, loops, not_serving, serving, strict=True):
                failures = loop.check_failures(names[kind])
                assert failures, "calls failed while Redis was down"
                assert not [c for c in failures if c.started > restarted + RECOVER_WITHIN]
                recovered = loop.first_success_after(restarted)
                assert recovered is not None
                print(
                    f"\n{kind}: {loop.summary(failures)}; NOT_SERVING {down:.2f} s after the "
                    f"kill; after the restart SERVING in {up:.2f} s, first cycle in "
                    f"{recovered:.2f} s"
                )

            # The session queued before the crash is not stranded.
            for kind, stub, (holder, waiter, ended) in zip(
                STORE_TYPES, stubs, sessions, strict=True
            ):
                code, details, when = await asyncio.wait_for(ended, RECOVER_WITHIN)
                assert code in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNAVAILABLE), details
                assert when - restarted < RECOVER_WITHIN
                # The old holder learns that its ticket is gone once the store is back.
                with pytest.raises(grpc.aio.AioRpcError) as lost:
                    await asyncio.wait_for(holder.read(), RECOVER_WITHIN)
                assert lost.value.code() == grpc.StatusCode.NOT_FOUND, lost.value.details()
                # The client of the ended session queues again, and gets the lock at once.
                queued_again = time.monotonic()
                again, first = await open_session(stub, waited_on, 30)
                assert first.WhichOneof("event") == "acquired"
                print(
                    f"{kind}: the session queued before the crash ended with {code.name} "
                    f"{when - restarted:+.2f} s from the restart ({details}); queued again, "
                    f"it held the lock in {(time.monotonic() - queued_again) * 1000:.0f} ms"
                )
                await again.write(pb.LockRequest(release=pb.Release()))
                await asyncio.wait_for(again.read(), CALL_TIMEOUT)
                waiter.cancel()

            # The change feed is back too: a release by another replica still wakes a waiter.
            await assert_feeds_wake(stubs, paths, "after the restart")
        for server in servers:
            assert server.process.poll() is None, server.log
            assert "Traceback" not in server.log, server.log


# --------------------------------------------------------------------------- 7. Redis hung


async def test_hung_redis_fails_calls_within_the_socket_timeout_and_recovers(
    tmp_path: Path, fresh_standalone: RedisDeployment
) -> None:
    redis_process = fresh_standalone.processes[0]
    paths, names = both_stores(tmp_path, fresh_standalone)
    with contextlib.ExitStack() as stack:
        servers = start_servers(stack, paths)
        async with contextlib.AsyncExitStack() as astack:
            stubs = [await astack.enter_async_context(stub_for(s)) for s in servers]
            loops = [CycleLoop(kind, stub) for kind, stub in zip(STORE_TYPES, stubs, strict=True)]
            try:
                async with cycling(loops):
                    await wait_for_cycles(loops, time.monotonic(), RECOVER_WITHIN)
                    paused = time.monotonic()
                    redis_process.pause()
                    not_serving = await asyncio.gather(
                        *(wait_health(s, NOT_SERVING, 5 * SOCKET_TIMEOUT + 3) for s in servers)
                    )
                    await wait_for_failures(loops, paused, FAIL_WITHIN + 1)
                    await asyncio.sleep(max(0.0, paused + 3 * SOCKET_TIMEOUT - time.monotonic()))
                    resumed = time.monotonic()
                    redis_process.resume()
                    serving = await asyncio.gather(
                        *(wait_health(s, SERVING, RECOVER_WITHIN) for s in servers)
                    )
                    await wait_for_cycles(loops, resumed, RECOVER_WITHIN)
            finally:
                redis_process.resume()

        for kind, loop, down, up in zip(STORE_TYPES, loops, not_serving, serving, strict=True):
            failures = loop.check_failures(names[kind])
            during = [c for c in failures if paused <= c.started < resumed]
            assert during, "calls failed while Redis was hung"
            # They failed because the store's own timeout ran out, not at once.
            assert any(c.elapsed >= 0.8 * SOCKET_TIMEOUT for c in during)
            assert loop.successes_between(paused + FAIL_WITHIN, resumed) == 0
            recovered = loop.first_success_after(resumed)
            assert recovered is not None
            print(
                f"\n{kind}: {loop.summary(failures)}; NOT_SERVING {down:.2f} s after SIGSTOP; "
                f"after SIGCONT SERVING in {up:.2f} s, first cycle in {recovered:.2f} s"
            )
        for server in servers:
            assert server.process.poll() is None, server.log


# --------------------------------------------------------------------------- 8. sentinel failover


def script_shas(store_type: str) -> list[str]:
    family = FAMILIES[store_type]
    return [hashlib.sha1(script_text(family, op).encode()).hexdigest() for op in OPERATIONS]


async def test_sentinel_master_killed_fails_over_without_restarting_ticketlock(
    tmp_path: Path, fresh_sentinel: RedisDeployment
) -> None:
    assert fresh_sentinel.master is not None and fresh_sentinel.replica is not None
    replica = fresh_sentinel.replica
    paths, names = both_stores(tmp_path, fresh_sentinel)
    with contextlib.ExitStack() as stack:
        servers = start_servers(stack, paths)
        # The servers loaded their scripts on the master; SCRIPT LOAD is not replicated.
        loaded_on_replica = {
            kind: replica.execute("SCRIPT", "EXISTS", *script_shas(kind)) for kind in STORE_TYPES
        }
        async with contextlib.AsyncExitStack() as astack:
            stubs = [await astack.enter_async_context(stub_for(s)) for s in servers]
            loops = [CycleLoop(kind, stub) for kind, stub in zip(STORE_TYPES, stubs, strict=True)]
            async with cycling(loops):
                await wait_for_cycles(loops, time.monotonic(), RECOVER_WITHIN)
                killed = time.monotonic()
                failover = await asyncio.to_thread(fresh_sentinel.failover_by_killing_master)
                promoted = time.monotonic()
                await wait_for_cycles(loops, promoted, RECOVER_WITHIN)
                await asyncio.sleep(0.3)
            # The change feed follows the master too: other replicas' releases still wake.
            await assert_feeds_wake(stubs, paths, "after the failover")

        assert fresh_sentinel.master is replica, "the replica is the master now"
        for kind, loop in zip(STORE_TYPES, loops, strict=True):
            failures = loop.check_failures(names[kind])
            recovered = loop.first_success_after(killed)
            assert recovered is not None
            assert not [c for c in failures if c.started > promoted + RECOVER_WITHIN]
            print(
                f"\n{kind}: {loop.summary(failures)}; sentinels promoted the replica in "
                f"{failover:.2f} s; first cycle {recovered:.2f} s after the kill"
            )
            # The scripts the cycles use were loaded on the new master on demand (NOSCRIPT).
            present = dict(
                zip(
                    OPERATIONS, replica.execute("SCRIPT", "EXISTS", *script_shas(kind)), strict=True
                )
            )
            print(
                f"{kind}: scripts on the replica before the failover {loaded_on_replica[kind]}, "
                f"on the new master after it {present}"
            )
            assert all(present[op] for op in ("issue", "position", "get", "cleanup"))
        for server in servers:
            assert server.process.poll() is None, server.log


# --------------------------------------------------------------------------- 9. vanishing holders

HOLDER_SCRIPT = """
import sys, time
from ticketlock import LockClient
with LockClient(sys.argv[1]) as client, client.lock(sys.argv[2], float(sys.argv[3])) as held:
    print("acquired", held.ticket.number, held.ticket.expires, flush=True)
    time.sleep(60)
"""


@contextlib.contextmanager
def holder_process(target: str, cid: str, lifetime: float) -> Iterator[subprocess.Popen[str]]:
    process = subprocess.Popen(
        [sys.executable, "-c", HOLDER_SCRIPT, target, cid, str(lifetime)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(10)
        assert process.stdout is not None
        process.stdout.close()


@pytest.mark.parametrize("store_type", STORE_TYPES)
async def test_client_killed_while_holding_lets_the_waiter_on_another_server_in_at_once(
    tmp_path: Path, redis_standalone: RedisDeployment, store_type: str
) -> None:
    path = endpoints_for(tmp_path, redis_standalone, store_type)
    cid = new_cid("vanish")
    with contextlib.ExitStack() as stack:
        one, two = start_servers(stack, [path, path])
        holder = stack.enter_context(holder_process(one.target, cid, 30))
        assert holder.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(holder.stdout.readline), 20)
        assert line.startswith("acquired"), line
        async with stub_for(two) as stub:
            waiter, queued = await open_session(stub, cid, 30)
            assert queued.WhichOneof("event") == "queued"
            killed = time.monotonic()
            holder.send_signal(signal.SIGKILL)
            acquired = await asyncio.wait_for(until_acquired(waiter), CALL_TIMEOUT)
            handoff = time.monotonic() - killed
            print(
                f"\n{store_type}: holder process killed; waiter on the other server in "
                f"{handoff * 1000:.0f} ms (its lifetime was 30 s)"
            )
            assert acquired.ticket.number > int(line.split()[1])
            assert handoff < 3.0, one.log
            await waiter.write(pb.LockRequest(release=pb.Release()))
            await asyncio.wait_for(waiter.read(), CALL_TIMEOUT)


@pytest.mark.parametrize("store_type", STORE_TYPES)
async def test_server_killed_while_its_client_holds_keeps_the_ticket_until_its_lifetime(
    tmp_path: Path, redis_standalone: RedisDeployment, store_type: str
) -> None:
    lifetime = 1.5
    path = endpoints_for(tmp_path, redis_standalone, store_type)
    cid = new_cid("server-killed")
    with contextlib.ExitStack() as stack:
        one, two = start_servers(stack, [path, path])
        async with stub_for(one) as stub_one, stub_for(two) as stub_two:
            holder, first = await open_session(stub_one, cid, lifetime)
            assert first.WhichOneof("event") == "acquired"
            expires = first.acquired.ticket.expires
            waiter, queued = await open_session(stub_two, cid, 30)
            assert queued.WhichOneof("event") == "queued"
            one.process.kill()
            await asyncio.to_thread(one.process.wait, 10)
            killed_at = time.time()
            acquired = await asyncio.wait_for(until_acquired(waiter), lifetime + CALL_TIMEOUT)
            acquired_at = time.time()
            print(
                f"\n{store_type}: server killed {expires - killed_at:.2f} s before the "
                f"holder's expiry; waiter acquired {acquired_at - expires:+.3f} s from it"
            )
            # Not before the holder's ticket ran out (one machine, one clock; Redis decides
            # in its own TIME, rounded to the millisecond), and not long after.
            assert acquired_at >= expires - 0.05
            assert acquired_at <= expires + 2.0
            assert acquired.ticket.number == queued.queued.ticket.number
            await waiter.write(pb.LockRequest(release=pb.Release()))
            await asyncio.wait_for(waiter.read(), CALL_TIMEOUT)
            holder.cancel()


# --------------------------------------------------------------------------- 10. SIGTERM


async def test_sigterm_keeps_the_holders_ticket_in_redis_until_it_expires(
    tmp_path: Path, redis_standalone: RedisDeployment
) -> None:
    """README: a session that holds the lock at shutdown keeps its ticket until it expires."""
    lifetime = 2.0
    path = endpoints_for(tmp_path, redis_standalone, "redis")
    cid = new_cid("sigterm")
    admin = redis_standalone.client()
    with contextlib.ExitStack() as stack:
        stack.callback(admin.close)
        one, two = start_servers(stack, [path, path], ["--grace", "1"])
        async with stub_for(one) as stub_one, stub_for(two) as stub_two:
            holder, first = await open_session(stub_one, cid, lifetime)
            assert first.WhichOneof("event") == "acquired"
            ticket = first.acquired.ticket
            waiter, queued = await open_session(stub_two, cid, 30)
            assert queued.WhichOneof("event") == "queued"
            one.process.send_signal(signal.SIGTERM)
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await asyncio.wait_for(holder.read(), CALL_TIMEOUT)
            assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "shutting down" in (raised.value.details() or "")
            assert await asyncio.to_thread(one.process.wait, 15) == 0
            stopped_at = time.time()
            assert stopped_at < ticket.expires, "the server stopped before the ticket expired"

            # The server is gone; Redis still has the holder's ticket, first in the queue.
            stored = json.loads(admin.get(f"lock:{cid}"))
            numbers = [json.loads(t)["number"] for t in stored["tickets"]]
            assert numbers[0] == ticket.number, stored
            assert queued.queued.ticket.number in numbers
            waiting = asyncio.ensure_future(until_acquired(waiter))
            await asyncio.sleep(0.1)
            assert not waiting.done(), "the waiter got in while the holder's ticket was alive"

            acquired = await asyncio.wait_for(waiting, lifetime + CALL_TIMEOUT)
            acquired_at = time.time()
            print(
                f"\nSIGTERM {ticket.expires - stopped_at:.2f} s before the holder's expiry "
                f"(server exited 0); waiter acquired {acquired_at - ticket.expires:+.3f} s "
                "from the expiry"
            )
            assert ticket.expires - 0.05 <= acquired_at <= ticket.expires + 2.0
            assert acquired.ticket.number == queued.queued.ticket.number
            # ... and the expired ticket is gone.
            got = await stub_two.GetLock(pb.GetLockRequest(conversation_id=cid), timeout=5)
            assert [t.number for t in got.lock.tickets] == [queued.queued.ticket.number]
            await waiter.write(pb.LockRequest(release=pb.Release()))
            await asyncio.wait_for(waiter.read(), CALL_TIMEOUT)


# --------------------------------------------------------------------------- a stream gone
# while its ticket is being issued


async def test_a_lock_stream_ended_while_its_ticket_is_issued_leaves_no_ticket(
    tmp_path: Path, fresh_standalone: RedisDeployment
) -> None:
    """The client cancels its ``acquire`` while the issue script waits on a slow Redis:
    the ticket that the script creates once Redis answers is released by the server,
    instead of blocking the conversation for its 20 s lifetime."""
    redis_process = fresh_standalone.processes[0]
    paths, _ = both_stores(tmp_path, fresh_standalone)
    with contextlib.ExitStack() as stack:
        servers = start_servers(stack, paths)
        async with contextlib.AsyncExitStack() as astack:
            stubs = [await astack.enter_async_context(stub_for(s)) for s in servers]
            cids = [new_cid("gone-while-issued") for _ in stubs]
            redis_process.pause()
            try:
                for stub, cid in zip(stubs, cids, strict=True):
                    call = stub.Lock(timeout=60)
                    request = pb.Acquire(conversation_id=cid, lifetime_seconds=20)
                    await call.write(pb.LockRequest(acquire=request))
                    await asyncio.sleep(0.3)
                    call.cancel()
                await asyncio.sleep(0.2)
            finally:
                redis_process.resume()
            for stub, cid in zip(stubs, cids, strict=True):
                started = time.monotonic()
                call, first = await open_session(stub, cid, 5)
                if first.WhichOneof("event") == "queued":
                    first = await asyncio.wait_for(until_acquired(call), 3)
                assert first.WhichOneof("event") == "acquired"
                print(f"\nacquired {time.monotonic() - started:.3f} s after Redis resumed")
                await call.write(pb.LockRequest(release=pb.Release()))
                await asyncio.wait_for(call.read(), CALL_TIMEOUT)
        for server in servers:
            assert "Traceback" not in server.log, server.log
