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

from harness.server import free_port
from tests.support.conditions import eventually


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

            async def answers() -> bool:
                await client.get_lock("warm-up")
                return True

            await eventually(answers, "the server to listen")

            async def hold_the_lock() -> None:
                async with client.lock("racing", 60):
                    # Until the server has ended the stream and stopped; leaving the
                    # block tells the holder how its session ended.
                    await asyncio.wait_for(asyncio.shield(server), 10)

            holder = asyncio.ensure_future(hold_the_lock())
            await asyncio.wait_for(reached_hold.wait(), 5)
            stop.set()
            with pytest.raises(StoreUnavailableError) as raised:
                await asyncio.wait_for(holder, 15)
            assert raised.value.code == grpc.StatusCode.UNAVAILABLE
            assert "shutting down" in str(raised.value)
    finally:
        stop.set()
        await asyncio.wait_for(server, 10)
