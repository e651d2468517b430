"""Peers whose network goes silent (no FIN, no RST) are found by keepalive pings.

A ``SilentProxy`` between the peer and the server stops forwarding while both of
its sockets stay open, as after a host crash or a partition. Most tests run a
server with 1 s keepalive settings to stay fast; one shows the defaults.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from ticketlock import AsyncLockClient
from ticketlock.v1 import lock_service_pb2 as pb
from ticketlock.v1 import lock_service_pb2_grpc as pb_grpc

from tests.support.redis_servers import RedisDeployment
from tests.support.server import ServerProcess
from tests.support.silent_proxy import SilentProxy

FAST_KEEPALIVE = ["--keepalive-time", "1", "--keepalive-timeout", "1"]
RELEASE = pb.LockRequest(release=pb.Release())


@pytest.fixture(scope="module", params=["in_memory", "redis"])
def fast_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """A server that pings quiet connections every second, on each store."""
    args = [*FAST_KEEPALIVE, "--log-level", "warning"]
    if request.param == "redis":
        redis: RedisDeployment = request.getfixturevalue("redis_standalone")
        endpoints = redis.write_endpoints(Path(tmp_path_factory.mktemp("dead-peers")) / "e.yml")
        args += ["--endpoints", str(endpoints)]
    with ServerProcess(args) as process:
        yield process


@pytest.fixture
def cid() -> str:
    return f"dead-peer-{uuid.uuid4().hex}"


def _acquire(cid: str, lifetime: float = 60) -> pb.LockRequest:
    return pb.LockRequest(acquire=pb.Acquire(conversation_id=cid, lifetime_seconds=lifetime))


async def _first_event(call: Any) -> Any:
    message = await call.read()
    assert message is not grpc.aio.EOF
    return message


async def _until(condition: Any, within: float) -> float:
    """Seconds until ``condition()`` holds; fails after ``within``."""
    started = time.monotonic()
    while not await condition():
        assert time.monotonic() - started < within, f"not within {within} s"
        await asyncio.sleep(0.05)
    return time.monotonic() - started


async def _holder_is_silenced_then_waiter_acquires(target: str, cid: str, within: float) -> float:
    """Seconds from the holder's silence to the waiter's ``acquired``."""
    with SilentProxy.to(target) as proxy:
        async with (
            grpc.aio.insecure_channel(proxy.target) as silent_channel,
            AsyncLockClient(target) as client,
        ):
            holder = pb_grpc.LockServiceStub(silent_channel).Lock()
            await holder.write(_acquire(cid, lifetime=60))
            assert (await _first_event(holder)).WhichOneof("event") == "acquired"
            acquired = asyncio.Event()

            async def wait() -> None:
                async with client.lock(cid, 30, timeout=within + 10):
                    acquired.set()

            waiter = asyncio.ensure_future(wait())
            await _until(lambda: _tickets(client, cid, 2), within=10)
            proxy.silence()
            silenced = time.monotonic()
            await asyncio.wait_for(acquired.wait(), within)
            took = time.monotonic() - silenced
            await waiter
            holder.cancel()
            return took


async def _tickets(client: AsyncLockClient, cid: str, count: int) -> bool:
    lock = await client.get_lock(cid)
    return count == (0 if lock is None else len(lock.tickets))


async def test_a_silent_holder_is_dropped_and_the_waiter_gets_the_lock(
    fast_server: ServerProcess, cid: str
) -> None:
    took = await _holder_is_silenced_then_waiter_acquires(fast_server.target, cid, within=15)
    # Ping after 1 s of quiet, 1 s to answer: far below the 60 s lifetime.
    assert took < 15


async def test_a_silent_waiter_loses_its_place(fast_server: ServerProcess, cid: str) -> None:
    target = fast_server.target
    with SilentProxy.to(target) as proxy:
        async with (
            grpc.aio.insecure_channel(proxy.target) as silent_channel,
            grpc.aio.insecure_channel(target) as channel,
            AsyncLockClient(target) as client,
        ):
            stub = pb_grpc.LockServiceStub(channel)
            holder = stub.Lock()
            await holder.write(_acquire(cid))
            assert (await _first_event(holder)).WhichOneof("event") == "acquired"
            silent = pb_grpc.LockServiceStub(silent_channel).Lock()
            await silent.write(_acquire(cid))
            silent_queued = await _first_event(silent)
            assert silent_queued.WhichOneof("event") == "queued"
            behind = stub.Lock()
            await behind.write(_acquire(cid))
            behind_queued = await _first_event(behind)
            assert behind_queued.queued.tickets_ahead == 2

            proxy.silence()
            silent_number = silent_queued.queued.ticket.number

            async def silent_gone() -> bool:
                lock = await client.get_lock(cid)
                return lock is not None and silent_number not in [t.number for t in lock.tickets]

            await _until(silent_gone, within=15)
            # The waiter behind it hears that it moved up, and is next.
            moved = await _first_event(behind)
            assert moved.WhichOneof("event") == "queued"
            assert moved.queued.tickets_ahead == 1
            await holder.write(RELEASE)
            assert (await _first_event(holder)).WhichOneof("event") == "released"
            acquired = await asyncio.wait_for(_first_event(behind), 5)
            assert acquired.WhichOneof("event") == "acquired"
            assert acquired.acquired.ticket.number == behind_queued.queued.ticket.number
            await behind.write(RELEASE)
            assert (await _first_event(behind)).WhichOneof("event") == "released"
            silent.cancel()


async def test_a_holder_that_resumes_in_time_keeps_its_lock(
    fast_server: ServerProcess, cid: str
) -> None:
    """A short stall (under the keepalive time plus timeout) costs nothing."""
    target = fast_server.target
    with SilentProxy.to(target) as proxy:
        async with (
            grpc.aio.insecure_channel(proxy.target) as channel,
            AsyncLockClient(target) as client,
        ):
            holder = pb_grpc.LockServiceStub(channel).Lock()
            await holder.write(_acquire(cid))
            acquired = await _first_event(holder)
            assert acquired.WhichOneof("event") == "acquired"
            proxy.silence()
            await asyncio.sleep(0.5)
            proxy.resume()
            await holder.write(pb.LockRequest(refresh=pb.Refresh(lifetime_seconds=30)))
            assert (await _first_event(holder)).WhichOneof("event") == "refreshed"
            lock = await client.get_lock(cid)
            assert lock is not None
            assert [t.number for t in lock.tickets] == [acquired.acquired.ticket.number]
            await holder.write(RELEASE)
            assert (await _first_event(holder)).WhichOneof("event") == "released"


@pytest.mark.slow
async def test_with_default_settings_a_silent_holder_is_dropped_within_30_seconds(
    target: str, cid: str
) -> None:
    """The session's server runs with the default options (ping after 10 s, 10 s to answer)."""
    took = await _holder_is_silenced_then_waiter_acquires(target, cid, within=30)
    assert took < 30


@pytest.mark.slow
async def test_a_client_pinging_every_5_seconds_keeps_its_lock(target: str, cid: str) -> None:
    """Standard client keepalive at the documented minimum, no data for 25 s.

    With gRPC's server defaults such a client was sent GOAWAY too_many_pings
    after about 20 s, and its lock was freed while it still held it.
    """
    options = [
        ("grpc.keepalive_time_ms", 5000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
    ]
    async with (
        grpc.aio.insecure_channel(target, options=options) as channel,
        AsyncLockClient(target) as client,
    ):
        holder = pb_grpc.LockServiceStub(channel).Lock()
        await holder.write(_acquire(cid, lifetime=120))
        acquired = await _first_event(holder)
        assert acquired.WhichOneof("event") == "acquired"
        number = acquired.acquired.ticket.number
        ended = asyncio.ensure_future(holder.read())
        done, _ = await asyncio.wait({ended}, timeout=25)
        if done:
            outcome = ended.exception() or ended.result()
            pytest.fail(f"the holder's stream ended while it held the lock: {outcome}")
        lock = await client.get_lock(cid)
        assert lock is not None and [t.number for t in lock.tickets] == [number]
        await holder.write(RELEASE)
        assert (await ended).WhichOneof("event") == "released"
        assert await holder.code() == grpc.StatusCode.OK
