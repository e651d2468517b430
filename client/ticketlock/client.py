"""``LockClient`` and ``AsyncLockClient``: the lock store interface over gRPC.

Both mirror a Rasa lock store (``get_lock``, ``save_lock``, ``delete_lock``,
``issue_ticket``, ``finish_serving``, ``cleanup``, ``is_someone_waiting``) and add
``lock()``, a context manager that queues on a session-bound ``Lock`` stream: the
wait is pushed by the server, and the ticket is released on exit, on an exception,
on cancellation, and (by the server) if this process dies.

``lock()`` takes an idle stream from a small pool and gives it back on exit: a
lock cycle costs messages on a stream, not a new call. The exit sends
``release`` and does not wait for ``released``; the stream's next user (or the
next call of this client on that conversation) reads it first. A release that
failed is logged on the ``ticketlock.client`` logger; its ticket is freed when
its stream ends, or at its expiry.

Idempotent calls are retried on UNAVAILABLE by gRPC's own retry policy;
``IssueTicket`` is not, since a retry could queue a second ticket.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import queue
import threading
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from threading import Lock as _Mutex
from threading import Thread as _Thread
from typing import Any

import grpc

from ticketlock._order import IssueOrder, Turn
from ticketlock._tracing import with_trace
from ticketlock.convert import lock_from_pb, lock_to_pb, ticket_from_pb
from ticketlock.errors import (
    LockError,
    LockLostError,
    LockTimeoutError,
    from_rpc_error,
    from_status,
    lost_error,
)
from ticketlock.model import Ticket, TicketLock
from ticketlock.v1 import lock_service_pb2 as pb
from ticketlock.v1 import lock_service_pb2_grpc as pb_grpc

logger = logging.getLogger(__name__)

DEFAULT_TARGET = "localhost:50051"
# The end-of-stream marker of grpc.aio reads (missing from the type stubs).
_EOF: Any = grpc.aio.EOF  # type: ignore[attr-defined]
DEFAULT_TIMEOUT = 10.0
DEFAULT_KEEPALIVE_TIME = 10.0
DEFAULT_KEEPALIVE_TIMEOUT = 10.0
# The server refuses pings more frequent than this (GOAWAY too_many_pings).
MIN_KEEPALIVE_TIME = 5.0
DEFAULT_MAX_IDLE_STREAMS = 16
_SERVICE = "ticketlock.v1.LockService"
_IDEMPOTENT = (
    "GetLock", "SaveLock", "DeleteLock", "FinishServing", "Cleanup", "IsSomeoneWaiting",
    "RefreshTicket", "WaitForTicket",
)  # fmt: skip
_SERVICE_CONFIG = json.dumps(
    {
        "methodConfig": [
            {
                "name": [{"service": _SERVICE, "method": m} for m in _IDEMPOTENT],
                "retryPolicy": {
                    "maxAttempts": 5,
                    "initialBackoff": "0.1s",
                    "maxBackoff": "1s",
                    "backoffMultiplier": 2,
                    # Only UNAVAILABLE: FAILED_PRECONDITION (foreign data under the
                    # key) and RESOURCE_EXHAUSTED (a limit) would answer the same again.
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ]
    }
)


@dataclass(frozen=True, slots=True)
class IssuedTicket:
    """A ticket and who held the lock when it was issued."""

    ticket: Ticket
    now_serving: int

    @property
    def acquired(self) -> bool:
        """Whether the ticket held the lock when it was issued."""
        return self.ticket.number == self.now_serving


def _channel_args(
    tls: bool | grpc.ChannelCredentials,
    options: Sequence[tuple[str, Any]],
    keepalive_time: float,
    keepalive_timeout: float,
) -> tuple[grpc.ChannelCredentials | None, list[tuple[str, Any]]]:
    if not keepalive_time >= MIN_KEEPALIVE_TIME:
        raise ValueError(
            f"keepalive_time must be at least {MIN_KEEPALIVE_TIME:g} s (the server refuses "
            f"pings more frequent than that), got {keepalive_time!r}"
        )
    if not (keepalive_timeout > 0 and math.isfinite(keepalive_timeout)):
        raise ValueError(f"keepalive_timeout must be a positive number, got {keepalive_timeout!r}")
    credentials: grpc.ChannelCredentials | None
    if tls is True:
        credentials = grpc.ssl_channel_credentials()
    elif tls is False:
        credentials = None
    else:
        credentials = tls
    merged = [
        ("grpc.service_config", _SERVICE_CONFIG),
        ("grpc.enable_retries", 1),
        # A sidecar restarts in about a second: reconnect on that scale, not gRPC's
        # default of a minute and more after a few failures.
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 2000),
        # A silent peer (host crash, partition) fails the calls on the connection
        # after keepalive_time + keepalive_timeout, instead of never: a held lock
        # learns that its session is gone, and no read hangs for good.
        ("grpc.keepalive_time_ms", int(keepalive_time * 1000)),
        ("grpc.keepalive_timeout_ms", int(keepalive_timeout * 1000)),
        # gRPC core waits for a ping's answer up to this (default 60 s) whatever
        # the keepalive timeout says, and sends no new keepalive ping meanwhile.
        ("grpc.http2.ping_timeout_ms", int(keepalive_timeout * 1000)),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
    ]
    return credentials, merged + list(options)


def _metadata(token: str | None) -> tuple[tuple[str, str], ...] | None:
    return None if token is None else (("authorization", f"Bearer {token}"),)


# Asks the server to keep a Lock stream open after ``released`` for the next acquire.
_REUSE = ("ticketlock-reuse", "1")


def _lock_metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    return (*(_metadata(token) or ()), _REUSE)


def _acquire_request(conversation_id: str, lock_lifetime: float) -> pb.LockRequest:
    return pb.LockRequest(
        acquire=pb.Acquire(conversation_id=conversation_id, lifetime_seconds=lock_lifetime)
    )


def _refresh_request(lock_lifetime: float) -> pb.LockRequest:
    return pb.LockRequest(refresh=pb.Refresh(lifetime_seconds=lock_lifetime))


_RELEASE = pb.LockRequest(release=pb.Release())


def _try_only(timeout: float | None, blocking: bool) -> bool:
    if timeout is not None and not timeout >= 0:
        raise ValueError(f"timeout must be None or a non-negative number, got {timeout!r}")
    return not blocking or timeout == 0


def _timed_out(conversation_id: str, timeout: float | None) -> LockTimeoutError:
    return LockTimeoutError(
        f"lock for {conversation_id!r} not acquired within {timeout} s",
        grpc.StatusCode.DEADLINE_EXCEEDED,
    )


def _busy(conversation_id: str) -> LockTimeoutError:
    return LockTimeoutError(
        f"lock for {conversation_id!r} is held or queued for: not acquired (blocking=False)",
        grpc.StatusCode.DEADLINE_EXCEEDED,
    )


class _Busy(Exception):
    """A try-lock found the lock taken; its stream went back to the pool."""


def _refresh_interval(ticket: Ticket, lock_lifetime: float) -> float:
    """A third of the lifetime: two refreshes may fail before the ticket runs out."""
    lifetime = lock_lifetime if lock_lifetime > 0 else ticket.expires - time.time()
    return max(lifetime / 3, 0.01)


def _log_failed_release(conversation_id: str, number: int, error: BaseException) -> None:
    logger.warning(
        "release of ticket %d of conversation %r failed after its block ended: %s; the "
        "server frees the ticket when its stream ends, at the latest when it expires",
        number,
        conversation_id,
        error,
    )


# -- the blocking client -------------------------------------------------------------


class HeldLock:
    """The lock held inside ``LockClient.lock()``.

    ``ticket.number`` is a fencing token. ``lost`` is a ``threading.Event`` set as
    soon as the lock is lost while the block runs (the ticket ran out, the server
    stopped, the connection broke or went silent); leaving the block then raises
    ``error``, a ``LockLostError``.
    """

    def __init__(self, conversation_id: str, ticket: Ticket) -> None:
        self.conversation_id = conversation_id
        self.ticket = ticket
        self.lost = threading.Event()
        self.error: LockLostError | None = None
        self._stream: _SyncStream | None = None
        self._mutex = _Mutex()
        self._lifetime = 0.0
        self._stop_refreshing = threading.Event()
        self._refresher: _Thread | None = None

    @property
    def fencing_token(self) -> int:
        """The ticket number: monotonic per conversation, never handed out twice."""
        return self.ticket.number

    def raise_if_lost(self) -> None:
        """Raise the ``LockLostError`` now if the lock is lost; a cheap check for loops."""
        if self.error is not None:
            raise self.error

    def refresh(self, lock_lifetime: float | None = None) -> Ticket:
        """Extend the ticket to now plus ``lock_lifetime`` (default: the lifetime of ``lock()``).

        Returns the ticket with its new expiry (also in ``self.ticket``). Raises
        ``LockLostError`` when the lock is lost, ``InvalidArgumentError`` for a bad
        lifetime (which ends the lock, as the server ends the stream).

        >>> with client.lock("conv-1", lock_lifetime=30) as held:
        ...     for chunk in work:
        ...         process(chunk)
        ...         held.refresh()
        """
        lifetime = self._lifetime if lock_lifetime is None else lock_lifetime
        with self._mutex:
            self.raise_if_lost()
            stream = self._stream
            if stream is None:
                raise LockError("the lock was released: refresh() works inside its block")
            stream.send(_refresh_request(lifetime))
            try:
                message = stream.read()
            except grpc.RpcError as error:
                raise self._lose(lost_error(error.code(), error.details())) from None
            if message is None or message.WhichOneof("event") != "refreshed":
                raise self._lose(lost_error(grpc.StatusCode.OK, None))
            self.ticket = ticket_from_pb(message.refreshed.ticket)
            return self.ticket

    def _lose(self, error: LockLostError) -> LockLostError:
        if self.error is None:
            self.error = error
            self.lost.set()
        return self.error

    def _start_refreshing(self, lock_lifetime: float) -> None:
        self._refresher = _Thread(
            target=self._refresh_until_stopped,
            args=(lock_lifetime,),
            name=f"ticketlock-refresh-{self.conversation_id}",
            daemon=True,
        )
        self._refresher.start()

    def _refresh_until_stopped(self, lock_lifetime: float) -> None:
        while not self._stop_refreshing.wait(_refresh_interval(self.ticket, lock_lifetime)):
            try:
                self.refresh()
            except LockError:
                return  # lost: the signal is set, and the exit raises

    def _stop(self) -> None:
        self._stop_refreshing.set()
        if self._refresher is not None:
            self._refresher.join()


class _SyncStream:
    """One ``Lock`` call of a ``LockClient``, used by one ``lock()`` block at a time."""

    def __init__(self, stub: pb_grpc.LockServiceStub, metadata: Any, traced: bool) -> None:
        self._requests: queue.SimpleQueue[pb.LockRequest | None] = queue.SimpleQueue()
        self.call: Any = stub.Lock(iter(self._requests.get, None), metadata=metadata)
        # Opened in a trace (its metadata names it): serves one block, never pooled.
        self.traced = traced
        self.holder: HeldLock | None = None
        self.used = False
        # A release sent whose answer nobody has read yet: (conversation, ticket).
        self.releasing: tuple[str, int] | None = None
        self.settled = threading.Event()
        if not self.call.add_callback(self._ended):
            self._ended()

    def _ended(self) -> None:
        holder = self.holder
        if holder is not None:
            holder._lose(lost_error(self.call.code(), self.call.details()))

    @property
    def done(self) -> bool:
        return not self.call.is_active()

    def send(self, request: pb.LockRequest) -> None:
        self._requests.put(request)

    def read(self) -> pb.LockResponse | None:
        """The next message; None when the stream ended with OK. Raises grpc.RpcError."""
        try:
            message: pb.LockResponse = next(self.call)
        except StopIteration:
            return None
        return message

    def settle(self) -> bool:
        """Read the answer to the release sent last; False when the stream is unusable."""
        if self.releasing is None:
            return not self.done
        conversation_id, number = self.releasing
        try:
            while True:
                message = self.read()
                if message is None:
                    raise LockError("the Lock stream ended before answering release")
                if message.WhichOneof("event") == "released":
                    return True
        except (grpc.RpcError, LockError) as error:
            if isinstance(error, grpc.RpcError):
                error = from_rpc_error(error)
            _log_failed_release(conversation_id, number, error)
            return False
        finally:
            self.releasing = None
            self.settled.set()

    def close(self) -> None:
        if self.releasing is not None:
            conversation_id, number = self.releasing
            self.releasing = None
            _log_failed_release(conversation_id, number, LockError("its answer was never read"))
        self.settled.set()
        self._requests.put(None)
        self.call.cancel()

    def finish(self, timeout: float) -> None:
        """End an idle stream as a finished call: half-close it, so that the server
        ends it with OK (a stream without a ticket), and read it to that end; cancel
        it if the end does not come within ``timeout``."""
        self._requests.put(None)
        timer = threading.Timer(timeout, self.call.cancel)
        timer.daemon = True
        timer.start()
        try:
            for _ in self.call:
                pass  # nothing is expected after the last answered release
        except grpc.RpcError:
            pass  # cancelled at the bound, or the stream had broken: close() follows
        finally:
            timer.cancel()
        self.close()


class LockClient:
    """Blocking client: the lock store interface and ``lock()`` over one gRPC channel.

    ``timeout`` bounds each unary call; ``lock(timeout=)`` the wait for the lock.
    ``tls``: False (plain), True (system roots) or ``grpc.ssl_channel_credentials(...)``
    for a private CA or client certificates. ``token``: sent as
    ``authorization: Bearer <token>``. ``keepalive_time``/``keepalive_timeout``:
    gRPC keepalive pings (seconds; at least 5 s between pings, as the server
    allows): a silent connection fails its calls within their sum.
    ``max_idle_streams``: how many idle ``Lock`` streams to keep for reuse.
    ``issue_order``: share one ``IssueOrder`` between clients to issue their
    tickets of a conversation in the order of their calls.

    Raises ``ValueError`` for a keepalive below the minimum. Use it as a context
    manager, or call ``close()``.

    >>> with LockClient("localhost:50051") as client:
    ...     with client.lock("conv-1", lock_lifetime=30):
    ...         handle_message()
    """

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        tls: bool | grpc.ChannelCredentials = False,
        token: str | None = None,
        timeout: float | None = DEFAULT_TIMEOUT,
        options: Sequence[tuple[str, Any]] = (),
        keepalive_time: float = DEFAULT_KEEPALIVE_TIME,
        keepalive_timeout: float = DEFAULT_KEEPALIVE_TIMEOUT,
        max_idle_streams: int = DEFAULT_MAX_IDLE_STREAMS,
        issue_order: IssueOrder | None = None,
    ) -> None:
        credentials, merged = _channel_args(tls, options, keepalive_time, keepalive_timeout)
        self._channel = (
            grpc.insecure_channel(target, merged)
            if credentials is None
            else grpc.secure_channel(target, credentials, merged)
        )
        self._stub = pb_grpc.LockServiceStub(self._channel)
        self._metadata = _metadata(token)
        self._lock_metadata = _lock_metadata(token)
        self._timeout = timeout
        self._issue_order = issue_order or IssueOrder()
        self._max_idle = max_idle_streams
        self._pool_mutex = _Mutex()
        self._idle: list[_SyncStream] = []
        # The stream of each conversation's latest release not yet answered: a call
        # of this client on that conversation reads it first (read your writes).
        self._releasing: dict[str, _SyncStream] = {}

    def close(self) -> None:
        """Read the answers of pending releases (logging failures), then close the channel."""
        with self._pool_mutex:
            idle, self._idle = self._idle, []
        for stream in idle:
            if self._settle_within(stream, self._timeout) and not stream.done:
                stream.finish(_FINISH_TIMEOUT)
            stream.close()
        self._channel.close()

    def __enter__(self) -> LockClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: Any, request: Any, conversation_id: str | None = None) -> Any:
        if conversation_id is not None and self._releasing:
            self._flush(conversation_id)
        try:
            return method(request, timeout=self._timeout, metadata=with_trace(self._metadata))
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None

    # -- the store interface ---------------------------------------------------------

    def get_lock(self, conversation_id: str) -> TicketLock | None:
        """The conversation's lock minus expired tickets, or None when it has none.

        Raises ``InvalidArgumentError`` for a bad id, ``StoreDataError`` when the
        store holds something else under the key, ``StoreUnavailableError``.
        """
        response = self._call(
            self._stub.GetLock, pb.GetLockRequest(conversation_id=conversation_id), conversation_id
        )
        return lock_from_pb(response.lock) if response.HasField("lock") else None

    def save_lock(self, lock: TicketLock) -> None:
        """Replace the conversation's lock with ``lock`` (expired tickets are dropped).

        Raises ``InvalidArgumentError`` (a duplicate number, a non-finite expiry...),
        ``StoreUnavailableError``.
        """
        request = pb.SaveLockRequest(lock=lock_to_pb(lock))
        self._call(self._stub.SaveLock, request, lock.conversation_id)

    def delete_lock(self, conversation_id: str) -> bool:
        """Delete the conversation's lock and all its tickets; True when there was one."""
        request = pb.DeleteLockRequest(conversation_id=conversation_id)
        return bool(self._call(self._stub.DeleteLock, request, conversation_id).deleted)

    def issue(self, conversation_id: str, lock_lifetime: float = 0) -> IssuedTicket:
        """Queue a ticket; ``.acquired`` tells whether it holds the lock already.

        Tickets of one conversation are issued in the order of the calls (see
        ``IssueOrder``). Never retried: a retry could queue a second ticket.
        Raises ``InvalidArgumentError``, ``ResourceExhaustedError`` (the
        conversation's ticket cap), ``StoreUnavailableError``.

        >>> issued = client.issue("conv-1", lock_lifetime=30)
        >>> if not issued.acquired:
        ...     client.wait_for_ticket("conv-1", issued.ticket.number, timeout=10)
        """
        request = pb.IssueTicketRequest(
            conversation_id=conversation_id, lifetime_seconds=lock_lifetime
        )
        turn = self._issue_order.take(conversation_id)
        try:
            turn.wait_ahead(None)
            response = self._call(self._stub.IssueTicket, request, conversation_id)
        finally:
            turn.finish()
        return IssuedTicket(ticket_from_pb(response.ticket), response.now_serving)

    def issue_ticket(self, conversation_id: str, lock_lifetime: float = 0) -> int:
        """Queue a ticket and return its number (0 lifetime = the server's default).

        Errors as ``issue()``.
        """
        return self.issue(conversation_id, lock_lifetime).ticket.number

    def wait_for_ticket(
        self, conversation_id: str, ticket_number: int, timeout: float | None = None
    ) -> TicketLock:
        """Block until the ticket holds the lock; return the lock at that moment.

        Raises ``TicketNotFoundError`` (the ticket expired or was finished),
        ``LockTimeoutError`` after ``timeout`` seconds, ``StoreUnavailableError``.
        """
        if self._releasing:
            self._flush(conversation_id)
        request = pb.WaitForTicketRequest(
            conversation_id=conversation_id, ticket_number=ticket_number
        )
        acquired: TicketLock | None = None
        try:
            # Read on to the stream's end, which follows ``acquired`` at once: leaving
            # early would cancel a call that succeeded, and the server would count it so.
            for message in self._stub.WaitForTicket(
                request, timeout=timeout, metadata=with_trace(self._metadata)
            ):
                if message.acquired:
                    acquired = lock_from_pb(message.lock)
        except grpc.RpcError as error:
            if acquired is None:  # once acquired, how the stream ends changes nothing
                raise from_rpc_error(error) from None
        if acquired is None:
            raise LockError("WaitForTicket ended without acquiring")
        return acquired

    def finish_serving(self, conversation_id: str, ticket_number: int) -> None:
        """Remove the ticket from the queue, holder or waiter; a missing one is no error."""
        request = pb.FinishServingRequest(
            conversation_id=conversation_id, ticket_number=ticket_number
        )
        self._call(self._stub.FinishServing, request, conversation_id)

    def cleanup(self, conversation_id: str, ticket_number: int) -> bool:
        """Finish the ticket and delete the lock if nobody waits; True when deleted."""
        request = pb.CleanupRequest(conversation_id=conversation_id, ticket_number=ticket_number)
        return bool(self._call(self._stub.Cleanup, request, conversation_id).lock_deleted)

    def is_someone_waiting(self, conversation_id: str) -> bool:
        """Whether the conversation's queue holds any unexpired ticket (the holder's too)."""
        request = pb.IsSomeoneWaitingRequest(conversation_id=conversation_id)
        return bool(self._call(self._stub.IsSomeoneWaiting, request, conversation_id).waiting)

    def refresh_ticket(
        self, conversation_id: str, ticket_number: int, lock_lifetime: float = 0
    ) -> Ticket:
        """Give a ticket a new expiry, now plus ``lock_lifetime``; return the ticket.

        For tickets of ``issue()``; inside ``lock()`` use ``held.refresh()``. Raises
        ``TicketNotFoundError`` when the ticket is gone.
        """
        request = pb.RefreshTicketRequest(
            conversation_id=conversation_id,
            ticket_number=ticket_number,
            lifetime_seconds=lock_lifetime,
        )
        return ticket_from_pb(self._call(self._stub.RefreshTicket, request, conversation_id).ticket)

    # -- the session-bound lock ----------------------------------------------------------

    @contextlib.contextmanager
    def lock(
        self,
        conversation_id: str,
        lock_lifetime: float = 0,
        *,
        timeout: float | None = None,
        blocking: bool = True,
        auto_refresh: bool = False,
    ) -> Iterator[HeldLock]:
        """Hold the conversation's lock for the ``with`` block; yields a ``HeldLock``.

        Waits (pushed by the server) at most ``timeout`` seconds, then raises
        ``LockTimeoutError``. ``blocking=False`` (or ``timeout=0``) is a try-lock:
        it acquires when the conversation is free now, and raises
        ``LockTimeoutError`` at once otherwise, leaving no ticket behind.
        ``auto_refresh=True`` refreshes the ticket every third of its lifetime
        while the block runs, so a long block keeps the lock while this process
        is alive (the session still frees it if the process dies).

        The lock is released when the block ends, however it ends. If it was lost
        while the block ran (``held.lost`` is set at that moment), leaving the
        block raises ``LockLostError``: ``LockExpiredError`` when the ticket ran
        out, ``SessionLostError`` when the stream broke. Other errors:
        ``InvalidArgumentError``, ``ResourceExhaustedError``,
        ``StoreUnavailableError``.

        >>> with client.lock("conv-1", lock_lifetime=30, auto_refresh=True) as held:
        ...     while not held.lost.is_set() and more_work():
        ...         step()
        >>> try:
        ...     with client.lock("conv-1", blocking=False):
        ...         ...
        ... except LockTimeoutError:
        ...     pass  # somebody else has it
        """
        try_only = _try_only(timeout, blocking)
        # A try-lock waits for nothing but the first answer: bound it as a unary call.
        bound = self._timeout if try_only else timeout
        held, stream = self._acquire(conversation_id, lock_lifetime, bound, try_only)
        if auto_refresh:
            held._start_refreshing(lock_lifetime)
        try:
            yield held
        except BaseException:
            held._stop()
            with held._mutex:
                stream.holder = None
                held._stream = None
            # Cancelling the call frees the ticket on the server at once.
            stream.close()
            raise
        held._stop()
        with held._mutex:
            stream.holder = None
            held._stream = None
        if held.error is not None or stream.done:
            stream.close()
            error = held.error or lost_error(stream.call.code(), stream.call.details())
            raise error
        stream.send(_RELEASE)
        if _may_have_run_out(held.ticket):
            # Unseen here, the ticket may have run out: read the answer now, so that a
            # lost lock is raised by this exit, not logged by the stream's next user.
            self._read_released(stream)
            self._keep(stream)
            return
        self._give_back(stream, (conversation_id, held.ticket.number))

    def _acquire(
        self, conversation_id: str, lock_lifetime: float, timeout: float | None, try_only: bool
    ) -> tuple[HeldLock, _SyncStream]:
        deadline = None if timeout is None else time.monotonic() + timeout
        turn: Turn | None
        if try_only:
            turn = self._issue_order.take_if_first(conversation_id)
            if turn is None:
                raise _busy(conversation_id)
        else:
            turn = self._issue_order.take(conversation_id)
            if not turn.wait_ahead(timeout):
                turn.finish_after_ahead()
                raise _timed_out(conversation_id, timeout)
        request = _acquire_request(conversation_id, lock_lifetime)
        stream: _SyncStream | None = None
        timed_out = threading.Event()
        try:
            for fresh in (False, True):
                stream = self._stream(fresh)
                remaining = None if deadline is None else max(deadline - time.monotonic(), 0.0)
                timer = _cancel_timer(stream, remaining, timed_out)
                try:
                    first = self._first_answer(stream, request, turn)
                    if first is None and stream.used and not fresh and not turn.done:
                        stream.close()  # ended before it read acquire: use a new one
                        continue
                    ticket = self._await_acquired(stream, first, try_only, conversation_id)
                    if ticket is None:
                        raise _Busy()
                except _Busy:
                    raise _busy(conversation_id) from None
                except grpc.RpcError as error:
                    stream.close()
                    if timed_out.is_set():
                        raise _timed_out(conversation_id, timeout) from None
                    if stream.used and not fresh and not turn.done:
                        continue  # a pooled stream that broke before it answered
                    raise from_rpc_error(error) from None
                except BaseException:
                    stream.close()
                    raise
                finally:
                    if timer is not None:
                        timer.cancel()
                if timed_out.is_set():
                    # The timer fired just after the acquisition and cancelled the
                    # call: the server has freed the ticket, so the lock is not held.
                    raise _timed_out(conversation_id, timeout)
                stream.used = True
                held = HeldLock(conversation_id, ticket)
                held._lifetime = lock_lifetime
                held._stream = stream
                stream.holder = held
                if stream.done:
                    held._lose(lost_error(stream.call.code(), stream.call.details()))
                return held, stream
            raise LockError("the Lock stream ended before the lock was acquired")
        finally:
            turn.finish_after_ahead()

    def _first_answer(
        self, stream: _SyncStream, request: pb.LockRequest, turn: Turn
    ) -> pb.LockResponse | None:
        # Sent before the answer to the stream's last release is read: the server
        # issues the new ticket only once the old one is gone.
        stream.send(request)
        if stream.releasing is not None and not self._settle(stream):
            return None  # the acquire crossed the stream's end and was not acted on
        first = stream.read()
        if first is not None:
            turn.finish()  # the ticket is issued: the next call of the conversation goes
        return first

    def _await_acquired(
        self,
        stream: _SyncStream,
        message: pb.LockResponse | None,
        try_only: bool,
        conversation_id: str,
    ) -> Ticket | None:
        """The ticket once acquired; None when a try-lock found the lock taken."""
        while True:
            if message is None:
                raise LockError("the Lock stream ended before the lock was acquired")
            event = message.WhichOneof("event")
            if event == "acquired":
                return ticket_from_pb(message.acquired.ticket)
            if try_only and event == "queued":
                # Not free now: give the place up on this stream, and keep the stream.
                stream.send(_RELEASE)
                stream.used = True
                self._give_back(stream, (conversation_id, message.queued.ticket.number))
                return None
            message = stream.read()

    # -- the stream pool ------------------------------------------------------------------

    def _stream(self, fresh: bool) -> _SyncStream:
        """An idle stream (its last release perhaps not answered yet), or a new one.

        Inside a trace, a new stream that carries it: the server's span of the call is
        then the span of this block, in the caller's trace."""
        traced = with_trace(self._lock_metadata)
        if traced is not self._lock_metadata:
            return _SyncStream(self._stub, traced, traced=True)
        while not fresh:
            with self._pool_mutex:
                if not self._idle:
                    break
                stream = self._idle.pop()  # the newest: its connection is warm
            if not stream.done or stream.releasing is not None:
                return stream
            stream.close()
        return _SyncStream(self._stub, self._lock_metadata, traced=False)

    def _settle(self, stream: _SyncStream) -> bool:
        releasing = stream.releasing
        usable = stream.settle()
        if releasing is not None:
            with self._pool_mutex:
                if self._releasing.get(releasing[0]) is stream:
                    del self._releasing[releasing[0]]
        return usable

    def _settle_within(self, stream: _SyncStream, timeout: float | None) -> bool:
        timer = _cancel_timer(stream, timeout, threading.Event())
        try:
            return self._settle(stream)
        finally:
            if timer is not None:
                timer.cancel()

    def _read_released(self, stream: _SyncStream) -> None:
        """Read ``released``, or raise the ``LockLostError`` the stream ended with."""
        timer = _cancel_timer(stream, self._timeout, threading.Event())
        try:
            while True:
                message = stream.read()
                if message is None or message.WhichOneof("event") == "released":
                    break
        except grpc.RpcError as error:
            stream.close()
            raise lost_error(error.code(), error.details()) from None
        finally:
            if timer is not None:
                timer.cancel()
        if message is None:
            stream.close()
            raise lost_error(stream.call.code(), stream.call.details())

    def _keep(self, stream: _SyncStream) -> None:
        """Pool a stream whose last release is answered, if there is room."""
        with self._pool_mutex:
            if not stream.traced and len(self._idle) < self._max_idle:
                self._idle.append(stream)
                return
        stream.finish(_FINISH_TIMEOUT)

    def _give_back(self, stream: _SyncStream, releasing: tuple[str, int]) -> None:
        stream.releasing = releasing
        stream.settled = threading.Event()
        with self._pool_mutex:
            self._releasing[releasing[0]] = stream
            if not stream.traced and len(self._idle) < self._max_idle:
                self._idle.append(stream)
                return
        # Not kept (the pool is full, or it belongs to a trace): read its answer now,
        # and end it as a finished call.
        if self._settle_within(stream, self._timeout) and not stream.done:
            stream.finish(_FINISH_TIMEOUT)
        stream.close()

    def _flush(self, conversation_id: str) -> None:
        """Wait for the answer to this client's pending release of the conversation."""
        with self._pool_mutex:
            stream = self._releasing.get(conversation_id)
            if stream is None:
                return
            mine = stream in self._idle
            if mine:
                self._idle.remove(stream)
        if not mine:
            stream.settled.wait(self._timeout)  # its new user reads the answer first
            with self._pool_mutex:
                if self._releasing.get(conversation_id) is stream:
                    del self._releasing[conversation_id]
            return
        if self._settle_within(stream, self._timeout):
            with self._pool_mutex:
                if len(self._idle) < self._max_idle:
                    self._idle.append(stream)
                    return
        stream.close()


def _cancel_timer(
    stream: _SyncStream, timeout: float | None, fired: threading.Event
) -> threading.Timer | None:
    """A started timer that cancels the stream's call after ``timeout`` seconds."""
    if timeout is None:
        return None

    def expire() -> None:
        fired.set()
        stream.call.cancel()

    timer = threading.Timer(timeout, expire)
    timer.daemon = True
    timer.start()
    return timer


# -- the asyncio client --------------------------------------------------------------


async def _finished_call_error(call: Any) -> LockError:
    """The error a finished aio call ended with."""
    return from_status(await call.code(), await call.details())


class AsyncHeldLock:
    """The lock held inside ``AsyncLockClient.lock()``.

    ``ticket.number`` is a fencing token. ``lost`` is an ``asyncio.Event`` set as
    soon as the lock is lost while the block runs (``await held.lost.wait()``
    works); leaving the block then raises ``error``, a ``LockLostError``.
    """

    def __init__(self, conversation_id: str, ticket: Ticket) -> None:
        self.conversation_id = conversation_id
        self.ticket = ticket
        self.lost = asyncio.Event()
        self.error: LockLostError | None = None
        self._stream: _AsyncStream | None = None
        self._mutex = asyncio.Lock()
        self._lifetime = 0.0
        self._stop_refreshing = asyncio.Event()
        self._refresher: asyncio.Task[None] | None = None

    @property
    def fencing_token(self) -> int:
        """The ticket number: monotonic per conversation, never handed out twice."""
        return self.ticket.number

    def raise_if_lost(self) -> None:
        """Raise the ``LockLostError`` now if the lock is lost."""
        if self.error is not None:
            raise self.error

    async def refresh(self, lock_lifetime: float | None = None) -> Ticket:
        """Extend the ticket to now plus ``lock_lifetime`` (default: that of ``lock()``).

        Returns the ticket with its new expiry (also in ``self.ticket``). Raises
        ``LockLostError`` when the lock is lost.

        >>> async with client.lock("conv-1", lock_lifetime=30) as held:
        ...     await step_one()
        ...     await held.refresh()
        ...     await step_two()
        """
        lifetime = self._lifetime if lock_lifetime is None else lock_lifetime
        async with self._mutex:
            self.raise_if_lost()
            stream = self._stream
            if stream is None:
                raise LockError("the lock was released: refresh() works inside its block")
            try:
                await stream.call.write(_refresh_request(lifetime))
                message = await stream.call.read()
            except grpc.RpcError as error:
                raise self._lose(lost_error(error.code(), error.details())) from None
            except asyncio.InvalidStateError:  # written after the call ended
                raise self._lose(await stream.ended_error()) from None
            if message is _EOF or message.WhichOneof("event") != "refreshed":
                raise self._lose(await stream.ended_error())
            self.ticket = ticket_from_pb(message.refreshed.ticket)
            return self.ticket

    def _lose(self, error: LockLostError) -> LockLostError:
        if self.error is None:
            self.error = error
            self.lost.set()
        return self.error

    def _start_refreshing(self, lock_lifetime: float) -> None:
        self._refresher = asyncio.ensure_future(self._refresh_until_stopped(lock_lifetime))

    async def _refresh_until_stopped(self, lock_lifetime: float) -> None:
        while True:
            interval = _refresh_interval(self.ticket, lock_lifetime)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stop_refreshing.wait(), interval)
                return
            try:
                await self.refresh()
            except LockError:
                return  # lost: the signal is set, and the exit raises

    async def _stop(self) -> None:
        self._stop_refreshing.set()
        if self._refresher is not None:
            # An in-flight refresh is not cancelled: cancelling a read ends the call.
            await asyncio.shield(self._refresher)


class _AsyncStream:
    """One ``Lock`` call of an ``AsyncLockClient``, used by one block at a time."""

    def __init__(self, stub: pb_grpc.LockServiceStub, metadata: Any, traced: bool) -> None:
        self.call: Any = stub.Lock(metadata=metadata)
        # Opened in a trace (its metadata names it): serves one block, never pooled.
        self.traced = traced
        self.holder: AsyncHeldLock | None = None
        self.used = False
        self.releasing: tuple[str, int] | None = None
        self.settled = asyncio.Event()
        self.call.add_done_callback(self._ended)

    def _ended(self, call: Any) -> None:
        holder = self.holder
        if holder is not None:
            task = asyncio.ensure_future(self._tell(holder))
            _BACKGROUND.add(task)
            task.add_done_callback(_BACKGROUND.discard)

    async def _tell(self, holder: AsyncHeldLock) -> None:
        holder._lose(await self.ended_error())

    async def ended_error(self) -> LockLostError:
        return lost_error(await self.call.code(), await self.call.details())

    async def settle(self) -> bool:
        """Read the answer to the release sent last; False when the stream is unusable."""
        if self.releasing is None:
            return not self.call.done()
        conversation_id, number = self.releasing
        try:
            while True:
                message = await self.call.read()
                if message is _EOF:
                    raise LockError("the Lock stream ended before answering release")
                if message.WhichOneof("event") == "released":
                    return True
        except (grpc.RpcError, LockError) as error:
            if isinstance(error, grpc.RpcError):
                error = from_rpc_error(error)
            _log_failed_release(conversation_id, number, error)
            return False
        finally:
            self.releasing = None
            self.settled.set()

    def close(self) -> None:
        if self.releasing is not None:
            conversation_id, number = self.releasing
            self.releasing = None
            _log_failed_release(conversation_id, number, LockError("its answer was never read"))
        self.settled.set()
        self.call.cancel()

    async def finish(self, timeout: float) -> None:
        """End an idle stream as a finished call (see ``_SyncStream.finish``)."""
        # What does not end by itself within the bound, close() cancels.
        with contextlib.suppress(asyncio.TimeoutError, grpc.RpcError, asyncio.InvalidStateError):
            await asyncio.wait_for(self._read_to_end(), timeout)
        self.close()

    async def _read_to_end(self) -> None:
        await self.call.done_writing()
        while await self.call.read() is not grpc.aio.EOF:  # type: ignore[attr-defined]
            pass


# An exit this close to the ticket's expiry (or past it) reads the answer to its
# release before it returns: the ticket may have run out before the exit.
_EXPIRY_MARGIN = 2.0


def _may_have_run_out(ticket: Ticket) -> bool:
    return time.time() >= ticket.expires - _EXPIRY_MARGIN


# How long closing a client waits for the server to end each idle pooled stream
# (it ends a half-closed stream without a ticket at once), before cancelling it.
_FINISH_TIMEOUT = 1.0


# Tasks that outlive the call that started them, kept from the garbage collector.
_BACKGROUND: set[asyncio.Future[Any]] = set()


class AsyncLockClient:
    """The asyncio twin of ``LockClient``, with the same arguments and errors.

    Use it inside one running event loop (a grpc.aio channel belongs to its loop),
    as an async context manager or with ``await client.close()``.

    >>> async with AsyncLockClient("localhost:50051") as client:
    ...     async with client.lock("conv-1", lock_lifetime=30, auto_refresh=True) as held:
    ...         await handle_message()
    """

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        tls: bool | grpc.ChannelCredentials = False,
        token: str | None = None,
        timeout: float | None = DEFAULT_TIMEOUT,
        options: Sequence[tuple[str, Any]] = (),
        keepalive_time: float = DEFAULT_KEEPALIVE_TIME,
        keepalive_timeout: float = DEFAULT_KEEPALIVE_TIMEOUT,
        max_idle_streams: int = DEFAULT_MAX_IDLE_STREAMS,
        issue_order: IssueOrder | None = None,
    ) -> None:
        credentials, merged = _channel_args(tls, options, keepalive_time, keepalive_timeout)
        self._channel = (
            grpc.aio.insecure_channel(target, merged)
            if credentials is None
            else grpc.aio.secure_channel(target, credentials, merged)
        )
        self._stub = pb_grpc.LockServiceStub(self._channel)
        self._metadata = _metadata(token)
        self._lock_metadata = _lock_metadata(token)
        self._timeout = timeout
        self._issue_order = issue_order or IssueOrder()
        self._max_idle = max_idle_streams
        self._idle: list[_AsyncStream] = []
        self._releasing: dict[str, _AsyncStream] = {}

    async def close(self) -> None:
        """Read the answers of pending releases (logging failures), then close the channel."""
        idle, self._idle = self._idle, []
        for stream in idle:
            if await self._settle_within(stream, self._timeout) and not stream.call.done():
                await stream.finish(_FINISH_TIMEOUT)
            stream.close()
        await self._channel.close(None)

    async def __aenter__(self) -> AsyncLockClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _call(self, method: Any, request: Any, conversation_id: str | None = None) -> Any:
        if conversation_id is not None and self._releasing:
            await self._flush(conversation_id)
        try:
            return await method(request, timeout=self._timeout, metadata=with_trace(self._metadata))
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None

    # -- the store interface ---------------------------------------------------------

    async def get_lock(self, conversation_id: str) -> TicketLock | None:
        """The conversation's lock minus expired tickets, or None (see ``LockClient``)."""
        request = pb.GetLockRequest(conversation_id=conversation_id)
        response = await self._call(self._stub.GetLock, request, conversation_id)
        return lock_from_pb(response.lock) if response.HasField("lock") else None

    async def save_lock(self, lock: TicketLock) -> None:
        """Replace the conversation's lock with ``lock`` (see ``LockClient.save_lock``)."""
        request = pb.SaveLockRequest(lock=lock_to_pb(lock))
        await self._call(self._stub.SaveLock, request, lock.conversation_id)

    async def delete_lock(self, conversation_id: str) -> bool:
        """Delete the conversation's lock; True when there was one."""
        request = pb.DeleteLockRequest(conversation_id=conversation_id)
        return bool((await self._call(self._stub.DeleteLock, request, conversation_id)).deleted)

    async def issue(self, conversation_id: str, lock_lifetime: float = 0) -> IssuedTicket:
        """Queue a ticket, in the order of the calls (see ``LockClient.issue``)."""
        request = pb.IssueTicketRequest(
            conversation_id=conversation_id, lifetime_seconds=lock_lifetime
        )
        turn = self._issue_order.take(conversation_id)
        try:
            await turn.wait_ahead_async()
            response = await self._call(self._stub.IssueTicket, request, conversation_id)
        finally:
            turn.finish_after_ahead()
        return IssuedTicket(ticket_from_pb(response.ticket), response.now_serving)

    async def issue_ticket(self, conversation_id: str, lock_lifetime: float = 0) -> int:
        """Queue a ticket and return its number (see ``LockClient.issue``)."""
        return (await self.issue(conversation_id, lock_lifetime)).ticket.number

    async def wait_for_ticket(
        self, conversation_id: str, ticket_number: int, timeout: float | None = None
    ) -> TicketLock:
        """Wait until the ticket holds the lock (see ``LockClient.wait_for_ticket``)."""
        if self._releasing:
            await self._flush(conversation_id)
        request = pb.WaitForTicketRequest(
            conversation_id=conversation_id, ticket_number=ticket_number
        )
        acquired: TicketLock | None = None
        try:
            # Read on to the stream's end (see LockClient.wait_for_ticket).
            async for message in self._stub.WaitForTicket(
                request, timeout=timeout, metadata=with_trace(self._metadata)
            ):
                if message.acquired:
                    acquired = lock_from_pb(message.lock)
        except grpc.RpcError as error:
            if acquired is None:
                raise from_rpc_error(error) from None
        if acquired is None:
            raise LockError("WaitForTicket ended without acquiring")
        return acquired

    async def finish_serving(self, conversation_id: str, ticket_number: int) -> None:
        """Remove the ticket from the queue; a missing one is no error."""
        request = pb.FinishServingRequest(
            conversation_id=conversation_id, ticket_number=ticket_number
        )
        await self._call(self._stub.FinishServing, request, conversation_id)

    async def cleanup(self, conversation_id: str, ticket_number: int) -> bool:
        """Finish the ticket and delete the lock if nobody waits; True when deleted."""
        request = pb.CleanupRequest(conversation_id=conversation_id, ticket_number=ticket_number)
        return bool((await self._call(self._stub.Cleanup, request, conversation_id)).lock_deleted)

    async def is_someone_waiting(self, conversation_id: str) -> bool:
        """Whether the conversation's queue holds any unexpired ticket."""
        request = pb.IsSomeoneWaitingRequest(conversation_id=conversation_id)
        response = await self._call(self._stub.IsSomeoneWaiting, request, conversation_id)
        return bool(response.waiting)

    async def refresh_ticket(
        self, conversation_id: str, ticket_number: int, lock_lifetime: float = 0
    ) -> Ticket:
        """Give a ticket of ``issue()`` a new expiry (see ``LockClient.refresh_ticket``)."""
        request = pb.RefreshTicketRequest(
            conversation_id=conversation_id,
            ticket_number=ticket_number,
            lifetime_seconds=lock_lifetime,
        )
        response = await self._call(self._stub.RefreshTicket, request, conversation_id)
        return ticket_from_pb(response.ticket)

    # -- the session-bound lock ----------------------------------------------------------

    @contextlib.asynccontextmanager
    async def lock(
        self,
        conversation_id: str,
        lock_lifetime: float = 0,
        *,
        timeout: float | None = None,
        blocking: bool = True,
        auto_refresh: bool = False,
    ) -> AsyncIterator[AsyncHeldLock]:
        """Hold the conversation's lock for the ``async with`` block.

        Arguments, errors and the lost-lock signal as ``LockClient.lock``; yields an
        ``AsyncHeldLock`` whose ``lost`` is an ``asyncio.Event``.

        >>> async with client.lock("conv-1", 30, auto_refresh=True) as held:
        ...     reply = await asyncio.wait_for(call_llm(), 120)
        >>> async with client.lock("conv-1", blocking=False):  # LockTimeoutError if busy
        ...     ...
        """
        try_only = _try_only(timeout, blocking)
        # A try-lock waits for nothing but the first answer: bound it as a unary call.
        bound = self._timeout if try_only else timeout
        try:
            held, stream = await asyncio.wait_for(
                self._acquire(conversation_id, lock_lifetime, try_only), bound
            )
        except asyncio.TimeoutError:
            raise _timed_out(conversation_id, bound) from None
        if auto_refresh:
            held._start_refreshing(lock_lifetime)
        try:
            yield held
        except BaseException:
            stream.holder = None
            held._stream = None
            # Cancelling the call frees the ticket on the server at once.
            stream.close()
            if held._refresher is not None:
                held._refresher.cancel()
            raise
        await held._stop()
        stream.holder = None
        held._stream = None
        if held.error is not None or stream.call.done():
            stream.close()
            raise held.error or await stream.ended_error()
        try:
            await stream.call.write(_RELEASE)
        except (grpc.RpcError, asyncio.InvalidStateError):
            stream.close()
            raise await stream.ended_error() from None
        if _may_have_run_out(held.ticket):
            # See LockClient.lock: a lost lock is raised by this exit.
            await self._read_released(stream)
            await self._keep(stream)
            return
        await self._give_back(stream, (conversation_id, held.ticket.number))

    async def _acquire(
        self, conversation_id: str, lock_lifetime: float, try_only: bool
    ) -> tuple[AsyncHeldLock, _AsyncStream]:
        turn: Turn | None
        if try_only:
            turn = self._issue_order.take_if_first(conversation_id)
            if turn is None:
                raise _busy(conversation_id)
        else:
            turn = self._issue_order.take(conversation_id)
        request = _acquire_request(conversation_id, lock_lifetime)
        try:
            await turn.wait_ahead_async()
            for fresh in (False, True):
                stream = await self._stream(fresh)
                try:
                    # Sent before the answer to the stream's last release is read:
                    # the server issues the new ticket once the old one is gone.
                    await stream.call.write(request)
                    if stream.releasing is not None and not await self._settle(stream):
                        stream.close()  # the acquire crossed the stream's end: not acted on
                        continue
                    first = await stream.call.read()
                    if first is not _EOF:
                        turn.finish()
                    elif stream.used and not fresh:
                        stream.close()  # ended before it read acquire: use a new one
                        continue
                    ticket = await self._await_acquired(stream, first, try_only, conversation_id)
                    if ticket is None:
                        raise _Busy()
                except _Busy:
                    raise _busy(conversation_id) from None
                except (grpc.RpcError, asyncio.InvalidStateError) as error:
                    stream.close()
                    if stream.used and not fresh and not turn.done:
                        continue  # a pooled stream that broke before it answered
                    if isinstance(error, grpc.RpcError):
                        raise from_rpc_error(error) from None
                    raise await _finished_call_error(stream.call) from None
                except BaseException:
                    stream.close()  # timeout or cancellation: the server frees the ticket
                    raise
                stream.used = True
                held = AsyncHeldLock(conversation_id, ticket)
                held._lifetime = lock_lifetime
                held._stream = stream
                stream.holder = held
                if stream.call.done():
                    held._lose(await stream.ended_error())
                return held, stream
            raise LockError("the Lock stream ended before the lock was acquired")
        finally:
            turn.finish_after_ahead()

    async def _await_acquired(
        self, stream: _AsyncStream, message: Any, try_only: bool, conversation_id: str
    ) -> Ticket | None:
        """The ticket once acquired; None when a try-lock found the lock taken."""
        while True:
            if message is _EOF:
                raise await _finished_call_error(stream.call)
            event = message.WhichOneof("event")
            if event == "acquired":
                return ticket_from_pb(message.acquired.ticket)
            if try_only and event == "queued":
                # Not free now: give the place up on this stream, and keep the stream.
                await stream.call.write(_RELEASE)
                stream.used = True
                await self._give_back(stream, (conversation_id, message.queued.ticket.number))
                return None
            message = await stream.call.read()

    # -- the stream pool ------------------------------------------------------------------

    async def _stream(self, fresh: bool) -> _AsyncStream:
        """An idle stream, or a new one (one that carries the trace, inside a trace)."""
        traced = with_trace(self._lock_metadata)
        if traced is not self._lock_metadata:
            return _AsyncStream(self._stub, traced, traced=True)
        while self._idle and not fresh:
            stream = self._idle.pop()  # the newest: its connection is warm
            if not stream.call.done() or stream.releasing is not None:
                return stream
            stream.close()
        return _AsyncStream(self._stub, self._lock_metadata, traced=False)

    async def _settle(self, stream: _AsyncStream) -> bool:
        releasing = stream.releasing
        usable = await stream.settle()
        if releasing is not None and self._releasing.get(releasing[0]) is stream:
            del self._releasing[releasing[0]]
        return usable

    async def _settle_within(self, stream: _AsyncStream, timeout: float | None) -> bool:
        try:
            return await asyncio.wait_for(self._settle(stream), timeout)
        except asyncio.TimeoutError:
            return False

    async def _read_released(self, stream: _AsyncStream) -> None:
        """Read ``released``, or raise the ``LockLostError`` the stream ended with."""

        async def answer() -> bool:
            while True:
                message = await stream.call.read()
                if message is _EOF:
                    return False
                if message.WhichOneof("event") == "released":
                    return True

        try:
            released = await asyncio.wait_for(answer(), self._timeout)
        except (grpc.RpcError, asyncio.InvalidStateError, asyncio.TimeoutError):
            released = False
        if not released:
            stream.close()
            raise await stream.ended_error()

    async def _keep(self, stream: _AsyncStream) -> None:
        """Pool a stream whose last release is answered, if there is room."""
        if not stream.traced and len(self._idle) < self._max_idle:
            self._idle.append(stream)
            return
        await stream.finish(_FINISH_TIMEOUT)

    async def _give_back(self, stream: _AsyncStream, releasing: tuple[str, int]) -> None:
        stream.releasing = releasing
        stream.settled = asyncio.Event()
        self._releasing[releasing[0]] = stream
        if not stream.traced and len(self._idle) < self._max_idle:
            self._idle.append(stream)
            return
        # Not kept (the pool is full, or it belongs to a trace): read its answer now,
        # and end it as a finished call.
        if await self._settle_within(stream, self._timeout) and not stream.call.done():
            await stream.finish(_FINISH_TIMEOUT)
        stream.close()

    async def _flush(self, conversation_id: str) -> None:
        """Wait for the answer to this client's pending release of the conversation."""
        stream = self._releasing.get(conversation_id)
        if stream is None:
            return
        if stream not in self._idle:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stream.settled.wait(), self._timeout)
            if self._releasing.get(conversation_id) is stream:
                del self._releasing[conversation_id]
            return
        self._idle.remove(stream)
        if await self._settle_within(stream, self._timeout) and len(self._idle) < self._max_idle:
            self._idle.append(stream)
        else:
            stream.close()
