"""The ``Multiplexer`` as a unit, against a fake connection: replies matched to
calls in order, the calls of one event-loop turn written together, a timeout
failing everything in flight, and replies that come too late dropped.

The fake connection stands in for redis-py's: the test decides when each reply
arrives (or that none does), which a real Redis cannot be made to do exactly.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest
from redis.asyncio.connection import ConnectionPool
from redis.exceptions import ConnectionError, ResponseError, TimeoutError
from ticketlock_server.stores.redis_mux import Multiplexer

from tests.support.conditions import eventually


class FakeWriter:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closing = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def is_closing(self) -> bool:
        return self.closing


class FakeConnection:
    """What the Multiplexer uses of a redis-py connection; replies are fed by hand."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._writer: FakeWriter | None = None
        self.replies: asyncio.Queue[Any] = asyncio.Queue()
        self.disconnected = False

    async def connect(self) -> None:
        self._writer = FakeWriter()

    def pack_command(self, *args: Any) -> list[bytes]:
        return [(" ".join(str(a) for a in args) + "\n").encode()]

    async def read_response(self, timeout: float | None = None) -> Any:
        reply = await self.replies.get()
        if isinstance(reply, BaseException):
            raise reply
        return reply

    async def disconnect(self, nowait: bool = False) -> None:
        self.disconnected = True

    def commands(self) -> list[str]:
        assert self._writer is not None
        return b"".join(self._writer.writes).decode().splitlines()


class FakePool:
    def __init__(self) -> None:
        self.connections: list[FakeConnection] = []
        self.released: list[FakeConnection] = []

    async def get_connection(self) -> FakeConnection:
        connection = FakeConnection(f"connection-{len(self.connections)}")
        self.connections.append(connection)
        return connection

    async def release(self, connection: FakeConnection) -> None:
        self.released.append(connection)


@pytest.fixture
async def pool() -> FakePool:
    return FakePool()


def _mux(pool: FakePool, timeout: float = 30.0) -> Multiplexer:
    return Multiplexer(cast(ConnectionPool, pool), timeout)


async def _sent(connection: FakeConnection, count: int) -> None:
    await eventually(lambda: len(connection.commands()) >= count, f"{count} commands written")


async def _in_flight(
    mux: Multiplexer, pool: FakePool, *commands: tuple[Any, ...]
) -> tuple[list[asyncio.Future[Any]], FakeConnection]:
    """``commands`` sent in one event-loop turn, and the connection they went out on."""
    calls = [asyncio.ensure_future(mux.execute(*command)) for command in commands]
    await eventually(lambda: pool.connections, "a connection")
    connection = pool.connections[-1]
    await _sent(connection, len(commands))
    return calls, connection


def _evalshas(count: int) -> list[tuple[Any, ...]]:
    return [("EVALSHA", "sha", i) for i in range(count)]


async def test_replies_go_to_their_calls_in_order_and_one_turn_is_one_write(
    pool: FakePool,
) -> None:
    mux = _mux(pool)
    calls, connection = await _in_flight(mux, pool, *_evalshas(5))
    assert connection.commands() == [f"EVALSHA sha {i}" for i in range(5)]
    assert connection._writer is not None and len(connection._writer.writes) == 1
    for i in range(5):
        connection.replies.put_nowait(f"reply-{i}")
    assert await asyncio.wait_for(asyncio.gather(*calls), 10) == [f"reply-{i}" for i in range(5)]
    # Later calls reuse the connection.
    later = asyncio.ensure_future(mux.execute("PING"))
    await _sent(connection, 6)
    connection.replies.put_nowait(b"PONG")
    assert await asyncio.wait_for(later, 10) == b"PONG"
    assert len(pool.connections) == 1
    await mux.close()


async def test_an_error_reply_fails_its_own_call_only(pool: FakePool) -> None:
    mux = _mux(pool)
    calls, connection = await _in_flight(mux, pool, *_evalshas(3))
    connection.replies.put_nowait(1)
    connection.replies.put_nowait(ResponseError("BADLOCK lock:c"))
    connection.replies.put_nowait(3)
    results = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), 10)
    assert results[0] == 1 and results[2] == 3
    assert isinstance(results[1], ResponseError) and "BADLOCK" in str(results[1])
    assert pool.connections[0].disconnected is False  # an error reply is no fault
    await mux.close()


async def test_a_timeout_fails_every_call_in_flight_and_the_next_call_reconnects(
    pool: FakePool,
) -> None:
    mux = _mux(pool, timeout=0.05)
    calls = [asyncio.ensure_future(mux.execute("EVALSHA", i)) for i in range(3)]
    results = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), 10)
    assert all(isinstance(r, TimeoutError) for r in results), results
    assert "no reply within 0.05 s" in str(results[0])
    old = pool.connections[0]
    await eventually(lambda: old.disconnected and old in pool.released, "the old one dropped")
    # The next call connects afresh; a reply the hung connection sends late is
    # never taken for the new call's.
    old.replies.put_nowait("late reply of call 0")
    fresh = asyncio.ensure_future(mux.execute("PING"))
    await eventually(lambda: len(pool.connections) == 2, "a new connection")
    new = pool.connections[1]
    await _sent(new, 1)
    assert new.commands() == ["PING"]
    new.replies.put_nowait(b"PONG")
    assert await asyncio.wait_for(fresh, 10) == b"PONG"
    await mux.close()


async def test_the_reply_of_a_cancelled_call_is_dropped_and_the_next_still_match(
    pool: FakePool,
) -> None:
    mux = _mux(pool)
    calls, connection = await _in_flight(mux, pool, *_evalshas(3))
    calls[1].cancel()  # its caller gave up; its reply still comes, in its place
    for i in range(3):
        connection.replies.put_nowait(f"reply-{i}")
    assert await asyncio.wait_for(calls[0], 10) == "reply-0"
    assert await asyncio.wait_for(calls[2], 10) == "reply-2"
    with pytest.raises(asyncio.CancelledError):
        await calls[1]
    await mux.close()


async def test_a_broken_connection_fails_every_call_in_flight_as_a_connection_error(
    pool: FakePool,
) -> None:
    mux = _mux(pool)
    calls, connection = await _in_flight(mux, pool, *_evalshas(3))
    connection.replies.put_nowait("reply-0")
    connection.replies.put_nowait(OSError("connection reset by peer"))
    results = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), 10)
    assert results[0] == "reply-0"
    assert all(isinstance(r, ConnectionError) for r in results[1:]), results
    assert "connection reset by peer" in str(results[1])
    await eventually(lambda: connection.disconnected, "the broken connection dropped")
    await mux.close()


async def test_a_closed_writer_fails_the_calls_of_that_turn(pool: FakePool) -> None:
    mux = _mux(pool)
    (first,), connection = await _in_flight(mux, pool, ("PING",))
    assert connection._writer is not None
    connection._writer.closing = True
    second = asyncio.ensure_future(mux.execute("PING"))
    with pytest.raises(ConnectionError, match="closed"):
        await asyncio.wait_for(second, 10)
    with pytest.raises(ConnectionError, match="closed"):
        await asyncio.wait_for(first, 10)
    await mux.close()


async def test_close_fails_the_calls_in_flight_and_releases_the_connection(
    pool: FakePool,
) -> None:
    mux = _mux(pool)
    (call,), _ = await _in_flight(mux, pool, ("PING",))
    await mux.close()
    with pytest.raises(ConnectionError, match="store closed"):
        await asyncio.wait_for(call, 10)
    assert pool.connections[0].disconnected
    assert pool.released == [pool.connections[0]]


async def test_concurrent_callers_share_one_connection_attempt(pool: FakePool) -> None:
    mux = _mux(pool)
    calls, connection = await _in_flight(mux, pool, *[("PING",)] * 10)
    for _ in range(10):
        connection.replies.put_nowait(b"PONG")
    await asyncio.wait_for(asyncio.gather(*calls), 10)
    assert len(pool.connections) == 1
    await mux.close()
