"""Review findings, end to end: each test fails on the current code and passes once
the defect it names is fixed. Every test is bounded (a few seconds at most).
"""

from __future__ import annotations

import asyncio
import threading
import time
import types
from collections.abc import Callable
from typing import Any

import grpc
import pytest
import ticketlock.client as client_module
from ticketlock import (
    AsyncLockClient,
    InvalidArgumentError,
    LockClient,
    LockTimeoutError,
    Ticket,
    TicketLock,
    TicketNotFoundError,
)
from ticketlock.v1 import lock_service_pb2 as pb
from ticketlock.v1 import lock_service_pb2_grpc as pb_grpc

pytestmark = pytest.mark.timeout(20)

_RELEASE = pb.LockRequest(release=pb.Release())


def _acquire(cid: str, lifetime: float) -> pb.LockRequest:
    return pb.LockRequest(acquire=pb.Acquire(conversation_id=cid, lifetime_seconds=lifetime))


async def _open(stub: pb_grpc.LockServiceStub, cid: str, lifetime: float) -> tuple[Any, Any]:
    """A Lock stream that has sent ``acquire``, and the first answer."""
    call = stub.Lock(timeout=15)
    await call.write(_acquire(cid, lifetime))
    return call, await call.read()


async def _until(call: Any, event: str) -> Any:
    while True:
        message = await call.read()
        assert message is not grpc.aio.EOF, f"stream ended before {event}"
        if message.WhichOneof("event") == event:
            return message


async def _next_decisive(call: Any) -> str:
    """'acquired', 'released', 'EOF' or the status code that ended the stream."""
    try:
        while True:
            message = await call.read()
            if message is grpc.aio.EOF:
                return "EOF"
            event = message.WhichOneof("event")
            if event in ("acquired", "released"):
                return event
    except grpc.aio.AioRpcError as error:
        return error.code().name


async def _outcome(call: Any, within: float) -> tuple[str, asyncio.Task[str]]:
    """What the stream does next within ``within`` s: 'open' if nothing decisive.

    Never cancels a pending read (that would cancel the call itself); the task is
    returned so that the caller can await it after cancelling the call.
    """
    task = asyncio.ensure_future(_next_decisive(call))
    done, _ = await asyncio.wait({task}, timeout=within)
    return (task.result() if done else "open"), task


async def _close(calls: list[Any], tasks: list[asyncio.Task[str]]) -> None:
    for call in calls:
        call.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


# -- 1. ticket identity is the number alone, and numbers are reused -------------------


async def test_an_expired_queued_ticket_number_is_never_held_by_two_sessions(
    target: str, cid: str
) -> None:
    """A queued ticket runs out behind another waiter; its number is issued again.

    The session that owned it is not told (it is not the first local waiter, so
    it sleeps without a timer), and both sessions then take the same number as
    their own: when its turn comes, both are sent ``acquired``.
    """
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.LockServiceStub(channel)
        holder, first = await _open(stub, cid, 30)
        middle, _ = await _open(stub, cid, 30)
        short, short_queued = await _open(stub, cid, 0.5)
        calls = [holder, middle, short]
        tasks: list[asyncio.Task[str]] = []
        try:
            assert first.WhichOneof("event") == "acquired"
            await asyncio.sleep(0.8)  # `short` ran out while queued
            late, late_queued = await _open(stub, cid, 30)
            calls.append(late)
            await holder.write(_RELEASE)
            await _until(holder, "released")
            await _until(middle, "acquired")
            await middle.write(_RELEASE)
            await _until(middle, "released")
            (short_outcome, t1), (late_outcome, t2) = await asyncio.gather(
                _outcome(short, 2.0), _outcome(late, 2.0)
            )
            tasks += [t1, t2]
            assert [short_outcome, late_outcome].count("acquired") <= 1, (
                "two Lock sessions hold the conversation at once: the one whose ticket "
                f"{short_queued.queued.ticket.number} ran out while queued ({short_outcome}) "
                f"and the one issued ticket {late_queued.queued.ticket.number} after it "
                f"({late_outcome})"
            )
        finally:
            await _close(calls, tasks)


async def test_queued_session_is_told_at_once_when_its_ticket_runs_out_behind_another_waiter(
    target: str, cid: str
) -> None:
    """Only the first local waiter sleeps with a timer: those behind it never see
    their own expiry, and stay queued (NOT_FOUND only when they reach the front)."""
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.LockServiceStub(channel)
        holder, _ = await _open(stub, cid, 30)
        middle, _ = await _open(stub, cid, 30)
        short, _ = await _open(stub, cid, 0.5)
        outcome, task = await _outcome(short, 2.0)
        await _close([holder, middle, short], [task])
        assert outcome == "NOT_FOUND", (
            f"a Lock session whose ticket ran out 1.5 s ago is still {outcome!r}"
        )


async def test_stale_cleanup_of_an_expired_ticket_does_not_free_a_sessions_lock(
    aclient: AsyncLockClient, target: str, cid: str
) -> None:
    """The SPEC's own unary pattern (issue, work, cleanup) whose work outlived its
    ticket: the late cleanup hits the session that was issued the same number."""
    unary = await aclient.issue(cid, 0.3)
    await asyncio.sleep(0.5)  # the unary client's work outlived its ticket
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.LockServiceStub(channel)
        first, first_answer = await _open(stub, cid, 30)
        calls = [first]
        try:
            assert first_answer.WhichOneof("event") == "acquired"
            await aclient.cleanup(cid, unary.ticket.number)  # the unary client's late clean-up
            second, second_answer = await _open(stub, cid, 30)
            calls.append(second)
            assert second_answer.WhichOneof("event") == "queued", (
                "a second Lock session acquired while the first still holds: the stale "
                f"cleanup of expired ticket {unary.ticket.number} removed the session's "
                f"ticket {first_answer.acquired.ticket.number}"
            )
        finally:
            await _close(calls, [])


async def test_holder_whose_ticket_was_finished_elsewhere_is_told_and_spares_the_next_holder(
    aclient: AsyncLockClient, target: str, cid: str
) -> None:
    """A holder's ticket is finished by another client (an operator, a Rasa-style
    client finishing by number). The session checks ownership by number only: it
    is never told while a re-issued ticket of that number lives, and its release
    then removes the new holder's ticket."""
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.LockServiceStub(channel)
        first, first_answer = await _open(stub, cid, 1.0)
        calls = [first]
        tasks: list[asyncio.Task[str]] = []
        try:
            assert first_answer.WhichOneof("event") == "acquired"
            await aclient.finish_serving(cid, first_answer.acquired.ticket.number)
            second, second_answer = await _open(stub, cid, 30)
            calls.append(second)
            assert second_answer.WhichOneof("event") == "acquired"
            # `first`'s ticket is gone and its lifetime (1 s) is over by now.
            first_outcome, task = await _outcome(first, 2.5)
            tasks.append(task)
            if first_outcome == "open":
                await first.write(_RELEASE)
                await task
            lock = await aclient.get_lock(cid)
            numbers = [] if lock is None else [t.number for t in lock.tickets]
            assert first_outcome == "NOT_FOUND" and numbers == [
                second_answer.acquired.ticket.number
            ], (
                f"first holder's stream: {first_outcome!r} (expected NOT_FOUND); tickets "
                f"after it ended: {numbers} (expected the second holder's "
                f"{second_answer.acquired.ticket.number})"
            )
        finally:
            await _close(calls, tasks)


def test_lock_session_ticket_numbers_are_monotonic_per_conversation(
    client: LockClient, cid: str
) -> None:
    """SPEC §3: 'The ticket number is monotonic per conversation and can be used as a
    fencing token.' A release deletes the lock, so the next session is 0 again."""
    with client.lock(cid, 30) as first:
        pass
    with client.lock(cid, 30) as second:
        pass
    assert second.fencing_token > first.fencing_token


# -- 2. the client's lock() -----------------------------------------------------------


async def test_async_lock_exit_after_the_server_ended_the_hold_raises_a_lock_error(
    aclient: AsyncLockClient, cid: str
) -> None:
    """The ticket ran out while held: the server ended the stream with NOT_FOUND.
    On exit, ``call.write(release)`` raises asyncio.InvalidStateError (not an
    RpcError), so the caller gets 'RPC already finished.' instead of
    TicketNotFoundError (the sync client does raise TicketNotFoundError)."""
    with pytest.raises(TicketNotFoundError):
        async with aclient.lock(cid, 0.3):
            await asyncio.sleep(1.0)


class _TimerFiringAtCancel:
    """threading.Timer stand-in: the timeout expires just after the lock was
    acquired, before ``timer.cancel()`` runs (the real race, made deterministic)."""

    def __init__(self, interval: float, function: Callable[[], None]) -> None:
        self.function = function
        self.daemon = False

    def start(self) -> None:
        pass

    def cancel(self) -> None:
        self.function()


def test_sync_lock_whose_timeout_fires_just_after_acquire_does_not_enter_the_block(
    target: str, cid: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_threading = types.SimpleNamespace(Timer=_TimerFiringAtCancel, Event=threading.Event)
    monkeypatch.setattr(client_module, "threading", fake_threading)
    with LockClient(target) as client, LockClient(target) as observer:
        try:
            with client.lock(cid, 30, timeout=5) as held:
                time.sleep(0.3)
                lock = observer.get_lock(cid)
                assert lock is not None and lock.now_serving == held.ticket.number, (
                    "inside lock() but the call was cancelled by the timer and the "
                    f"server freed ticket {held.ticket.number}: lock is now {lock}"
                )
        except LockTimeoutError:
            pass  # reporting the timeout that won the race is a correct outcome


# -- 3. waiting: position updates and wake-ups -----------------------------------------


async def test_every_waiter_is_told_when_its_position_changes(
    aclient: AsyncLockClient, target: str, cid: str
) -> None:
    """SPEC §3 WaitForTicket: 'one more [message] whenever the position changes'.
    Only places 0, 1, 3, 7, ... of the room are woken, so the third waiter keeps
    tickets_ahead = 3 after the holder leaves. (Deliberate in the proto comment;
    either the SPEC or the code must change.)"""
    holder = await aclient.issue(cid, 30)
    numbers = [(await aclient.issue(cid, 30)).ticket.number for _ in range(3)]
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.LockServiceStub(channel)
        calls = [
            stub.WaitForTicket(
                pb.WaitForTicketRequest(conversation_id=cid, ticket_number=n), timeout=10
            )
            for n in numbers
        ]
        firsts = [await call.read() for call in calls]
        assert [m.tickets_ahead for m in firsts] == [1, 2, 3]
        await aclient.finish_serving(cid, holder.ticket.number)
        third = asyncio.ensure_future(calls[2].read())
        done, _ = await asyncio.wait({third}, timeout=1.5)
        for call in calls:
            call.cancel()
        await asyncio.gather(third, return_exceptions=True)
        assert done and third.result().tickets_ahead == 2, (
            "the third waiter got no update after the holder left (tickets_ahead 3 -> 2)"
        )


async def test_saved_queue_out_of_number_order_does_not_strand_its_holder(
    aclient: AsyncLockClient, cid: str
) -> None:
    """SaveLock accepts tickets in any number order, but rooms are sorted by
    number. Here ticket 5 holds once 9 expires, yet its waiter sits at place 1 of
    the room with no timer, and the first waiter (3) only wakes for 5's expiry."""
    now = time.time()
    try:
        await aclient.save_lock(
            TicketLock(cid, [Ticket(9, now + 0.5), Ticket(5, now + 30), Ticket(3, now + 30)])
        )
    except InvalidArgumentError:
        return  # rejecting a queue whose numbers are not ascending is a fix as well
    behind = asyncio.ensure_future(aclient.wait_for_ticket(cid, 3, timeout=10))
    await asyncio.sleep(0.1)  # ticket 3's waiter is in the room first
    try:
        started = time.monotonic()
        lock = await aclient.wait_for_ticket(cid, 5, timeout=3)
        assert lock.now_serving == 5 and time.monotonic() - started < 2
    except LockTimeoutError:
        pytest.fail("ticket 5 held the lock from 0.5 s on, but its WaitForTicket never said so")
    finally:
        behind.cancel()
        await asyncio.gather(behind, return_exceptions=True)
