"""The clients' pool of ``Lock`` streams, through real servers: one stream serves lock
cycle after lock cycle; a stream the server ended or that broke is replaced without
the caller seeing it; the pool stays bounded."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import pytest
from ticketlock import AsyncLockClient, LockClient
from ticketlock_server.rpc import add_to_server
from ticketlock_server.servicer import LockServicer
from ticketlock_server.sessions import Settings
from ticketlock_server.stores.in_memory import InMemoryLockStore
from ticketlock_server.waiting import WakeHub

from tests.support.server import ServerProcess, free_port
from tests.support.store_servers import StoreServers

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(params=["in_memory", "redis", "concurrent_redis"])
def store_target(request: pytest.FixtureRequest, store_servers: StoreServers) -> str:
    return store_servers(request.param).target


def _cid() -> str:
    return f"pool-{uuid.uuid4().hex}"


def _count_calls(stub: Any) -> list[int]:
    """Counts the Lock calls a client's stub opens."""
    opened = [0]
    lock = stub.Lock

    def counting(*args: Any, **kwargs: Any) -> Any:
        opened[0] += 1
        return lock(*args, **kwargs)

    stub.Lock = counting
    return opened


def test_sync_lock_cycles_share_one_stream(store_target: str) -> None:
    with LockClient(store_target) as client:
        opened = _count_calls(client._stub)
        numbers = []
        for _ in range(30):
            cid = _cid()
            with client.lock(cid, 30) as held:
                numbers.append(held.fencing_token)
            # This client's next call sees the release.
            assert not client.is_someone_waiting(cid)
        assert opened == [1]


async def test_async_lock_cycles_share_one_stream(store_target: str) -> None:
    async with AsyncLockClient(store_target) as client:
        opened = _count_calls(client._stub)
        cid = _cid()
        tokens = []
        for _ in range(30):
            async with client.lock(cid, 30) as held:
                tokens.append(held.fencing_token)
        assert opened == [1]
        assert tokens == sorted(tokens) and len(set(tokens)) == 30
        assert await client.get_lock(cid) is None


async def test_the_pool_is_bounded_and_concurrent_blocks_each_have_a_stream(
    store_target: str,
) -> None:
    async with AsyncLockClient(store_target, max_idle_streams=4) as client:
        opened = _count_calls(client._stub)
        inside = 0
        everyone_in = asyncio.Event()

        async def hold(cid: str) -> None:
            nonlocal inside
            async with client.lock(cid, 30):
                inside += 1
                if inside == 12:
                    everyone_in.set()
                await asyncio.wait_for(everyone_in.wait(), 20)

        await asyncio.gather(*(hold(_cid()) for _ in range(12)))
        assert opened == [12]
        assert len(client._idle) == 4
        for _ in range(8):  # the kept streams serve the next blocks
            async with client.lock(_cid(), 30):
                pass
        assert opened == [12]


class EndCountingServicer(LockServicer):
    """Counts the Lock streams whose handler has returned (the stream ended)."""

    ended = 0

    async def Lock(self, request_iterator: Any, context: Any) -> None:
        try:
            await super().Lock(request_iterator, context)
        finally:
            self.ended += 1


@contextlib.asynccontextmanager
async def in_process_server(
    idle_stream_timeout: float,
) -> AsyncIterator[tuple[str, EndCountingServicer]]:
    """A LockService on this event loop whose idle streams end after the given time."""
    server = grpc.aio.server()
    settings = Settings(idle_stream_timeout=idle_stream_timeout)
    servicer = EndCountingServicer(InMemoryLockStore(), WakeHub(), settings)
    add_to_server(servicer, server)
    port = free_port()
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    try:
        yield f"127.0.0.1:{port}", servicer
    finally:
        await server.stop(None)


async def _until(condition: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def test_async_a_stream_the_server_ended_when_idle_is_replaced_unseen() -> None:
    async with in_process_server(0.3) as (target, servicer), AsyncLockClient(target) as client:
        opened = _count_calls(client._stub)
        async with client.lock(_cid(), 30):
            pass
        assert len(client._idle) == 1
        await _until(lambda: servicer.ended == 1)  # the server ended it: idle too long
        async with client.lock(_cid(), 30) as held:
            assert not held.lost.is_set()
        assert opened == [2]


async def test_sync_a_stream_the_server_ended_when_idle_is_replaced_unseen() -> None:
    async with in_process_server(0.3) as (target, servicer):
        client = LockClient(target)
        try:
            opened = _count_calls(client._stub)

            def cycle() -> None:
                with client.lock(_cid(), 30) as held:
                    assert not held.lost.is_set()

            await asyncio.to_thread(cycle)
            assert len(client._idle) == 1
            await _until(lambda: servicer.ended == 1)
            await asyncio.to_thread(cycle)
            assert opened == [2]
        finally:
            # Off the loop: closing reads the pending release, which this loop serves.
            await asyncio.to_thread(client.close)


def test_sync_a_stream_broken_by_a_server_restart_is_replaced_unseen() -> None:
    listen = f"127.0.0.1:{free_port()}"
    with ServerProcess(["--log-level", "warning"], listen=listen) as first:
        client = LockClient(first.target)
        with client.lock(_cid(), 30):
            pass
    try:
        with ServerProcess(["--log-level", "warning"], listen=listen) as second:
            assert second.target == first.target
            with client.lock(_cid(), 30, timeout=10) as held:
                assert not held.lost.is_set()
    finally:
        client.close()


async def test_async_a_stream_broken_by_a_server_restart_is_replaced_unseen() -> None:
    listen = f"127.0.0.1:{free_port()}"
    with ServerProcess(["--log-level", "warning"], listen=listen) as first:
        client = AsyncLockClient(first.target)
        async with client.lock(_cid(), 30):
            pass
    try:
        with ServerProcess(["--log-level", "warning"], listen=listen):
            async with client.lock(_cid(), 30, timeout=10) as held:
                assert not held.lost.is_set()
    finally:
        await client.close()
