"""The Multiplexer's bookkeeping, with fake connections whose timing the test decides.

Real Redis cannot be made to close a connection between the moment it is made and
the moment the callers waiting for it resume; a fake connection can, every time.
Each fake reply names the command it answers, so a reply handed to the wrong
caller shows.
"""

from __future__ import annotations

import asyncio
import errno
import os
import uuid
from typing import Any

from redis.asyncio import ConnectionPool
from redis.exceptions import ConnectionError
from ticketlock_server.stores.redis_mux import Multiplexer

from harness.redis_servers import RedisDeployment


class FakeWriter:
    def __init__(self, connection: FakeConnection) -> None:
        self._connection = connection

    def write(self, data: bytes) -> None:
        for line in data.splitlines():
            self._connection.sent.put_nowait(line)

    def is_closing(self) -> bool:
        return self._connection.closed


class FakeConnection:
    """Answers each command with ``b"reply to " + command``, in order, unless it is
    ``closed_at_once``: then its first read fails, as when Redis drops it."""

    def __init__(self, closed_at_once: bool) -> None:
        self.closed_at_once = closed_at_once
        self.closed = False
        self.sent: asyncio.Queue[bytes] = asyncio.Queue()
        self._writer = FakeWriter(self)

    async def connect(self) -> None:
        pass

    def pack_command(self, *args: Any) -> list[bytes]:
        return [" ".join(str(arg) for arg in args).encode() + b"\n"]

    async def read_response(self, timeout: float | None = None) -> bytes:
        if self.closed_at_once:
            self.closed = True
            raise ConnectionError("Connection closed by server.")
        return b"reply to " + await self.sent.get()

    async def disconnect(self, nowait: bool = False) -> None:
        self.closed = True


class FakePool:
    def __init__(self, *closed_at_once: bool) -> None:
        self._next = list(closed_at_once)
        self.made: list[FakeConnection] = []

    async def get_connection(self) -> FakeConnection:
        connection = FakeConnection(self._next.pop(0) if self._next else False)
        self.made.append(connection)
        return connection

    async def release(self, connection: FakeConnection) -> None:
        pass


async def test_a_call_whose_new_connection_is_dropped_at_once_never_takes_another_reply() -> None:
    # The first connection fails on its first read, before its caller resumes;
    # the second works.
    pool = FakePool(True, False)
    mux = Multiplexer(pool, timeout=5)  # type: ignore[arg-type]
    try:
        first = asyncio.ensure_future(mux.execute("ISSUE", "a"))
        for _ in range(100):  # a few event-loop turns: the reader fails on its first
            if pool.made and pool.made[0].closed:
                break
            await asyncio.sleep(0)
        assert pool.made[0].closed
        # The next call connects afresh. It gets its own reply, and the first call,
        # whose command was never sent, fails: it does not get the second's reply.
        second = asyncio.ensure_future(mux.execute("POSITION", "b"))
        results = await asyncio.wait_for(asyncio.gather(first, second, return_exceptions=True), 10)
        assert isinstance(results[0], ConnectionError), results
        assert results[1] == b"reply to POSITION b", results
        assert len(pool.made) == 2
    finally:
        await mux.close()


async def test_concurrent_calls_each_get_their_own_reply() -> None:
    pool = FakePool()
    mux = Multiplexer(pool, timeout=30)  # type: ignore[arg-type]
    try:
        calls = [mux.execute("CALL", n) for n in range(50)]
        replies = await asyncio.wait_for(asyncio.gather(*calls), 10)
        assert replies == [f"reply to CALL {n}".encode() for n in range(50)]
        assert len(pool.made) == 1  # all of them on one connection
    finally:
        await mux.close()


async def test_a_read_failing_with_a_socket_timeout_fails_the_calls(
    redis_standalone: RedisDeployment,
) -> None:
    """redis-py's read_response returns None, as if Redis had answered nil, when the
    read fails with TimeoutError (ETIMEDOUT: a peer gone on a real network). Taken
    for a reply, it reached the call waiting, and the reader went on reading the
    failed stream, which raises at once: a loop that never yields."""
    pool = ConnectionPool(host=redis_standalone.host, port=redis_standalone.port)
    mux = Multiplexer(pool, timeout=30)
    try:
        assert await mux.execute("PING") == b"PONG"
        connection = mux._connection
        assert connection is not None
        waiting = asyncio.ensure_future(mux.execute("BLPOP", f"mux-{uuid.uuid4().hex}", 20))
        for _ in range(100):  # a few event-loop turns: until its command has left
            if mux._pending and not mux._flush_scheduled:
                break
            await asyncio.sleep(0)
        assert mux._pending and not mux._flush_scheduled  # its reply is 20 s away
        # What asyncio's socket transport does when a read fails with ETIMEDOUT.
        transport = connection._writer.transport  # type: ignore[union-attr]
        timed_out = TimeoutError(errno.ETIMEDOUT, os.strerror(errno.ETIMEDOUT))
        transport._fatal_error(timed_out, "Fatal read error on socket transport")  # type: ignore[attr-defined]
        results = await asyncio.wait_for(asyncio.gather(waiting, return_exceptions=True), 10)
        assert isinstance(results[0], ConnectionError), results
        assert mux._connection is None
        # The next call connects afresh.
        assert await asyncio.wait_for(mux.execute("PING"), 10) == b"PONG"
    finally:
        await mux.close()
        await pool.aclose()
