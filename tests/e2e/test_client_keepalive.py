"""Client keepalive: a holder whose connection goes silent (no FIN, no RST) learns it
through the lost-lock signal, and no ``lock()`` entry or exit hangs longer than its
deadline plus the keepalive timeout.

A ``SilentProxy`` between client and server stops forwarding and keeps both sockets
open. The server runs with its default keepalive (10 s + 10 s), so what ends the
session here is the client's own ping (5 s, the minimum, and 1 s to answer).
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Iterator

import pytest
from ticketlock import (
    AsyncLockClient,
    LockClient,
    LockTimeoutError,
    SessionLostError,
    StoreUnavailableError,
)

from tests.support.server import ServerProcess
from tests.support.silent_proxy import SilentProxy

pytestmark = pytest.mark.timeout(90)
KEEPALIVE_TIME = 5.0
KEEPALIVE_TIMEOUT = 1.0
# A ping is due at most KEEPALIVE_TIME after the silence begins, and fails
# KEEPALIVE_TIMEOUT later; the rest is slack for a loaded machine.
DETECTED_WITHIN = KEEPALIVE_TIME + KEEPALIVE_TIMEOUT + 4
KEEPALIVE = {"keepalive_time": KEEPALIVE_TIME, "keepalive_timeout": KEEPALIVE_TIMEOUT}


@pytest.fixture(scope="module")
def own_server() -> Iterator[ServerProcess]:
    with ServerProcess(["--log-level", "warning"]) as process:
        yield process


@pytest.fixture
def proxy(own_server: ServerProcess) -> Iterator[SilentProxy]:
    with SilentProxy.to(own_server.target) as running:
        yield running


def _cid() -> str:
    return f"keepalive-{uuid.uuid4().hex}"


@pytest.mark.parametrize("argument", ["keepalive_time", "keepalive_timeout"])
def test_keepalive_below_the_minimum_is_refused(argument: str) -> None:
    value = 4.9 if argument == "keepalive_time" else 0
    for client_class in (LockClient, AsyncLockClient):
        with pytest.raises(ValueError, match=argument):
            client_class("127.0.0.1:1", **{argument: value})  # type: ignore[arg-type]


def test_sync_holder_on_a_silent_connection_is_told_and_its_exit_raises(
    proxy: SilentProxy,
) -> None:
    with LockClient(proxy.target, timeout=2, **KEEPALIVE) as client:
        with pytest.raises(SessionLostError) as raised, client.lock(_cid(), 60) as held:
            proxy.silence()
            silenced = time.monotonic()
            assert held.lost.wait(DETECTED_WITHIN), "the silent session was not detected"
            assert time.monotonic() - silenced < DETECTED_WITHIN
            left = time.monotonic()
        assert time.monotonic() - left < 2
        assert isinstance(raised.value, StoreUnavailableError)
        proxy.resume()


async def test_async_holder_on_a_silent_connection_is_told_and_its_exit_raises(
    proxy: SilentProxy,
) -> None:
    async with AsyncLockClient(proxy.target, timeout=2, **KEEPALIVE) as client:
        with pytest.raises(SessionLostError):
            async with client.lock(_cid(), 60) as held:
                proxy.silence()
                await asyncio.wait_for(held.lost.wait(), DETECTED_WITHIN)
                left = time.monotonic()
        assert time.monotonic() - left < 2
        proxy.resume()


def test_sync_exit_and_entry_on_a_silent_connection_are_bounded(proxy: SilentProxy) -> None:
    client = LockClient(proxy.target, timeout=2, **KEEPALIVE)
    try:
        with client.lock(_cid(), 60):
            proxy.silence()
            left = time.monotonic()
        # The exit sends release and does not wait for the answer.
        assert time.monotonic() - left < 2
        entered = time.monotonic()
        with (
            pytest.raises((LockTimeoutError, StoreUnavailableError)),
            client.lock(_cid(), 60, timeout=2),
        ):
            pytest.fail("acquired over a silent connection")
        assert time.monotonic() - entered < 2 + KEEPALIVE_TIMEOUT + 3
    finally:
        closing = threading.Thread(target=client.close)
        closing.start()
        closing.join(2 + KEEPALIVE_TIMEOUT + 5)
        assert not closing.is_alive(), "close() hung on a silent connection"
        proxy.resume()


async def test_async_exit_and_entry_on_a_silent_connection_are_bounded(
    proxy: SilentProxy,
) -> None:
    client = AsyncLockClient(proxy.target, timeout=2, **KEEPALIVE)
    try:
        async with client.lock(_cid(), 60):
            proxy.silence()
            left = time.monotonic()
        assert time.monotonic() - left < 2
        entered = time.monotonic()
        with pytest.raises((LockTimeoutError, StoreUnavailableError)):
            async with client.lock(_cid(), 60, timeout=2):
                pytest.fail("acquired over a silent connection")
        assert time.monotonic() - entered < 2 + KEEPALIVE_TIMEOUT + 3
    finally:
        await asyncio.wait_for(client.close(), 2 + KEEPALIVE_TIMEOUT + 5)
        proxy.resume()
