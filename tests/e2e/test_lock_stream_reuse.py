"""``Lock`` streams used for one lock cycle after another, through a real server."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from ticketlock import AsyncLockClient
from ticketlock.v1 import lock_service_pb2 as pb
from ticketlock.v1 import lock_service_pb2_grpc as pb_grpc

from tests.support.server import ServerProcess
from tests.support.store_servers import StoreServers

REUSE = (("ticketlock-reuse", "1"),)
RELEASE = pb.LockRequest(release=pb.Release())


@pytest.fixture(params=["in_memory", "redis", "concurrent_redis"])
def target(request: pytest.FixtureRequest, store_servers: StoreServers) -> str:
    return store_servers(request.param).target


def _acquire(cid: str, lifetime: float = 30) -> pb.LockRequest:
    return pb.LockRequest(acquire=pb.Acquire(conversation_id=cid, lifetime_seconds=lifetime))


async def _event(call: Any) -> str:
    message = await call.read()
    assert message is not grpc.aio.EOF, "the stream ended"
    return str(message.WhichOneof("event"))


async def _reusable(channel: grpc.aio.Channel, timeout: float = 20) -> Any:
    return pb_grpc.LockServiceStub(channel).Lock(timeout=timeout, metadata=REUSE)


async def test_a_reused_stream_serves_cycles_of_several_conversations(target: str) -> None:
    cids = [f"reuse-{uuid.uuid4().hex}" for _ in range(3)]
    async with AsyncLockClient(target) as client, grpc.aio.insecure_channel(target) as channel:
        call = await _reusable(channel)
        numbers: dict[str, list[int]] = {cid: [] for cid in cids}
        for _ in range(3):
            for cid in cids:
                await call.write(_acquire(cid))
                message = await call.read()
                assert message.WhichOneof("event") == "acquired"
                numbers[cid].append(message.acquired.ticket.number)
                lock = await client.get_lock(cid)
                assert lock is not None
                assert [t.number for t in lock.tickets] == [numbers[cid][-1]]
                for other in cids:
                    if other != cid:
                        assert await client.get_lock(other) is None
                await call.write(RELEASE)
                assert await _event(call) == "released"
                assert await client.get_lock(cid) is None
        for cid in cids:
            # Each cycle was a ticket of its own, in the conversation's numbering order.
            assert numbers[cid] == sorted(set(numbers[cid]))
        await call.done_writing()
        assert await call.read() is grpc.aio.EOF
        assert await call.code() == grpc.StatusCode.OK


async def test_a_release_and_the_next_acquire_sent_together_never_overlap(target: str) -> None:
    """The next ticket is issued only after the last one is gone.

    Both are sent before the server answers either; a second ticket of the same
    conversation issued while the first still existed would be queued behind it.
    """
    cid = f"reuse-{uuid.uuid4().hex}"
    async with AsyncLockClient(target) as client, grpc.aio.insecure_channel(target) as channel:
        call = await _reusable(channel)
        await call.write(_acquire(cid))
        assert await _event(call) == "acquired"
        for _ in range(5):
            await call.write(RELEASE)
            await call.write(_acquire(cid))
            assert await _event(call) == "released"
            message = await call.read()
            assert message.WhichOneof("event") == "acquired", message
            lock = await client.get_lock(cid)
            assert lock is not None and len(lock.tickets) == 1
            assert lock.tickets[0].number == message.acquired.ticket.number
        await call.write(RELEASE)
        assert await _event(call) == "released"
        call.cancel()
        assert await client.get_lock(cid) is None


@pytest.mark.parametrize("queued", [False, True], ids=["holding", "queued"])
async def test_an_acquire_while_the_stream_has_a_ticket_is_invalid_and_frees_it(
    target: str, queued: bool
) -> None:
    cid, other = f"reuse-{uuid.uuid4().hex}", f"reuse-{uuid.uuid4().hex}"
    async with AsyncLockClient(target) as client, grpc.aio.insecure_channel(target) as channel:
        holder = await client.issue(cid, 30) if queued else None
        call = await _reusable(channel)
        await call.write(_acquire(cid))
        assert await _event(call) == ("queued" if queued else "acquired")
        await call.write(_acquire(other))
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            while True:
                await _event(call)
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert (raised.value.details() or "").startswith("acquire:"), raised.value.details()
        # The second conversation never got a ticket, and the stream's one is freed.
        assert await client.get_lock(other) is None
        if holder is not None:
            lock = await client.get_lock(cid)
            assert lock is not None
            assert [t.number for t in lock.tickets] == [holder.ticket.number]
            await client.cleanup(cid, holder.ticket.number)
        assert await client.get_lock(cid) is None


@pytest.mark.parametrize("action", ["release", "refresh"])
async def test_after_released_only_acquire_is_accepted(target: str, action: str) -> None:
    cid = f"reuse-{uuid.uuid4().hex}"
    async with grpc.aio.insecure_channel(target) as channel:
        call = await _reusable(channel)
        await call.write(_acquire(cid))
        assert await _event(call) == "acquired"
        await call.write(RELEASE)
        assert await _event(call) == "released"
        if action == "release":
            await call.write(RELEASE)
        else:
            await call.write(pb.LockRequest(refresh=pb.Refresh(lifetime_seconds=5)))
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await call.read()
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert (raised.value.details() or "").startswith("action:"), raised.value.details()


async def test_a_ticket_that_runs_out_on_a_reused_stream_ends_that_stream(target: str) -> None:
    """NOT_FOUND ends the stream, also on its second cycle: it is not reused after."""
    cid = f"reuse-{uuid.uuid4().hex}"
    async with AsyncLockClient(target) as client, grpc.aio.insecure_channel(target) as channel:
        call = await _reusable(channel)
        await call.write(_acquire(cid))
        assert await _event(call) == "acquired"
        await call.write(RELEASE)
        assert await _event(call) == "released"
        await call.write(_acquire(cid, lifetime=0.3))
        assert await _event(call) == "acquired"
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await call.read()
        assert raised.value.code() == grpc.StatusCode.NOT_FOUND
        assert await call.code() == grpc.StatusCode.NOT_FOUND
        # The expired ticket is gone: another stream takes the conversation at once.
        async with client.lock(cid, 30, timeout=10):
            lock = await client.get_lock(cid)
            assert lock is not None and len(lock.tickets) == 1


async def test_a_cancelled_reused_stream_frees_its_current_ticket(target: str) -> None:
    cid, second = f"reuse-{uuid.uuid4().hex}", f"reuse-{uuid.uuid4().hex}"
    async with AsyncLockClient(target) as client, grpc.aio.insecure_channel(target) as channel:
        call = await _reusable(channel)
        await call.write(_acquire(cid))
        assert await _event(call) == "acquired"
        await call.write(RELEASE)
        assert await _event(call) == "released"
        await call.write(_acquire(second, lifetime=60))
        assert await _event(call) == "acquired"
        call.cancel()
        await _until(lambda: _gone(client, second), within=5)
        assert await client.get_lock(cid) is None


async def test_a_reusable_stream_stays_open_after_released(target: str) -> None:
    """Unlike a stream without the metadata, which ends with OK after ``released``."""
    cid = f"reuse-{uuid.uuid4().hex}"
    async with grpc.aio.insecure_channel(target) as channel:
        call = await _reusable(channel)
        await call.write(_acquire(cid))
        assert await _event(call) == "acquired"
        await call.write(RELEASE)
        assert await _event(call) == "released"
        ended = asyncio.ensure_future(call.read())
        done, _ = await asyncio.wait({ended}, timeout=0.3)
        assert not done
        # Still usable: the pending read gets the next cycle's answer.
        await call.write(_acquire(cid))
        assert (await ended).WhichOneof("event") == "acquired"
        call.cancel()

        plain = pb_grpc.LockServiceStub(channel).Lock(timeout=10)
        await plain.write(_acquire(cid))
        assert await _event(plain) == "acquired"
        await plain.write(RELEASE)
        assert await _event(plain) == "released"
        assert await plain.code() == grpc.StatusCode.OK


async def _gone(client: AsyncLockClient, cid: str) -> bool:
    return await client.get_lock(cid) is None


async def _until(condition: Any, within: float) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not await condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


@pytest.fixture(scope="module")
def idle_server() -> Iterator[ServerProcess]:
    with ServerProcess(["--idle-stream-timeout", "0.5", "--log-level", "warning"]) as process:
        yield process


async def test_an_idle_stream_without_a_ticket_is_ended_with_ok(idle_server: ServerProcess) -> None:
    cid = f"reuse-{uuid.uuid4().hex}"
    async with grpc.aio.insecure_channel(idle_server.target) as channel:
        never_used = await _reusable(channel)
        after_cycle = await _reusable(channel)
        await after_cycle.write(_acquire(cid))
        assert await _event(after_cycle) == "acquired"
        await after_cycle.write(RELEASE)
        assert await _event(after_cycle) == "released"
        for call in (never_used, after_cycle):
            assert await asyncio.wait_for(call.read(), 10) is grpc.aio.EOF
            assert await call.code() == grpc.StatusCode.OK


async def test_a_stream_that_holds_or_waits_is_never_idle(idle_server: ServerProcess) -> None:
    cid = f"reuse-{uuid.uuid4().hex}"
    async with grpc.aio.insecure_channel(idle_server.target) as channel:
        holder, waiter = await _reusable(channel), await _reusable(channel)
        await holder.write(_acquire(cid))
        assert await _event(holder) == "acquired"
        await waiter.write(_acquire(cid))
        assert await _event(waiter) == "queued"
        waiting = asyncio.ensure_future(waiter.read())
        await asyncio.sleep(1.5)  # three idle timeouts
        assert not waiting.done()
        await holder.write(RELEASE)
        assert await _event(holder) == "released"
        assert (await waiting).WhichOneof("event") == "acquired"
        await waiter.write(RELEASE)
        assert await _event(waiter) == "released"
        for call in (holder, waiter):
            assert await asyncio.wait_for(call.read(), 10) is grpc.aio.EOF
            assert await call.code() == grpc.StatusCode.OK


async def test_shutdown_ends_an_idle_reusable_stream_with_ok() -> None:
    with ServerProcess(["--log-level", "warning"]) as server:
        cid = f"reuse-{uuid.uuid4().hex}"
        async with grpc.aio.insecure_channel(server.target) as channel:
            call = await _reusable(channel, timeout=30)
            await call.write(_acquire(cid))
            assert await _event(call) == "acquired"
            await call.write(RELEASE)
            assert await _event(call) == "released"
            ended = asyncio.ensure_future(call.read())
            stopping = asyncio.get_running_loop().run_in_executor(None, server.stop)
            assert await asyncio.wait_for(ended, 10) is grpc.aio.EOF
            assert await call.code() == grpc.StatusCode.OK
            assert await stopping == 0
