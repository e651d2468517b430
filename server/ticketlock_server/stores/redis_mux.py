"""Every script call of a store on one connection, replies matched in order.

redis-py's client checks a connection out of its pool for each command, and
sends it under a timeout that costs an extra task: about four times the CPU of
the command itself, which at 64 concurrent lock cycles made the store, not gRPC,
the bottleneck. Here concurrent calls share one connection (Redis answers in
order, so the n-th reply is the n-th call's): each costs a future, and the calls
made in one event-loop turn leave in one write.

A call that gets no reply within ``socket_timeout`` fails, and the connection is
dropped with it (Redis hung, or the network is gone): every call in flight fails
as UNAVAILABLE, and the next one connects afresh, through the client's own pool,
so Sentinel's master lookup, TLS and credentials apply as they do to redis-py.
Cluster clients keep redis-py's own routing and do not use this.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
from typing import Any

from redis.asyncio.connection import AbstractConnection, ConnectionPool
from redis.exceptions import ConnectionError, ResponseError, TimeoutError

log = logging.getLogger(__name__)


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


def _broken(connection: AbstractConnection) -> bool:
    """Whether the connection's stream has failed (its transport is closing)."""
    reader, writer = connection._reader, connection._writer
    return reader is None or writer is None or writer.is_closing() or reader.exception() is not None


class Multiplexer:
    """Pipelines commands of many callers over one connection from ``pool``."""

    def __init__(self, pool: ConnectionPool, timeout: float) -> None:
        self._pool = pool
        self._timeout = timeout
        self._connection: AbstractConnection | None = None
        self._reader: asyncio.Task[None] | None = None
        self._pending: collections.deque[asyncio.Future[Any]] = collections.deque()
        self._connecting: asyncio.Future[AbstractConnection] | None = None
        self._discarding: asyncio.Future[None] | None = None
        # Commands packed this event-loop turn, written together by _flush.
        self._outgoing: list[bytes] = []
        self._flush_scheduled = False

    async def execute(self, *args: Any) -> Any:
        """Send one command and return its reply (raises as redis-py would)."""
        connection = self._connection
        if connection is None:
            await self._connect()
            # The connection this call waited for may be gone already (Redis closed it
            # as soon as it was made, and its reader reset it). Queued on it, the call
            # would sit in _pending with no command sent, and take the reply of the
            # next connection's first call: use only the current connection.
            connection = self._connection
            if connection is None:
                raise ConnectionError("connection to Redis closed")
        loop = asyncio.get_running_loop()
        reply: asyncio.Future[Any] = loop.create_future()
        # No await between queueing the future and the command: replies stay in order.
        self._pending.append(reply)
        self._outgoing += connection.pack_command(*args)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        timer = loop.call_later(self._timeout, self._expire, connection, reply)
        try:
            return await reply
        finally:
            timer.cancel()

    def _flush(self) -> None:
        """Write the commands of this event-loop turn in one system call."""
        self._flush_scheduled = False
        outgoing, self._outgoing = self._outgoing, []
        connection = self._connection
        if connection is None or not outgoing:
            return  # reset meanwhile: their callers have failed already
        writer = connection._writer  # redis-py's own stream; its send path adds a task
        if writer is None or writer.is_closing():
            self._reset(connection, ConnectionError("connection to Redis closed"))
        else:
            writer.write(b"".join(outgoing))

    async def _connect(self) -> AbstractConnection:
        # One attempt at a time, shared by every caller that needs it: with a hung
        # Redis, each waits one socket_timeout, not one per caller ahead of it.
        if self._connecting is None or self._connecting.done():
            self._connecting = asyncio.ensure_future(self._open())
            # Its callers may all be gone (cancelled at shutdown) when it fails.
            self._connecting.add_done_callback(_retrieve)
        return await asyncio.shield(self._connecting)

    async def _open(self) -> AbstractConnection:
        connection: AbstractConnection = await self._pool.get_connection()  # type: ignore[no-untyped-call]
        try:
            await connection.connect()  # type: ignore[no-untyped-call]
        except BaseException:
            await self._pool.release(connection)
            raise
        self._connection = connection
        self._reader = asyncio.create_task(self._read(connection))
        return connection

    async def _read(self, connection: AbstractConnection) -> None:
        while True:
            try:
                response = await connection.read_response(timeout=math.inf)
            except ResponseError as error:
                response = error
            except asyncio.CancelledError:
                raise
            except Exception as error:
                self._reset(connection, error)
                return
            if response is None and _broken(connection):
                # redis-py answers None, not an error, when a read under
                # timeout=math.inf fails with TimeoutError (the socket's ETIMEDOUT):
                # no reply was read, and the connection is dead.
                self._reset(connection, ConnectionError("connection to Redis timed out"))
                return
            if not self._pending:
                continue  # a reply to a call that was already failed and dropped
            reply = self._pending.popleft()
            if reply.done():
                continue  # its caller timed out
            if isinstance(response, ResponseError):
                reply.set_exception(response)
            else:
                reply.set_result(response)

    def _expire(self, connection: AbstractConnection, reply: asyncio.Future[Any]) -> None:
        if not reply.done():
            self._reset(connection, TimeoutError(f"no reply within {self._timeout} s"))

    def _reset(self, connection: AbstractConnection, error: Exception) -> None:
        """Fail every call in flight on ``connection`` and let the next one reconnect."""
        if self._connection is not connection:
            return
        self._connection = None
        if not isinstance(error, (ConnectionError, TimeoutError)):
            error = ConnectionError(str(error) or type(error).__name__)
        pending, self._pending = self._pending, collections.deque()
        self._outgoing = []
        for reply in pending:
            if not reply.done():
                reply.set_exception(error)
        reader, self._reader = self._reader, None
        if reader is not None and reader is not asyncio.current_task():
            reader.cancel()
        self._discarding = asyncio.ensure_future(self._discard(connection))

    async def _discard(self, connection: AbstractConnection) -> None:
        with contextlib.suppress(Exception):
            await connection.disconnect(nowait=True)
        with contextlib.suppress(Exception):
            await self._pool.release(connection)

    async def close(self) -> None:
        connection = self._connection
        if connection is not None:
            self._reset(connection, ConnectionError("store closed"))
        if self._discarding is not None:
            await self._discarding
