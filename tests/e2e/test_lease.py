"""The lease API of ``lock()`` through a real server, sync and async, in-memory and Redis:
refresh, auto_refresh, the lost-lock signal, and the try-lock."""

from __future__ import annotations

import asyncio
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from ticketlock import (
    AsyncLockClient,
    LockClient,
    LockExpiredError,
    LockLostError,
    LockTimeoutError,
    SessionLostError,
    StoreUnavailableError,
    TicketNotFoundError,
)

from tests.support.redis_servers import RedisDeployment
from tests.support.server import ServerProcess
from tests.support.store_servers import StoreServers

pytestmark = pytest.mark.timeout(60)
STORES = ["in_memory", "redis"]
REPETITIONS = 20


@pytest.fixture(params=STORES)
def store_target(request: pytest.FixtureRequest, store_servers: StoreServers) -> str:
    return store_servers(request.param).target


@pytest.fixture(params=STORES)
def own_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ServerProcess]:
    """A server of this test's own, free to kill."""
    args = ["--log-level", "warning"]
    if request.param == "redis":
        deployment: RedisDeployment = request.getfixturevalue("redis_standalone")
        args += ["--endpoints", str(deployment.write_endpoints(tmp_path / "e.yml", "redis"))]
    with ServerProcess(args) as process:
        yield process


def _cid() -> str:
    return f"lease-{uuid.uuid4().hex}"


# -- a ticket that runs out inside the block ---------------------------------------------


def test_sync_expiry_inside_the_block_is_signalled_and_exit_raises(store_target: str) -> None:
    cid = _cid()
    with LockClient(store_target) as client, LockClient(store_target) as observer:
        with pytest.raises(LockExpiredError) as raised, client.lock(cid, 0.5) as held:
            assert not held.lost.is_set()
            assert held.lost.wait(10), "the ticket ran out but the block was not told"
            assert isinstance(held.error, LockExpiredError)
            with pytest.raises(LockExpiredError):
                held.raise_if_lost()
            with pytest.raises(LockLostError):
                held.refresh(30)
        assert isinstance(raised.value, TicketNotFoundError)
        assert observer.get_lock(cid) is None


async def test_async_expiry_inside_the_block_is_signalled_and_exit_raises(
    store_target: str,
) -> None:
    cid = _cid()
    async with AsyncLockClient(store_target) as client:
        with pytest.raises(LockExpiredError):
            async with client.lock(cid, 0.5) as held:
                await asyncio.wait_for(held.lost.wait(), 10)
                assert isinstance(held.error, LockExpiredError)
                with pytest.raises(LockLostError):
                    await held.refresh(30)
        assert await client.get_lock(cid) is None
        # The client goes on working: the next lock is acquired on a fresh stream.
        async with client.lock(cid, 30, timeout=5) as again:
            assert not again.lost.is_set()


# -- a server killed inside the block ----------------------------------------------------


def test_sync_server_killed_inside_the_block(own_server: ServerProcess) -> None:
    with LockClient(own_server.target) as client:
        with pytest.raises(SessionLostError) as raised, client.lock(_cid(), 30) as held:
            own_server.process.send_signal(signal.SIGKILL)
            assert held.lost.wait(10), "the server died but the block was not told"
            left = time.monotonic()
        assert time.monotonic() - left < 2, "leaving the block did not raise promptly"
        assert isinstance(raised.value, StoreUnavailableError)


async def test_async_server_killed_inside_the_block(own_server: ServerProcess) -> None:
    async with AsyncLockClient(own_server.target) as client:
        with pytest.raises(SessionLostError):
            async with client.lock(_cid(), 30) as held:
                own_server.process.send_signal(signal.SIGKILL)
                await asyncio.wait_for(held.lost.wait(), 10)
                left = time.monotonic()
        assert time.monotonic() - left < 2, "leaving the block did not raise promptly"


# -- refresh and auto_refresh ------------------------------------------------------------


def test_sync_refresh_extends_the_ticket(store_target: str) -> None:
    cid = _cid()
    with LockClient(store_target) as client, LockClient(store_target) as observer:
        with client.lock(cid, 2) as held:
            before = held.ticket.expires
            ticket = held.refresh(30)
            assert ticket == held.ticket and ticket.number == held.fencing_token
            assert ticket.expires > before + 20
            lock = observer.get_lock(cid)
            assert lock is not None and lock.tickets[0].expires == pytest.approx(ticket.expires)
        # This client's own calls see its release (the exit did not wait for it).
        assert client.get_lock(cid) is None


async def test_async_refresh_extends_the_ticket(store_target: str) -> None:
    cid = _cid()
    async with AsyncLockClient(store_target) as client:
        async with client.lock(cid, 2) as held:
            before = held.ticket.expires
            ticket = await held.refresh(30)
            assert ticket.expires > before + 20
            lock = await client.get_lock(cid)
            assert lock is not None and lock.tickets[0].expires == pytest.approx(ticket.expires)
        assert await client.get_lock(cid) is None


LIFETIME = 1.5
HOLD = 4.0  # well past the lifetime: only refreshes keep the lock


def test_sync_auto_refresh_keeps_a_short_lock_while_a_waiter_stays_out(store_target: str) -> None:
    cid = _cid()
    entered = threading.Event()
    waiter_in: list[float] = []
    with LockClient(store_target) as client, LockClient(store_target) as other:

        def waiter() -> None:
            entered.wait(10)
            with other.lock(cid, 30, timeout=20):
                waiter_in.append(time.monotonic())

        thread = threading.Thread(target=waiter)
        thread.start()
        with client.lock(cid, LIFETIME, auto_refresh=True) as held:
            entered.set()
            assert not held.lost.wait(HOLD), f"lost while refreshed: {held.error}"
            assert not waiter_in, "the waiter got in while the holder was alive"
            left = time.monotonic()
        thread.join(20)
        assert waiter_in and waiter_in[0] >= left


async def test_async_auto_refresh_keeps_a_short_lock_while_a_waiter_stays_out(
    store_target: str,
) -> None:
    cid = _cid()
    async with AsyncLockClient(store_target) as client, AsyncLockClient(store_target) as other:
        waiter_in: list[float] = []

        async def waiter() -> None:
            async with other.lock(cid, 30, timeout=20):
                waiter_in.append(time.monotonic())

        async with client.lock(cid, LIFETIME, auto_refresh=True) as held:
            task = asyncio.ensure_future(waiter())
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(held.lost.wait(), HOLD)
            assert not waiter_in, "the waiter got in while the holder was alive"
            left = time.monotonic()
        await asyncio.wait_for(task, 20)
        assert waiter_in and waiter_in[0] >= left


# -- the try-lock ------------------------------------------------------------------------


def test_sync_try_lock_on_a_free_conversation_always_acquires(store_target: str) -> None:
    with LockClient(store_target) as client:
        for i in range(REPETITIONS):
            cid = _cid()
            with client.lock(cid, 30, timeout=0 if i % 2 else None, blocking=bool(i % 2)) as held:
                assert held.fencing_token >= 0
            assert client.get_lock(cid) is None


def test_sync_try_lock_on_a_held_conversation_raises_and_leaves_no_ticket(
    store_target: str,
) -> None:
    cid = _cid()
    with (
        LockClient(store_target) as client,
        LockClient(store_target) as other,
        client.lock(cid, 30) as held,
    ):
        for i in range(REPETITIONS):
            started = time.monotonic()
            timeout = None if i % 2 else 0
            with (
                pytest.raises(LockTimeoutError),
                other.lock(cid, 30, blocking=False, timeout=timeout),
            ):
                pytest.fail("acquired a held lock")
            assert time.monotonic() - started < 5
            lock = other.get_lock(cid)
            assert lock is not None
            assert [t.number for t in lock.tickets] == [held.fencing_token]


async def test_async_try_lock_on_a_free_conversation_always_acquires(store_target: str) -> None:
    async with AsyncLockClient(store_target) as client:
        for i in range(REPETITIONS):
            cid = _cid()
            async with client.lock(cid, 30, timeout=0, blocking=bool(i % 2)) as held:
                assert held.fencing_token >= 0
            assert await client.get_lock(cid) is None


async def test_async_try_lock_on_a_held_conversation_raises_and_leaves_no_ticket(
    store_target: str,
) -> None:
    cid = _cid()
    async with AsyncLockClient(store_target) as client, AsyncLockClient(store_target) as other:
        async with client.lock(cid, 30) as held:
            for _ in range(REPETITIONS):
                with pytest.raises(LockTimeoutError):
                    async with other.lock(cid, 30, blocking=False):
                        pytest.fail("acquired a held lock")
                lock = await other.get_lock(cid)
                assert lock is not None
                assert [t.number for t in lock.tickets] == [held.fencing_token]
        # Same client, same conversation: a try-lock while another call of this
        # client holds it fails as well.
        async with client.lock(cid, 30):
            with pytest.raises(LockTimeoutError):
                async with client.lock(cid, 30, timeout=0):
                    pytest.fail("acquired a held lock")
        assert await client.get_lock(cid) is None
