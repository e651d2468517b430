"""Every RPC of the contract through a real server on a real port, with Rasa's semantics."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from ticketlock import (
    AsyncLockClient,
    InvalidArgumentError,
    LockClient,
    LockTimeoutError,
    Ticket,
    TicketLock,
    TicketNotFoundError,
)
from ticketlock.errors import from_rpc_error
from ticketlock.v1 import lock_service_pb2 as pb
from ticketlock.v1 import lock_service_pb2_grpc as pb_grpc

from tests.support.conditions import eventually
from tests.support.store_servers import STORE_KINDS, StoreServers
from tests.support.streams import next_event, queued_session, queued_wait


@pytest.fixture(params=STORE_KINDS)
def target(request: pytest.FixtureRequest, store_servers: StoreServers) -> str:
    """Every test here runs against a server on each store (and deployment mode)."""
    return store_servers(request.param).target


@pytest.fixture
def first(request: pytest.FixtureRequest) -> int:
    """The number of a conversation's first ticket: 1 on the concurrent store, else 0."""
    kind = request.node.callspec.params["target"]
    return 1 if kind.startswith("concurrent_redis") else 0


def test_get_lock_of_unknown_conversation_is_none(client: LockClient, cid: str) -> None:
    assert client.get_lock(cid) is None


def test_tickets_are_numbered_from_the_first_and_queue_in_order(
    client: LockClient, cid: str, first: int
) -> None:
    one = client.issue(cid, 30)
    two = client.issue(cid, 30)
    assert (one.ticket.number, two.ticket.number) == (first, first + 1)
    assert one.acquired and one.now_serving == first
    assert not two.acquired and two.now_serving == first
    lock = client.get_lock(cid)
    assert lock is not None
    assert [t.number for t in lock.tickets] == [first, first + 1]
    assert lock.now_serving == first and lock.last_issued == first + 1
    assert lock.is_locked(first + 1) and not lock.is_locked(first)
    assert one.ticket.expires == pytest.approx(time.time() + 30, abs=2)


def test_issue_ticket_returns_the_number_and_uses_default_lifetime(
    client: LockClient, cid: str, first: int
) -> None:
    assert client.issue_ticket(cid) == first
    lock = client.get_lock(cid)
    assert lock is not None
    # 0 means the server's default: 60 s unless TICKET_LOCK_LIFETIME says otherwise.
    assert lock.tickets[0].expires == pytest.approx(time.time() + 60, abs=2)


def test_finish_serving_lets_the_next_ticket_in(client: LockClient, cid: str, first: int) -> None:
    client.issue_ticket(cid, 30)
    client.issue_ticket(cid, 30)
    client.finish_serving(cid, first)
    lock = client.get_lock(cid)
    assert lock is not None and lock.now_serving == first + 1
    client.finish_serving(cid, 7)  # finishing a ticket that does not exist is no error
    client.finish_serving(cid, first + 1)
    lock = client.get_lock(cid)
    assert lock is not None and list(lock.tickets) == []  # the lock stays, empty
    assert not client.is_someone_waiting(cid)


def test_cleanup_deletes_the_lock_only_when_nobody_waits(
    client: LockClient, cid: str, first: int
) -> None:
    client.issue_ticket(cid, 30)
    client.issue_ticket(cid, 30)
    assert client.is_someone_waiting(cid)
    assert client.cleanup(cid, first) is False
    assert client.get_lock(cid) is not None
    assert client.cleanup(cid, first + 1) is True
    assert client.get_lock(cid) is None
    assert not client.is_someone_waiting(cid)
    # Numbers are never handed out twice, even after the lock is gone.
    assert client.issue_ticket(cid, 30) == first + 2


def test_save_lock_then_get_lock_returns_it_minus_expired_tickets(
    client: LockClient, cid: str
) -> None:
    now = time.time()
    lock = TicketLock(cid, [Ticket(3, now - 5), Ticket(4, now + 30), Ticket(9, now + 40)])
    client.save_lock(lock)
    stored = client.get_lock(cid)
    assert stored is not None
    assert [(t.number, t.expires) for t in stored.tickets] == [(4, now + 30), (9, now + 40)]
    assert stored.now_serving == 4
    # The next ticket continues after the last one saved.
    assert client.issue_ticket(cid, 30) == 10


def test_save_lock_rejects_tickets_out_of_number_order(client: LockClient, cid: str) -> None:
    """Tickets are saved oldest first, so their numbers ascend; a queue whose numbers
    do not is INVALID_ARGUMENT naming the ticket, and nothing is saved."""
    now = time.time()
    with pytest.raises(InvalidArgumentError, match=r"lock\.tickets\[1\]\.number") as raised:
        client.save_lock(
            TicketLock(cid, [Ticket(9, now + 0.5), Ticket(5, now + 30), Ticket(3, now + 30)])
        )
    assert raised.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "ascending number order" in str(raised.value)
    assert client.get_lock(cid) is None


def test_session_fencing_tokens_increase_even_after_the_lock_is_deleted(
    client: LockClient, cid: str
) -> None:
    """A released session deletes the lock when nobody waits; the next session's
    ticket number, its fencing token, is still higher."""
    with client.lock(cid, 30) as first:
        pass
    assert client.get_lock(cid) is None
    with client.lock(cid, 30) as second:
        pass
    assert second.fencing_token > first.fencing_token


def test_delete_lock_reports_whether_there_was_one(client: LockClient, cid: str) -> None:
    assert client.delete_lock(cid) is False
    client.issue_ticket(cid, 30)
    assert client.delete_lock(cid) is True
    assert client.get_lock(cid) is None


def test_refresh_ticket_moves_expiry_and_unknown_ticket_is_not_found(
    client: LockClient, cid: str
) -> None:
    number = client.issue_ticket(cid, 10)
    refreshed = client.refresh_ticket(cid, number, 120)
    assert refreshed.number == number
    assert refreshed.expires == pytest.approx(time.time() + 120, abs=2)
    with pytest.raises(TicketNotFoundError) as raised:
        client.refresh_ticket(cid, number + 1, 10)
    assert raised.value.code == grpc.StatusCode.NOT_FOUND


def test_expiry_of_a_short_ticket_lets_the_next_waiter_in(client: LockClient, cid: str) -> None:
    client.issue_ticket(cid, 0.2)
    waiter = client.issue_ticket(cid, 30)
    started = time.monotonic()
    lock = client.wait_for_ticket(cid, waiter, timeout=5)
    waited = time.monotonic() - started
    assert lock.now_serving == waiter
    assert [t.number for t in lock.tickets] == [waiter]
    assert waited < 2.0  # woken by the expiry timer, nobody released


def test_wait_for_ticket_streams_position_then_acquired(target: str, cid: str, first: int) -> None:
    with grpc.insecure_channel(target) as channel, LockClient(target) as client:
        stub = pb_grpc.LockServiceStub(channel)
        for _ in range(3):
            client.issue_ticket(cid, 30)
        stream = stub.WaitForTicket(
            pb.WaitForTicketRequest(conversation_id=cid, ticket_number=first + 2), timeout=10
        )
        start = next(stream)
        assert (start.now_serving, start.tickets_ahead, start.acquired) == (first, 2, False)
        client.finish_serving(cid, first)
        second = next(stream)
        assert (second.now_serving, second.tickets_ahead, second.acquired) == (first + 1, 1, False)
        client.finish_serving(cid, first + 1)
        last = next(stream)
        assert last.acquired and last.now_serving == first + 2 and last.tickets_ahead == 0
        assert last.lock.conversation_id == cid
        assert [t.number for t in last.lock.tickets] == [first + 2]
        assert list(stream) == []  # then the stream ends with OK
        assert stream.code() == grpc.StatusCode.OK


def test_wait_for_missing_ticket_is_not_found(client: LockClient, cid: str) -> None:
    with pytest.raises(TicketNotFoundError):
        client.wait_for_ticket(cid, 0, timeout=5)
    client.issue_ticket(cid, 30)
    with pytest.raises(TicketNotFoundError):
        client.wait_for_ticket(cid, 5, timeout=5)


async def test_ticket_finished_while_waiting_ends_the_wait_with_not_found(
    aclient: AsyncLockClient, target: str, cid: str
) -> None:
    await aclient.issue_ticket(cid, 30)
    waiter = await aclient.issue_ticket(cid, 30)
    async with grpc.aio.insecure_channel(target) as channel:
        wait, _ = await queued_wait(channel, cid, waiter)
        await aclient.finish_serving(cid, waiter)
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await wait.read()
    assert isinstance(from_rpc_error(raised.value), TicketNotFoundError)


def test_wait_deadline_is_deadline_exceeded(client: LockClient, cid: str) -> None:
    client.issue_ticket(cid, 30)
    waiter = client.issue_ticket(cid, 30)
    with pytest.raises(LockTimeoutError) as raised:
        client.wait_for_ticket(cid, waiter, timeout=0.3)
    assert raised.value.code == grpc.StatusCode.DEADLINE_EXCEEDED


def test_lock_stream_uncontended_acquires_and_releases(target: str, cid: str) -> None:
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.LockServiceStub(channel)
        requests = [
            pb.LockRequest(acquire=pb.Acquire(conversation_id=cid, lifetime_seconds=30)),
            pb.LockRequest(release=pb.Release()),
        ]
        events = [m.WhichOneof("event") for m in stub.Lock(iter(requests), timeout=10)]
        assert events == ["acquired", "released"]
    with LockClient(target) as client:
        assert client.get_lock(cid) is None  # released and cleaned up


async def test_lock_stream_queues_then_acquires_and_refreshes(
    target: str, cid: str, first: int
) -> None:
    async with AsyncLockClient(target) as client:
        holder = await client.issue(cid, 30)
        async with grpc.aio.insecure_channel(target) as channel:
            stub = pb_grpc.LockServiceStub(channel)
            call = stub.Lock(timeout=10)
            await call.write(pb.LockRequest(acquire=pb.Acquire(conversation_id=cid)))
            queued = await call.read()
            assert queued.WhichOneof("event") == "queued"
            assert (queued.queued.ticket.number, queued.queued.tickets_ahead) == (first + 1, 1)
            assert queued.queued.now_serving == first
            await client.finish_serving(cid, holder.ticket.number)
            acquired = await call.read()
            assert acquired.WhichOneof("event") == "acquired"
            assert acquired.acquired.ticket.number == first + 1
            await call.write(pb.LockRequest(refresh=pb.Refresh(lifetime_seconds=200)))
            refreshed = await call.read()
            assert refreshed.WhichOneof("event") == "refreshed"
            assert refreshed.refreshed.ticket.expires == pytest.approx(time.time() + 200, abs=2)
            await call.write(pb.LockRequest(release=pb.Release()))
            released = await call.read()
            assert released.WhichOneof("event") == "released"
            assert await call.code() == grpc.StatusCode.OK
        assert await client.get_lock(cid) is None


async def test_cancelled_lock_stream_releases_at_once(target: str, cid: str) -> None:
    """Session binding: no release, lifetime 60 s, yet the next waiter is in within 1 s."""
    async with AsyncLockClient(target) as client, grpc.aio.insecure_channel(target) as channel:
        holder = await _holding(channel, cid, 60)
        waiter, _ = await queued_session(channel, cid, 60)
        cancelled_at = time.monotonic()
        holder.cancel()
        assert await asyncio.wait_for(next_event(waiter), 5) == "acquired"
        assert time.monotonic() - cancelled_at < 1.0
        waiter.cancel()
        await eventually(
            lambda: _not(client.is_someone_waiting(cid)), "the cancelled waiter to be released"
        )


async def _holding(channel: grpc.aio.Channel, cid: str, lifetime: float) -> Any:
    """A raw ``Lock`` stream that has acquired ``cid`` (it must be free)."""
    call = pb_grpc.LockServiceStub(channel).Lock()
    await call.write(
        pb.LockRequest(acquire=pb.Acquire(conversation_id=cid, lifetime_seconds=lifetime))
    )
    assert (await call.read()).WhichOneof("event") == "acquired"
    return call


async def _not(value: Awaitable[object]) -> bool:
    return not await value


async def test_half_closed_lock_stream_keeps_the_lock(target: str, cid: str, first: int) -> None:
    async with AsyncLockClient(target) as client, grpc.aio.insecure_channel(target) as channel:
        holder = await _holding(channel, cid, 60)
        await holder.done_writing()
        await asyncio.sleep(0.3)
        lock = await client.get_lock(cid)
        assert lock is not None and lock.now_serving == first and len(lock.tickets) == 1
        holder.cancel()
        await eventually(
            lambda: _not(client.is_someone_waiting(cid)), "the cancelled holder to be released"
        )


async def test_lock_stream_ends_with_not_found_when_its_ticket_expires(
    target: str, cid: str
) -> None:
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.LockServiceStub(channel)
        call = stub.Lock(timeout=10)
        await call.write(
            pb.LockRequest(acquire=pb.Acquire(conversation_id=cid, lifetime_seconds=0.3))
        )
        assert (await call.read()).WhichOneof("event") == "acquired"
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await call.read()
        assert raised.value.code() == grpc.StatusCode.NOT_FOUND


async def test_each_waiter_is_told_of_every_change_of_its_position(
    aclient: AsyncLockClient, target: str, cid: str
) -> None:
    """With up to sixteen waiters on a server, a release sends every waiter its new
    position: the first acquires, each one behind it moves up one place."""
    holder = await aclient.issue(cid, 30)
    numbers = [(await aclient.issue(cid, 30)).ticket.number for _ in range(3)]
    async with grpc.aio.insecure_channel(target) as channel:
        calls, firsts = zip(*[await queued_wait(channel, cid, n) for n in numbers], strict=True)
        assert [m.tickets_ahead for m in firsts] == [1, 2, 3]
        try:
            await aclient.finish_serving(cid, holder.ticket.number)
            updates = await asyncio.wait_for(asyncio.gather(*(c.read() for c in calls)), 10)
        finally:
            for call in calls:
                call.cancel()
    assert [(m.acquired, m.tickets_ahead) for m in updates] == [(True, 0), (False, 1), (False, 2)]
    assert all(m.now_serving == numbers[0] for m in updates)


async def test_twenty_waiters_acquire_in_ticket_order(target: str, cid: str, first: int) -> None:
    async with AsyncLockClient(target) as client:
        holder = await client.issue(cid, 30)
        order: list[int] = []

        async def wait(number: int) -> None:
            await client.wait_for_ticket(cid, number, timeout=20)
            order.append(number)
            await client.cleanup(cid, number)

        numbers = [(await client.issue(cid, 30)).ticket.number for _ in range(20)]
        tasks = [asyncio.ensure_future(wait(n)) for n in reversed(numbers)]
        await asyncio.sleep(0.2)
        await client.cleanup(cid, holder.ticket.number)
        await asyncio.wait_for(asyncio.gather(*tasks), 20)
        assert order == numbers == list(range(first + 1, first + 21))


async def test_twenty_lock_sessions_acquire_in_arrival_order(target: str, cid: str) -> None:
    async with AsyncLockClient(target) as client:
        order: list[int] = []
        inside = 0

        async def session(i: int) -> None:
            nonlocal inside
            async with client.lock(cid, 30) as held:
                inside += 1
                assert inside == 1, "two holders at once"
                order.append(held.ticket.number)
                await asyncio.sleep(0.005)
                inside -= 1

        tasks = []
        for i in range(20):
            tasks.append(asyncio.ensure_future(session(i)))
            await asyncio.sleep(0.01)  # arrival order = ticket order
        await asyncio.wait_for(asyncio.gather(*tasks), 20)
        assert order == sorted(order) and len(order) == 20


async def test_hundred_conversations_do_not_block_each_other(target: str) -> None:
    async with AsyncLockClient(target) as client:
        everyone_in = asyncio.Event()
        holders = 0

        async def hold(i: int) -> None:
            nonlocal holders
            async with client.lock(f"parallel-{i}-{time.time_ns()}", 30):
                holders += 1
                if holders == 100:
                    everyone_in.set()
                # Each waits inside its lock for all others to be inside theirs:
                # only possible when no conversation waits on another.
                await asyncio.wait_for(everyone_in.wait(), 15)

        await asyncio.wait_for(asyncio.gather(*(hold(i) for i in range(100))), 20)
        assert holders == 100


async def test_lock_timeout_gives_up_and_frees_the_place(target: str, cid: str) -> None:
    async with AsyncLockClient(target) as client:
        holder = await client.issue(cid, 30)
        with pytest.raises(LockTimeoutError):
            async with client.lock(cid, 30, timeout=0.3):
                pytest.fail("acquired while another ticket held the lock")

        async def only_the_holder_is_left() -> bool:
            lock = await client.get_lock(cid)
            assert lock is not None
            return [t.number for t in lock.tickets] == [holder.ticket.number]

        await eventually(only_the_holder_is_left, "the timed-out ticket to be removed")


async def test_lock_is_released_on_exception_and_on_cancellation(target: str, cid: str) -> None:
    async with AsyncLockClient(target) as client:
        with pytest.raises(RuntimeError):
            async with client.lock(cid, 60):
                raise RuntimeError("handler failed")
        assert not await client.is_someone_waiting(cid)

        entered = asyncio.Event()

        async def hold_forever() -> None:
            async with client.lock(cid, 60):
                entered.set()
                await asyncio.sleep(3600)

        task = asyncio.ensure_future(hold_forever())
        await asyncio.wait_for(entered.wait(), 5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        async with client.lock(cid, 60, timeout=2) as held:
            assert held.ticket.number >= 0


def test_sync_lock_releases_on_exception_and_waits_by_stream(target: str, cid: str) -> None:
    with LockClient(target) as client:
        with pytest.raises(ValueError), client.lock(cid, 60):
            raise ValueError("boom")
        assert not client.is_someone_waiting(cid)
        holder = client.issue(cid, 60)
        with pytest.raises(LockTimeoutError), client.lock(cid, 60, timeout=0.3):
            pytest.fail("acquired while held")
        client.cleanup(cid, holder.ticket.number)
        with client.lock(cid, 60, timeout=5) as held:
            assert client.get_lock(cid) is not None
            assert held.fencing_token == held.ticket.number
        assert client.get_lock(cid) is None


def test_health_serving_and_reflection_lists_the_service(target: str) -> None:
    with grpc.insecure_channel(target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "ticketlock.v1.LockService"):
            response = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert response.status == health_pb2.HealthCheckResponse.SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = reflection.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
        )
        names = {s.name for r in responses for s in r.list_services_response.service}
        assert "ticketlock.v1.LockService" in names


async def test_a_refresh_from_elsewhere_keeps_a_session_holding(target: str, cid: str) -> None:
    """The session's own idea of its expiry is stale; the store's decides."""
    async with AsyncLockClient(target) as client, grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.LockServiceStub(channel)
        call = stub.Lock(timeout=30)
        await call.write(
            pb.LockRequest(acquire=pb.Acquire(conversation_id=cid, lifetime_seconds=1))
        )
        acquired = await call.read()
        await client.refresh_ticket(cid, acquired.acquired.ticket.number, 20)
        # Past the first expiry by the server's clock (the same machine's), when the
        # session looks at the store again.
        await asyncio.sleep(max(0.0, acquired.acquired.ticket.expires + 0.4 - time.time()))
        assert await client.is_someone_waiting(cid)
        await call.write(pb.LockRequest(release=pb.Release()))
        assert (await call.read()).WhichOneof("event") == "released"
