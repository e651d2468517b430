"""A session that acquires just as the server begins to stop is told of the shutdown.

In process, with the real server (``app.serve``) on a real port: the session is
held back between its ``acquired`` message and its registration as a holder until
the shutdown has begun, the window that a SIGTERM can hit by chance.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
from ticketlock import AsyncLockClient, StoreUnavailableError
from ticketlock_server import sessions
from ticketlock_server.app import serve
from ticketlock_server.config import ServerConfig

from tests.support.server import free_port


async def test_a_session_acquiring_as_shutdown_begins_gets_unavailable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    hold = sessions.LockSession._hold
    reached_hold = asyncio.Event()
    shutdown_began = asyncio.Event()
    close = sessions.WakeHub.close

    def close_and_tell(self: Any) -> None:
        close(self)
        shutdown_began.set()

    async def hold_after_shutdown_began(self: Any, pending: Any) -> None:
        reached_hold.set()
        await shutdown_began.wait()
        await hold(self, pending)

    monkeypatch.setattr(sessions.LockSession, "_hold", hold_after_shutdown_began)
    monkeypatch.setattr(sessions.WakeHub, "close", close_and_tell)
    listen = f"127.0.0.1:{free_port()}"
    stop = asyncio.Event()
    server = asyncio.ensure_future(serve(ServerConfig(listen=listen, grace_seconds=3), stop))
    try:
        async with AsyncLockClient(listen, timeout=5) as client:
            for _ in range(100):  # until it listens
                try:
                    await client.get_lock("warm-up")
                    break
                except StoreUnavailableError:
                    await asyncio.sleep(0.05)

            async def hold_the_lock() -> None:
                async with client.lock("racing", 60):
                    # Long enough for the server to end the stream; leaving the block
                    # tells the holder how it ended.
                    await asyncio.sleep(1.0)

            holder = asyncio.ensure_future(hold_the_lock())
            await asyncio.wait_for(reached_hold.wait(), 5)
            stop.set()
            with pytest.raises(StoreUnavailableError) as raised:
                await asyncio.wait_for(holder, 5)
            assert raised.value.code == grpc.StatusCode.UNAVAILABLE
            assert "shutting down" in str(raised.value)
    finally:
        stop.set()
        await asyncio.wait_for(server, 10)
