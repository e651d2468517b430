"""``AsyncLockClient.lock()`` against a scripted ``Lock`` servicer on a real port.

Each ``Lock`` call the client opens is handed to the test, which reads its requests
and answers them (or ends the stream with a status) one message at a time: issue
ordering, the lease, the lost-lock paths and the pool, deterministically.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from ticketlock import AsyncLockClient, LockExpiredError, LockTimeoutError, SessionLostError
from ticketlock.v1 import lock_service_pb2 as pb
from ticketlock.v1 import lock_service_pb2_grpc as pb_grpc

from tests.support.server import free_port

pytestmark = pytest.mark.timeout(30)
WAIT = 10.0
RELEASED = pb.LockResponse(released=pb.Released())


def acquired(number: int, expires: float = 1e10) -> pb.LockResponse:
    return pb.LockResponse(acquired=pb.Acquired(ticket=pb.Ticket(number=number, expires=expires)))


def queued(number: int, now_serving: int) -> pb.LockResponse:
    ticket = pb.Ticket(number=number, expires=1e10)
    return pb.LockResponse(
        queued=pb.Queued(ticket=ticket, now_serving=now_serving, tickets_ahead=1)
    )


class Script:
    """The server side of one Lock call, driven by the test."""

    def __init__(self, context: Any) -> None:
        self.context = context
        self.metadata = tuple(context.invocation_metadata() or ())
        self._status: tuple[grpc.StatusCode, str] | None = None
        self._ended = asyncio.Event()

    async def take(self) -> pb.LockRequest:
        request: pb.LockRequest = await asyncio.wait_for(self.context.read(), WAIT)
        return request

    async def send(self, response: pb.LockResponse) -> None:
        await self.context.write(response)

    def end(self, code: grpc.StatusCode = grpc.StatusCode.OK, details: str = "") -> None:
        self._status = (code, details)
        self._ended.set()

    async def serve(self) -> None:
        await self._ended.wait()
        assert self._status is not None
        code, details = self._status
        if code != grpc.StatusCode.OK:
            await self.context.abort(code, details)


class ScriptedService(pb_grpc.LockServiceServicer):
    def __init__(self) -> None:
        self.calls: asyncio.Queue[Script] = asyncio.Queue()
        self.scripts: list[Script] = []

    async def Lock(self, request_iterator: Any, context: Any) -> None:  # type: ignore[override]
        script = Script(context)
        self.scripts.append(script)
        await self.calls.put(script)
        await script.serve()

    async def next_call(self) -> Script:
        return await asyncio.wait_for(self.calls.get(), WAIT)


@pytest.fixture
async def scripted() -> AsyncIterator[tuple[ScriptedService, AsyncLockClient]]:
    service = ScriptedService()
    server = grpc.aio.server()
    pb_grpc.add_LockServiceServicer_to_server(service, server)
    port = free_port()
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    client = AsyncLockClient(f"127.0.0.1:{port}", timeout=2)
    try:
        yield service, client
    finally:
        for script in service.scripts:
            script.end()
        await client.close()
        await server.stop(None)


def _action(request: pb.LockRequest) -> str:
    return str(request.WhichOneof("action"))


async def test_a_second_lock_is_sent_only_once_the_first_has_its_ticket(
    scripted: tuple[ScriptedService, AsyncLockClient],
) -> None:
    service, client = scripted
    first_in = asyncio.Event()
    leave = asyncio.Event()

    async def first() -> None:
        async with client.lock("c", 30):
            first_in.set()
            await leave.wait()

    async def second() -> int:
        async with client.lock("c", 30) as held:
            return held.fencing_token

    one = asyncio.ensure_future(first())
    two = asyncio.ensure_future(second())  # called right after: no stagger
    script1 = await service.next_call()
    assert ("ticketlock-reuse", "1") in script1.metadata
    assert (await script1.take()).acquire.conversation_id == "c"
    # The second call waits for the first one's ticket: it opens no stream yet.
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(service.calls.get(), 0.3)
    await script1.send(acquired(0))
    await asyncio.wait_for(first_in.wait(), WAIT)
    script2 = await service.next_call()
    assert (await script2.take()).acquire.conversation_id == "c"
    await script2.send(queued(1, 0))
    leave.set()
    assert _action(await script1.take()) == "release"
    await asyncio.wait_for(one, WAIT)  # the exit did not wait for `released`
    await script1.send(RELEASED)
    await script2.send(acquired(1))
    assert await asyncio.wait_for(two, WAIT) == 1


@pytest.mark.parametrize(
    ("code", "error"),
    [
        (grpc.StatusCode.NOT_FOUND, LockExpiredError),
        (grpc.StatusCode.UNAVAILABLE, SessionLostError),
    ],
)
async def test_a_stream_ended_while_held_sets_lost_and_the_exit_raises(
    scripted: tuple[ScriptedService, AsyncLockClient],
    code: grpc.StatusCode,
    error: type[Exception],
) -> None:
    service, client = scripted
    inside = asyncio.Event()
    told = asyncio.Event()

    async def hold() -> None:
        async with client.lock("c", 30) as held:
            inside.set()
            await asyncio.wait_for(held.lost.wait(), WAIT)
            assert isinstance(held.error, error)
            told.set()

    task = asyncio.ensure_future(hold())
    script = await service.next_call()
    await script.take()
    await script.send(acquired(3))
    await asyncio.wait_for(inside.wait(), WAIT)
    script.end(code, "ticket 3 of 'c' is gone")
    await asyncio.wait_for(told.wait(), WAIT)
    with pytest.raises(error):
        await asyncio.wait_for(task, WAIT)


async def test_refresh_and_auto_refresh_over_the_stream(
    scripted: tuple[ScriptedService, AsyncLockClient],
) -> None:
    service, client = scripted
    leave = asyncio.Event()

    async def hold() -> float:
        async with client.lock("c", 0.3, auto_refresh=True) as held:
            await leave.wait()
        # Read after the exit, which lets the refresh in flight finish first.
        return held.ticket.expires

    task = asyncio.ensure_future(hold())
    script = await service.next_call()
    await script.take()
    await script.send(acquired(1, 1.0))
    for expires in (2.0, 3.0):
        request = await script.take()
        assert _action(request) == "refresh" and request.refresh.lifetime_seconds == 0.3
        await script.send(
            pb.LockResponse(refreshed=pb.Refreshed(ticket=pb.Ticket(number=1, expires=expires)))
        )
    leave.set()
    request = await script.take()
    if _action(request) == "refresh":  # one more may have been due
        await script.send(
            pb.LockResponse(refreshed=pb.Refreshed(ticket=pb.Ticket(number=1, expires=4.0)))
        )
        request = await script.take()
    assert _action(request) == "release"
    # Its expiry (4.0 at most) is past: the exit reads the answer to its release.
    await script.send(RELEASED)
    assert await asyncio.wait_for(task, WAIT) >= 3.0


async def test_a_try_lock_gives_its_place_up_and_the_stream_is_reused(
    scripted: tuple[ScriptedService, AsyncLockClient],
) -> None:
    service, client = scripted

    async def try_lock() -> None:
        async with client.lock("c", 30, timeout=0):
            pytest.fail("acquired while queued")

    task = asyncio.ensure_future(try_lock())
    script = await service.next_call()
    await script.take()
    await script.send(queued(4, 3))
    assert _action(await script.take()) == "release"
    with pytest.raises(LockTimeoutError):
        await asyncio.wait_for(task, WAIT)

    async def cycle() -> int:
        async with client.lock("d", 30) as held:
            return held.fencing_token

    after = asyncio.ensure_future(cycle())
    assert (await script.take()).acquire.conversation_id == "d"  # same stream
    await script.send(RELEASED)
    await script.send(acquired(0))
    assert _action(await script.take()) == "release"
    assert await asyncio.wait_for(after, WAIT) == 0
    assert service.calls.empty() and len(service.scripts) == 1
