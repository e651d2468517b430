"""``Lock`` sessions end to end: a session holds a ticket that no one else can be
given, learns when that ticket is gone, and never frees someone else's.

Through a real server on a real port (the in-memory one of the test session);
every wait is bounded, and a test acts on a queued session only once the server
has said it is queued.
"""

from __future__ import annotations

import asyncio
import threading
import time
import types
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
import ticketlock.client as client_module
from ticketlock import AsyncLockClient, LockClient, LockTimeoutError, TicketNotFoundError
from ticketlock.v1 import lock_service_pb2 as pb
from ticketlock.v1 import lock_service_pb2_grpc as pb_grpc

from harness.server import ServerProcess, free_port
from tests.support.conditions import eventually
from tests.support.streams import next_event

pytestmark = pytest.mark.timeout(60)

_RELEASE = pb.LockRequest(release=pb.Release())


def _acquire(cid: str, lifetime: float) -> pb.LockRequest:
    return pb.LockRequest(acquire=pb.Acquire(conversation_id=cid, lifetime_seconds=lifetime))


async def _open(stub: pb_grpc.LockServiceStub, cid: str, lifetime: float) -> tuple[Any, Any]:
    """A Lock stream that has sent ``acquire``, and the first answer."""
    call = stub.Lock(timeout=30)
    await call.write(_acquire(cid, lifetime))
    return call, await call.read()


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


async def _ticket_gone(client: AsyncLockClient, cid: str, number: int) -> bool:
    lock = await client.get_lock(cid)
    return lock is None or number not in [t.number for t in lock.tickets]


async def test_a_ticket_that_expires_while_queued_is_never_held_by_two_sessions(
    aclient: AsyncLockClient, target: str, cid: str
) -> None:
    """A queued ticket that runs out behind another waiter ends its session with
    NOT_FOUND, and its number is never issued again: when the queue moves on, the
    session that came after it acquires, alone."""
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.LockServiceStub(channel)
        holder, first = await _open(stub, cid, 30)
        middle, _ = await _open(stub, cid, 30)
        short, short_queued = await _open(stub, cid, 0.5)
        calls = [holder, middle, short]
        try:
            assert first.WhichOneof("event") == "acquired"
            assert short_queued.WhichOneof("event") == "queued"
            short_number = short_queued.queued.ticket.number
            await eventually(
                lambda: _ticket_gone(aclient, cid, short_number),
                "the short ticket to run out while queued",
            )
            late, late_queued = await _open(stub, cid, 30)
            calls.append(late)
            assert late_queued.WhichOneof("event") == "queued"
            assert late_queued.queued.ticket.number > short_number
            await holder.write(_RELEASE)
            assert await next_event(holder) == "released"
            assert await asyncio.wait_for(next_event(middle), 10) == "acquired"
            await middle.write(_RELEASE)
            assert await next_event(middle) == "released"
            short_outcome, late_outcome = await asyncio.wait_for(
                asyncio.gather(_next_decisive(short), _next_decisive(late)), 10
            )
            assert (short_outcome, late_outcome) == ("NOT_FOUND", "acquired"), (
                f"the session whose ticket {short_number} ran out while queued: "
                f"{short_outcome}; the one issued ticket {late_queued.queued.ticket.number} "
                f"after it: {late_outcome}"
            )
        finally:
            await _close(calls, [])


async def test_a_queued_session_is_told_at_once_when_its_ticket_runs_out_behind_another_waiter(
    target: str, cid: str
) -> None:
    """Every waiter sleeps with a timer at its own expiry, not only the first one:
    a session queued behind another waiter ends with NOT_FOUND as soon as its
    ticket runs out, not when it reaches the front."""
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


async def test_a_late_cleanup_of_an_expired_ticket_never_frees_a_sessions_lock(
    aclient: AsyncLockClient, target: str, cid: str
) -> None:
    """The unary pattern (issue, work, cleanup) whose work outlived its ticket: the
    late cleanup names a number that is never issued again, so it cannot remove the
    ticket of the session that holds the lock now."""
    unary = await aclient.issue(cid, 0.3)
    await eventually(
        lambda: _ticket_gone(aclient, cid, unary.ticket.number),
        "the unary client's ticket to run out",
    )
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.LockServiceStub(channel)
        first, first_answer = await _open(stub, cid, 30)
        calls = [first]
        try:
            assert first_answer.WhichOneof("event") == "acquired"
            assert first_answer.acquired.ticket.number != unary.ticket.number
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


async def test_a_holder_whose_ticket_is_finished_elsewhere_is_told_and_spares_the_next_holder(
    aclient: AsyncLockClient, target: str, cid: str
) -> None:
    """A holder's ticket is finished by another client (an operator, a Rasa-style
    client finishing by number). The session is ended with NOT_FOUND by the end of
    its lifetime, and the ticket of the session that acquired next is untouched."""
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
            # `first`'s ticket is gone, and its lifetime (1 s) is over by the deadline.
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


@pytest.fixture
def metered_server() -> Iterator[tuple[ServerProcess, int]]:
    """A server of its own with metrics, whose holder gauge tells when a session ended."""
    metrics_port = free_port()
    with ServerProcess(["--log-level", "warning", "--metrics-port", str(metrics_port)]) as server:
        yield server, metrics_port


def _holders(metrics_port: int) -> float:
    import urllib.request

    url = f"http://127.0.0.1:{metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        for line in response.read().decode().splitlines():
            if line.startswith("ticketlock_session_holders "):
                return float(line.split()[1])
    raise AssertionError("no ticketlock_session_holders in the metrics")


async def test_async_lock_whose_ticket_ran_out_while_held_raises_ticket_not_found_on_exit(
    metered_server: tuple[ServerProcess, int], cid: str
) -> None:
    """The ticket ran out while held, and the server ended the stream with NOT_FOUND:
    leaving the ``async with`` block raises ``TicketNotFoundError``, as the sync
    client does."""
    server, metrics_port = metered_server
    async with AsyncLockClient(server.target) as client:
        with pytest.raises(TicketNotFoundError):
            async with client.lock(cid, 0.3):
                assert await asyncio.to_thread(_holders, metrics_port) == 1.0
                await eventually(
                    lambda: asyncio.to_thread(lambda: _holders(metrics_port) == 0.0),
                    "the server to end the hold whose ticket ran out",
                )


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


def test_a_sync_lock_whose_timeout_fires_as_it_acquires_holds_or_reports_the_timeout(
    target: str, cid: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the timeout fires between ``acquired`` and the block, ``lock()`` either
    raises ``LockTimeoutError`` or enters the block holding a ticket the server
    still has; it never enters the block after the timer freed the ticket."""
    fake_threading = types.SimpleNamespace(Timer=_TimerFiringAtCancel, Event=threading.Event)
    monkeypatch.setattr(client_module, "threading", fake_threading)
    with LockClient(target) as client, LockClient(target) as observer:
        try:
            with client.lock(cid, 30, timeout=5) as held:
                # Time for a cancelled call's release to reach the server, if the
                # timer had cancelled it.
                time.sleep(0.3)
                lock = observer.get_lock(cid)
                assert lock is not None and lock.now_serving == held.ticket.number, (
                    "inside lock() but the call was cancelled by the timer and the "
                    f"server freed ticket {held.ticket.number}: lock is now {lock}"
                )
        except LockTimeoutError:
            pass  # reporting the timeout that won the race is a correct outcome
