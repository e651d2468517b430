"""``LockClient.lock()`` against a server scripted message by message (grpcio-testing).

The test plays the server: it takes each request the client sends and answers it
(or ends the stream) exactly when it chooses, so ticket-issue ordering, the lease
logic, the lost-lock paths and the stream pool are exercised deterministically.
These come in addition to the end-to-end tests against real servers.
"""

from __future__ import annotations

import logging
import threading
import types
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import grpc
import grpc_testing
import pytest
from ticketlock import (
    IssueOrder,
    LockClient,
    LockExpiredError,
    LockTimeoutError,
    SessionLostError,
    StoreUnavailableError,
    Ticket,
    TicketNotFoundError,
)
from ticketlock.v1 import lock_service_pb2 as pb
from ticketlock.v1 import lock_service_pb2_grpc as pb_grpc

pytestmark = pytest.mark.timeout(30)
SERVICE = pb.DESCRIPTOR.services_by_name["LockService"]
LOCK = SERVICE.methods_by_name["Lock"]
WAIT = 10.0


def acquired(number: int, expires: float = 1e10) -> pb.LockResponse:
    return pb.LockResponse(acquired=pb.Acquired(ticket=pb.Ticket(number=number, expires=expires)))


def queued(number: int, now_serving: int) -> pb.LockResponse:
    ticket = pb.Ticket(number=number, expires=1e10)
    ahead = number - now_serving
    return pb.LockResponse(
        queued=pb.Queued(ticket=ticket, now_serving=now_serving, tickets_ahead=ahead)
    )


RELEASED = pb.LockResponse(released=pb.Released())


class _Call:
    """grpcio-testing's client side of a stream, plus what a real call has and the
    test channel does not implement: termination callbacks (``add_callback``) and
    ``is_active``. The test runs them when it ends the stream (``Scripted.end``)."""

    def __init__(self, call: Any) -> None:
        self._call = call
        self._callbacks: list[Callable[[], None]] = []
        self._active = True

    def __iter__(self) -> _Call:
        return self

    def __next__(self) -> Any:
        return next(self._call)

    def add_callback(self, callback: Callable[[], None]) -> bool:
        self._callbacks.append(callback)
        return True

    def ended(self) -> None:
        self._active = False
        for callback in self._callbacks:
            callback()

    def is_active(self) -> bool:
        return self._active

    def code(self) -> grpc.StatusCode:
        return self._call.code()  # type: ignore[no-any-return]

    def details(self) -> str:
        return self._call.details()  # type: ignore[no-any-return]

    def cancel(self) -> None:
        self._call.cancel()
        self._active = False


class _TestingChannel:
    """grpcio-testing's channel, taking the ``_registered_method`` argument that
    stubs of newer grpcio pass (grpcio-testing before 1.63, the floor on protobuf
    4.x, does not know it; it changes nothing for a test channel)."""

    def __init__(self, channel: Any) -> None:
        self._channel = channel

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._channel, name)

        def call(*args: Any, _registered_method: bool = False, **kwargs: Any) -> Any:
            return method(*args, **kwargs)

        return call


class Scripted:
    """A LockClient whose Lock calls reach the test instead of a server."""

    def __init__(self) -> None:
        self.channel = grpc_testing.channel([SERVICE], grpc_testing.strict_real_time())
        self.order = IssueOrder()
        self.client = LockClient("127.0.0.1:1", issue_order=self.order)  # never dialled
        stub = pb_grpc.LockServiceStub(_TestingChannel(self.channel))
        self.calls: list[_Call] = []
        self.taken: list[Any] = []
        self.opening = threading.Event()

        def opening(*args: Any, **kwargs: Any) -> Any:
            call = _Call(stub.Lock(*args, **kwargs))
            self.calls.append(call)
            self.opening.set()
            return call

        self.client._stub = types.SimpleNamespace(Lock=opening)  # type: ignore[assignment]
        self.threads = ThreadPoolExecutor(max_workers=4)

    @property
    def opened(self) -> int:
        return len(self.calls)

    def run(self, function: Callable[[], Any]) -> Future[Any]:
        return self.threads.submit(function)

    def take_stream(self) -> tuple[Any, Any]:
        """The next Lock call the client opens: (its metadata, its server side)."""
        metadata, rpc = self.channel.take_stream_stream(LOCK)
        self.taken.append(rpc)
        return metadata, rpc

    def end(self, rpc: Any, code: grpc.StatusCode, details: str) -> None:
        """End a stream with a status, as the server does."""
        rpc.terminate((), code, details)
        self.calls[self.taken.index(rpc)].ended()

    def close(self) -> None:
        self.threads.shutdown(wait=False, cancel_futures=True)
        # Ends the request iterators of the pooled streams, whose consuming threads
        # (the test channel's, not daemons) would otherwise keep the process alive.
        for stream in self.client._idle:
            stream.close()
        self.client._channel.close()


@pytest.fixture
def scripted() -> Iterator[Scripted]:
    running = Scripted()
    yield running
    running.close()


def _action(request: pb.LockRequest) -> str:
    return str(request.WhichOneof("action"))


# -- ticket-issue ordering -------------------------------------------------------------


def test_a_second_lock_is_sent_only_once_the_first_has_its_ticket(scripted: Scripted) -> None:
    first_in = threading.Event()
    leave = threading.Event()

    def first() -> None:
        with scripted.client.lock("c", 30):
            first_in.set()
            leave.wait(WAIT)

    def second() -> int:
        with scripted.client.lock("c", 30) as held:
            return held.fencing_token

    one = scripted.run(first)
    metadata, rpc1 = scripted.take_stream()
    assert ("ticketlock-reuse", "1") in metadata
    assert rpc1.take_request().acquire.conversation_id == "c"
    scripted.opening.clear()
    two = scripted.run(second)
    # The second call waits for the first one's ticket: it opens no stream yet.
    assert not scripted.opening.wait(0.3)
    assert scripted.opened == 1
    rpc1.send_response(acquired(0))
    assert first_in.wait(WAIT)
    _, rpc2 = scripted.take_stream()
    assert rpc2.take_request().acquire.conversation_id == "c"
    rpc2.send_response(queued(1, 0))
    leave.set()
    assert _action(rpc1.take_request()) == "release"
    one.result(WAIT)
    rpc1.send_response(RELEASED)
    rpc2.send_response(acquired(1))
    assert two.result(WAIT) == 1


def test_an_uncontended_call_waits_for_nothing() -> None:
    order = IssueOrder()
    turn = order.take("c")
    assert turn.ahead is None and turn.wait_ahead(0)
    other = order.take("d")  # another conversation: its own chain
    assert other.ahead is None
    behind = order.take("c")
    assert behind.ahead is turn and not behind.wait_ahead(0)
    assert order.take_if_first("c") is None  # a try-lock does not queue behind
    turn.finish()
    assert behind.wait_ahead(0)
    behind.finish()
    other.finish()
    assert not order.issuing("c") and not order.issuing("d")
    assert order.take("c").ahead is None


def test_a_call_that_gives_up_keeps_the_order_of_the_calls_behind() -> None:
    order = IssueOrder()
    first = order.take("c")
    quitter = order.take("c")
    last = order.take("c")
    quitter.finish_after_ahead()  # gave up (timeout) while the first is being issued
    assert not quitter.done and not last.wait_ahead(0)
    first.finish()
    assert quitter.done and last.wait_ahead(0)


# -- the lease -----------------------------------------------------------------------


def test_refresh_sends_refresh_and_keeps_the_new_expiry(scripted: Scripted) -> None:
    def hold() -> tuple[Ticket, Ticket]:
        with scripted.client.lock("c", 5) as held:
            default = held.refresh()
            longer = held.refresh(30)
            assert held.ticket == longer
            return default, longer

    result = scripted.run(hold)
    _, rpc = scripted.take_stream()
    assert rpc.take_request().acquire.lifetime_seconds == 5
    rpc.send_response(acquired(7, 100.0))
    for lifetime, expires in ((5, 105.0), (30, 130.0)):
        request = rpc.take_request()
        assert _action(request) == "refresh" and request.refresh.lifetime_seconds == lifetime
        rpc.send_response(
            pb.LockResponse(refreshed=pb.Refreshed(ticket=pb.Ticket(number=7, expires=expires)))
        )
    assert _action(rpc.take_request()) == "release"
    # Its expiry (130.0) is past: the exit reads the answer to its release.
    rpc.send_response(pb.LockResponse(released=pb.Released()))
    assert result.result(WAIT) == (Ticket(7, 105.0), Ticket(7, 130.0))


def test_auto_refresh_refreshes_while_the_block_runs(scripted: Scripted) -> None:
    leave = threading.Event()

    def hold() -> bool:
        with scripted.client.lock("c", 0.3, auto_refresh=True) as held:
            leave.wait(WAIT)
            return held.lost.is_set()

    result = scripted.run(hold)
    _, rpc = scripted.take_stream()
    rpc.take_request()
    rpc.send_response(acquired(1))
    for expires in (2.0, 3.0, 4.0):
        request = rpc.take_request()
        assert _action(request) == "refresh" and request.refresh.lifetime_seconds == 0.3
        rpc.send_response(
            pb.LockResponse(refreshed=pb.Refreshed(ticket=pb.Ticket(number=1, expires=expires)))
        )
    leave.set()
    # An answered refresh may be followed by at most one more before the release.
    request = rpc.take_request()
    if _action(request) == "refresh":
        rpc.send_response(pb.LockResponse(refreshed=pb.Refreshed(ticket=pb.Ticket(number=1))))
        request = rpc.take_request()
    assert _action(request) == "release"
    # Its expiry (4.0) is past: the exit reads the answer to its release.
    rpc.send_response(pb.LockResponse(released=pb.Released()))
    assert result.result(WAIT) is False


@pytest.mark.parametrize(
    ("code", "error"),
    [
        (grpc.StatusCode.NOT_FOUND, LockExpiredError),
        (grpc.StatusCode.UNAVAILABLE, SessionLostError),
    ],
)
def test_a_stream_ended_while_held_sets_lost_and_the_exit_raises(
    scripted: Scripted, code: grpc.StatusCode, error: type[Exception]
) -> None:
    inside = threading.Event()
    told = threading.Event()

    def hold() -> None:
        with scripted.client.lock("c", 30) as held:
            inside.set()
            assert held.lost.wait(WAIT)
            assert isinstance(held.error, error)
            told.set()

    result = scripted.run(hold)
    _, rpc = scripted.take_stream()
    rpc.take_request()
    rpc.send_response(acquired(3))
    assert inside.wait(WAIT)
    scripted.end(rpc, code, "ticket 3 of 'c' is gone")
    assert told.wait(WAIT)
    with pytest.raises(error) as raised:
        result.result(WAIT)
    assert raised.value.code == code
    assert isinstance(raised.value, (TicketNotFoundError, StoreUnavailableError))


# -- the try-lock and the pool ----------------------------------------------------------


def test_a_try_lock_that_finds_the_lock_taken_gives_its_place_up(scripted: Scripted) -> None:
    def try_lock() -> None:
        with scripted.client.lock("c", 30, blocking=False):
            pytest.fail("acquired while queued")

    result = scripted.run(try_lock)
    _, rpc = scripted.take_stream()
    rpc.take_request()
    rpc.send_response(queued(4, 3))
    assert _action(rpc.take_request()) == "release"
    with pytest.raises(LockTimeoutError):
        result.result(WAIT)
    # The stream goes back to the pool; its next user reads `released` first.
    after = scripted.run(lambda: scripted.client.lock("d", 30).__enter__().fencing_token)
    assert rpc.take_request().acquire.conversation_id == "d"
    rpc.send_response(RELEASED)
    rpc.send_response(acquired(0))
    assert after.result(WAIT) == 0
    assert scripted.opened == 1


def test_the_exit_does_not_wait_for_released_and_a_failed_release_is_logged(
    scripted: Scripted, caplog: pytest.LogCaptureFixture
) -> None:
    def cycle(cid: str) -> int:
        with scripted.client.lock(cid, 30) as held:
            return held.fencing_token

    first = scripted.run(lambda: cycle("c"))
    _, rpc1 = scripted.take_stream()
    rpc1.take_request()
    rpc1.send_response(acquired(5))
    assert _action(rpc1.take_request()) == "release"
    assert first.result(WAIT) == 5  # returned with `released` still unanswered
    caplog.set_level(logging.WARNING, logger="ticketlock.client")
    second = scripted.run(lambda: cycle("d"))
    assert rpc1.take_request().acquire.conversation_id == "d"
    scripted.end(rpc1, grpc.StatusCode.UNAVAILABLE, "lock store redis is unavailable")
    # The next user read the failure, logged it, and went on on a new stream.
    _, rpc2 = scripted.take_stream()
    assert rpc2.take_request().acquire.conversation_id == "d"
    rpc2.send_response(acquired(0))
    assert _action(rpc2.take_request()) == "release"
    assert second.result(WAIT) == 0
    (record,) = [r for r in caplog.records if "release of ticket 5" in r.getMessage()]
    assert "'c'" in record.getMessage() and "unavailable" in record.getMessage()


def test_a_pooled_stream_the_server_ended_is_replaced_unseen(scripted: Scripted) -> None:
    def cycle(cid: str) -> int:
        with scripted.client.lock(cid, 30) as held:
            return held.fencing_token

    first = scripted.run(lambda: cycle("c"))
    _, rpc1 = scripted.take_stream()
    rpc1.take_request()
    rpc1.send_response(acquired(1))
    rpc1.take_request()
    first.result(WAIT)
    rpc1.send_response(RELEASED)
    second = scripted.run(lambda: cycle("d"))
    rpc1.take_request()
    # The server ends the idle stream (OK) as the acquire crosses it: not acted on.
    scripted.end(rpc1, grpc.StatusCode.OK, "")
    _, rpc2 = scripted.take_stream()
    assert rpc2.take_request().acquire.conversation_id == "d"
    rpc2.send_response(acquired(2))
    rpc2.take_request()
    assert second.result(WAIT) == 2
