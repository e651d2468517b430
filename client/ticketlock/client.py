"""``LockClient`` and ``AsyncLockClient``: the lock store interface over gRPC.

Both mirror a Rasa lock store (``get_lock``, ``save_lock``, ``delete_lock``,
``issue_ticket``, ``finish_serving``, ``cleanup``, ``is_someone_waiting``) and add
``lock()``, a context manager that queues on a session-bound ``Lock`` stream: the
wait is pushed by the server, and the ticket is released on exit, on an exception,
on cancellation, and (by the server) if this process dies.

Idempotent calls are retried on UNAVAILABLE by gRPC's own retry policy;
``IssueTicket`` is not, since a retry could queue a second ticket.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import queue
import threading
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from ticketlock.convert import lock_from_pb, lock_to_pb, ticket_from_pb
from ticketlock.errors import LockError, LockTimeoutError, from_rpc_error, from_status
from ticketlock.model import Ticket, TicketLock
from ticketlock.v1 import lock_service_pb2 as pb
from ticketlock.v1 import lock_service_pb2_grpc as pb_grpc

DEFAULT_TARGET = "localhost:50051"
# The end-of-stream marker of grpc.aio reads (missing from the type stubs).
_EOF: Any = grpc.aio.EOF  # type: ignore[attr-defined]
DEFAULT_TIMEOUT = 10.0
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
        return self.ticket.number == self.now_serving


@dataclass(slots=True)
class HeldLock:
    """The lock held inside ``lock()``; ``ticket.number`` is a fencing token."""

    conversation_id: str
    ticket: Ticket

    @property
    def fencing_token(self) -> int:
        return self.ticket.number


def _channel_args(
    tls: bool | grpc.ChannelCredentials, options: Sequence[tuple[str, Any]]
) -> tuple[grpc.ChannelCredentials | None, list[tuple[str, Any]]]:
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
    ]
    return credentials, merged + list(options)


def _metadata(token: str | None) -> tuple[tuple[str, str], ...] | None:
    return None if token is None else (("authorization", f"Bearer {token}"),)


def _acquire_request(conversation_id: str, lock_lifetime: float) -> pb.LockRequest:
    return pb.LockRequest(
        acquire=pb.Acquire(conversation_id=conversation_id, lifetime_seconds=lock_lifetime)
    )


_RELEASE = pb.LockRequest(release=pb.Release())


class LockClient:
    """Blocking client. ``timeout`` bounds each unary call; ``lock(timeout=)`` the wait.

    ``tls``: False (plain), True (system roots) or ``grpc.ssl_channel_credentials(...)``
    for a private CA or client certificates. ``token``: sent as
    ``authorization: Bearer <token>``.
    """

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        tls: bool | grpc.ChannelCredentials = False,
        token: str | None = None,
        timeout: float | None = DEFAULT_TIMEOUT,
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        credentials, merged = _channel_args(tls, options)
        self._channel = (
            grpc.insecure_channel(target, merged)
            if credentials is None
            else grpc.secure_channel(target, credentials, merged)
        )
        self._stub = pb_grpc.LockServiceStub(self._channel)
        self._metadata = _metadata(token)
        self._timeout = timeout

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> LockClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: Any, request: Any) -> Any:
        try:
            return method(request, timeout=self._timeout, metadata=self._metadata)
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None

    def get_lock(self, conversation_id: str) -> TicketLock | None:
        response = self._call(
            self._stub.GetLock, pb.GetLockRequest(conversation_id=conversation_id)
        )
        return lock_from_pb(response.lock) if response.HasField("lock") else None

    def save_lock(self, lock: TicketLock) -> None:
        self._call(self._stub.SaveLock, pb.SaveLockRequest(lock=lock_to_pb(lock)))

    def delete_lock(self, conversation_id: str) -> bool:
        request = pb.DeleteLockRequest(conversation_id=conversation_id)
        return bool(self._call(self._stub.DeleteLock, request).deleted)

    def issue(self, conversation_id: str, lock_lifetime: float = 0) -> IssuedTicket:
        """Queue a ticket; ``.acquired`` tells whether it holds the lock already."""
        request = pb.IssueTicketRequest(
            conversation_id=conversation_id, lifetime_seconds=lock_lifetime
        )
        response = self._call(self._stub.IssueTicket, request)
        return IssuedTicket(ticket_from_pb(response.ticket), response.now_serving)

    def issue_ticket(self, conversation_id: str, lock_lifetime: float = 0) -> int:
        """Queue a ticket and return its number (0 lifetime = the server's default)."""
        return self.issue(conversation_id, lock_lifetime).ticket.number

    def wait_for_ticket(
        self, conversation_id: str, ticket_number: int, timeout: float | None = None
    ) -> TicketLock:
        """Block until the ticket holds the lock; return the lock at that moment."""
        request = pb.WaitForTicketRequest(
            conversation_id=conversation_id, ticket_number=ticket_number
        )
        acquired: TicketLock | None = None
        try:
            # Read on to the stream's end, which follows ``acquired`` at once: leaving
            # early would cancel a call that succeeded, and the server would count it so.
            for message in self._stub.WaitForTicket(
                request, timeout=timeout, metadata=self._metadata
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
        request = pb.FinishServingRequest(
            conversation_id=conversation_id, ticket_number=ticket_number
        )
        self._call(self._stub.FinishServing, request)

    def cleanup(self, conversation_id: str, ticket_number: int) -> bool:
        """Finish the ticket and delete the lock if nobody waits; True when deleted."""
        request = pb.CleanupRequest(conversation_id=conversation_id, ticket_number=ticket_number)
        return bool(self._call(self._stub.Cleanup, request).lock_deleted)

    def is_someone_waiting(self, conversation_id: str) -> bool:
        request = pb.IsSomeoneWaitingRequest(conversation_id=conversation_id)
        return bool(self._call(self._stub.IsSomeoneWaiting, request).waiting)

    def refresh_ticket(
        self, conversation_id: str, ticket_number: int, lock_lifetime: float = 0
    ) -> Ticket:
        request = pb.RefreshTicketRequest(
            conversation_id=conversation_id,
            ticket_number=ticket_number,
            lifetime_seconds=lock_lifetime,
        )
        return ticket_from_pb(self._call(self._stub.RefreshTicket, request).ticket)

    @contextlib.contextmanager
    def lock(
        self, conversation_id: str, lock_lifetime: float = 0, *, timeout: float | None = None
    ) -> Iterator[HeldLock]:
        """Hold the conversation's lock for the ``with`` block.

        Waits (pushed by the server) at most ``timeout`` seconds, then raises
        ``LockTimeoutError``. The lock is released when the block ends, however it
        ends.
        """
        requests: queue.SimpleQueue[pb.LockRequest | None] = queue.SimpleQueue()
        requests.put(_acquire_request(conversation_id, lock_lifetime))
        call = self._stub.Lock(iter(requests.get, None), metadata=self._metadata)
        timed_out = threading.Event()

        def expire() -> None:
            timed_out.set()
            call.cancel()

        timer = threading.Timer(timeout, expire) if timeout is not None else None
        try:
            if timer is not None:
                timer.daemon = True
                timer.start()
            try:
                ticket = _await_acquired(call)
            except grpc.RpcError as error:
                if timed_out.is_set():
                    raise LockTimeoutError(
                        f"lock for {conversation_id!r} not acquired within {timeout} s",
                        grpc.StatusCode.DEADLINE_EXCEEDED,
                    ) from None
                raise from_rpc_error(error) from None
            finally:
                if timer is not None:
                    timer.cancel()
            if timed_out.is_set():
                # The timer fired just after the acquisition and cancelled the call:
                # the server has freed the ticket, so the lock is not held.
                raise LockTimeoutError(
                    f"lock for {conversation_id!r} not acquired within {timeout} s",
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                )
            yield HeldLock(conversation_id, ticket)
            requests.put(_RELEASE)
            try:
                for _ in call:  # the released message, then the end of the stream
                    pass
            except grpc.RpcError as error:
                raise from_rpc_error(error) from None
        finally:
            requests.put(None)
            call.cancel()  # a no-op after a clean release; frees the ticket otherwise


def _await_acquired(call: Any) -> Ticket:
    for message in call:
        if message.WhichOneof("event") == "acquired":
            return ticket_from_pb(message.acquired.ticket)
    raise LockError("the Lock stream ended before the lock was acquired")


async def _finished_call_error(call: Any) -> LockError:
    """The error a finished aio call ended with."""
    return from_status(await call.code(), await call.details())


class AsyncLockClient:
    """The asyncio twin of ``LockClient`` (use inside a running event loop)."""

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        tls: bool | grpc.ChannelCredentials = False,
        token: str | None = None,
        timeout: float | None = DEFAULT_TIMEOUT,
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        credentials, merged = _channel_args(tls, options)
        self._channel = (
            grpc.aio.insecure_channel(target, merged)
            if credentials is None
            else grpc.aio.secure_channel(target, credentials, merged)
        )
        self._stub = pb_grpc.LockServiceStub(self._channel)
        self._metadata = _metadata(token)
        self._timeout = timeout

    async def close(self) -> None:
        await self._channel.close(None)

    async def __aenter__(self) -> AsyncLockClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _call(self, method: Any, request: Any) -> Any:
        try:
            return await method(request, timeout=self._timeout, metadata=self._metadata)
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None

    async def get_lock(self, conversation_id: str) -> TicketLock | None:
        request = pb.GetLockRequest(conversation_id=conversation_id)
        response = await self._call(self._stub.GetLock, request)
        return lock_from_pb(response.lock) if response.HasField("lock") else None

    async def save_lock(self, lock: TicketLock) -> None:
        await self._call(self._stub.SaveLock, pb.SaveLockRequest(lock=lock_to_pb(lock)))

    async def delete_lock(self, conversation_id: str) -> bool:
        request = pb.DeleteLockRequest(conversation_id=conversation_id)
        return bool((await self._call(self._stub.DeleteLock, request)).deleted)

    async def issue(self, conversation_id: str, lock_lifetime: float = 0) -> IssuedTicket:
        request = pb.IssueTicketRequest(
            conversation_id=conversation_id, lifetime_seconds=lock_lifetime
        )
        response = await self._call(self._stub.IssueTicket, request)
        return IssuedTicket(ticket_from_pb(response.ticket), response.now_serving)

    async def issue_ticket(self, conversation_id: str, lock_lifetime: float = 0) -> int:
        return (await self.issue(conversation_id, lock_lifetime)).ticket.number

    async def wait_for_ticket(
        self, conversation_id: str, ticket_number: int, timeout: float | None = None
    ) -> TicketLock:
        request = pb.WaitForTicketRequest(
            conversation_id=conversation_id, ticket_number=ticket_number
        )
        acquired: TicketLock | None = None
        try:
            # Read on to the stream's end (see LockClient.wait_for_ticket).
            async for message in self._stub.WaitForTicket(
                request, timeout=timeout, metadata=self._metadata
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
        request = pb.FinishServingRequest(
            conversation_id=conversation_id, ticket_number=ticket_number
        )
        await self._call(self._stub.FinishServing, request)

    async def cleanup(self, conversation_id: str, ticket_number: int) -> bool:
        request = pb.CleanupRequest(conversation_id=conversation_id, ticket_number=ticket_number)
        return bool((await self._call(self._stub.Cleanup, request)).lock_deleted)

    async def is_someone_waiting(self, conversation_id: str) -> bool:
        request = pb.IsSomeoneWaitingRequest(conversation_id=conversation_id)
        return bool((await self._call(self._stub.IsSomeoneWaiting, request)).waiting)

    async def refresh_ticket(
        self, conversation_id: str, ticket_number: int, lock_lifetime: float = 0
    ) -> Ticket:
        request = pb.RefreshTicketRequest(
            conversation_id=conversation_id,
            ticket_number=ticket_number,
            lifetime_seconds=lock_lifetime,
        )
        return ticket_from_pb((await self._call(self._stub.RefreshTicket, request)).ticket)

    @contextlib.asynccontextmanager
    async def lock(
        self, conversation_id: str, lock_lifetime: float = 0, *, timeout: float | None = None
    ) -> AsyncIterator[HeldLock]:
        """Hold the conversation's lock for the ``async with`` block (see ``LockClient.lock``)."""
        call = self._stub.Lock(metadata=self._metadata)
        try:
            try:
                ticket = await asyncio.wait_for(
                    self._acquire(call, conversation_id, lock_lifetime), timeout
                )
            except asyncio.TimeoutError:
                raise LockTimeoutError(
                    f"lock for {conversation_id!r} not acquired within {timeout} s",
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                ) from None
            except grpc.RpcError as error:
                raise from_rpc_error(error) from None
            yield HeldLock(conversation_id, ticket)
            if call.done():
                # The server ended the hold first (the ticket ran out, or shutdown).
                raise await _finished_call_error(call)
            try:
                await call.write(_RELEASE)
                # ``released`` means the ticket is gone; the stream's end adds nothing.
                await call.read()
            except grpc.RpcError as error:
                raise from_rpc_error(error) from None
            except asyncio.InvalidStateError:
                raise await _finished_call_error(call) from None
        finally:
            # After a clean release this is a no-op; otherwise (exception,
            # cancellation, timeout) the server frees the ticket at once.
            call.cancel()

    @staticmethod
    async def _acquire(call: Any, conversation_id: str, lock_lifetime: float) -> Ticket:
        await call.write(_acquire_request(conversation_id, lock_lifetime))
        while True:
            message = await call.read()
            if message is _EOF:
                raise LockError("the Lock stream ended before the lock was acquired")
            if message.WhichOneof("event") == "acquired":
                return ticket_from_pb(message.acquired.ticket)
