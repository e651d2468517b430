"""The LockService: validate, call one store step, wake waiters, reply.

Errors are mapped to status codes here and nowhere else: bad fields to
INVALID_ARGUMENT, a missing ticket to NOT_FOUND, an unreachable store or a
shutdown to UNAVAILABLE. Nothing a client sends may end as UNKNOWN or INTERNAL.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar

import grpc
from google.protobuf.message import DecodeError
from google.protobuf.message import Message as ProtoMessage
from ticketlock.convert import lock_to_pb, ticket_to_pb
from ticketlock.model import Ticket
from ticketlock.v1 import lock_service_pb2 as pb
from ticketlock.v1 import lock_service_pb2_grpc as pb_grpc

from ticketlock_server import validation as check
from ticketlock_server.observability import Metrics
from ticketlock_server.stores.base import EpochArgument, Issued, LockStore, StoreUnavailable
from ticketlock_server.validation import InvalidArgument
from ticketlock_server.waiting import ShuttingDown, TicketNotFound, WakeHub, wait_for_turn

log = logging.getLogger(__name__)
# The end-of-stream marker of grpc.aio reads (missing from the type stubs).
_EOF: Any = grpc.aio.EOF  # type: ignore[attr-defined]

Request = TypeVar("Request")
Response = TypeVar("Response")
Result = TypeVar("Result")
Context = grpc.aio.ServicerContext[Any, Any]


@dataclass(frozen=True, slots=True)
class Settings:
    """What the servicer needs to know beyond the store."""

    default_lifetime: float = 60.0
    # Bound on how long the first waiter of a conversation sleeps without a
    # re-check, in case a cross-replica wake-up is lost.
    recheck_interval: float = 5.0


# What a handler may raise to end a call with a status a client can act on.
CLIENT_ERRORS = (InvalidArgument, TicketNotFound, StoreUnavailable, ShuttingDown)


async def _abort_for(error: Exception, context: Context) -> NoReturn:
    if isinstance(error, InvalidArgument):
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
    elif isinstance(error, TicketNotFound):
        await context.abort(grpc.StatusCode.NOT_FOUND, str(error))
    elif isinstance(error, StoreUnavailable):
        await context.abort(grpc.StatusCode.UNAVAILABLE, str(error))
    elif isinstance(error, ShuttingDown):
        await context.abort(
            grpc.StatusCode.UNAVAILABLE, "server is shutting down; retry on another server"
        )
    raise error  # not a client-facing error (abort itself raises)


def _unary(
    handler: Callable[[LockServicer, Request, Context], Awaitable[Response]],
) -> Callable[[LockServicer, Request, Context], Awaitable[Response]]:
    @functools.wraps(handler)
    async def wrapper(self: LockServicer, request: Request, context: Context) -> Response:
        try:
            return await handler(self, parsed(request), context)
        except CLIENT_ERRORS as error:
            await _abort_for(error, context)

    return wrapper


class Malformed:
    """Stands in for a request that does not parse, so the handler can say so.

    grpc would otherwise fail such a call with UNKNOWN before any handler runs.
    """

    def __init__(self, type_name: str, error: DecodeError) -> None:
        self.error = InvalidArgument("request", f"is not a valid {type_name}: {error}")


def _parse(message_class: type[ProtoMessage]) -> Callable[[bytes], Any]:
    def parse(data: bytes) -> Any:
        try:
            return message_class.FromString(data)
        except DecodeError as error:
            return Malformed(message_class.DESCRIPTOR.full_name, error)

    return parse


def parsed(message: Any) -> Any:
    """The message itself, or the INVALID_ARGUMENT it stands for."""
    if isinstance(message, Malformed):
        raise message.error
    return message


def _code_name(context: Context, error: BaseException | None) -> str:
    if isinstance(error, asyncio.CancelledError):
        return "CANCELLED"
    code = context.code()
    if code is None:
        return "OK" if error is None else "UNKNOWN"
    return code.name if isinstance(code, grpc.StatusCode) else str(code)


def _counted(method: str, behaviour: Any, streaming: bool, metrics: Metrics) -> Any:
    """``behaviour`` that counts its calls by method and status code."""
    if streaming:

        async def stream(request: Any, context: Context) -> AsyncIterator[Any]:
            error: BaseException | None = None
            try:
                async for response in behaviour(request, context):
                    yield response
            except BaseException as raised:
                error = raised
                raise
            finally:
                metrics.rpcs.labels(method, _code_name(context, error)).inc()

        return stream

    async def call(request: Any, context: Context) -> Any:
        error: BaseException | None = None
        try:
            return await behaviour(request, context)
        except BaseException as raised:
            error = raised
            raise
        finally:
            metrics.rpcs.labels(method, _code_name(context, error)).inc()

    return call


def add_to_server(
    servicer: LockServicer, server: grpc.aio.Server, metrics: Metrics | None = None
) -> None:
    """Register the LockService like the generated helper, with lenient parsing."""
    service = pb.DESCRIPTOR.services_by_name["LockService"]
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
    for method in service.methods:
        parse = _parse(getattr(pb, method.input_type.name))
        serialize = getattr(pb, method.output_type.name).SerializeToString
        behaviour = getattr(servicer, method.name)
        if metrics is not None:
            streams_out = method.server_streaming and not method.client_streaming
            behaviour = _counted(method.name, behaviour, streams_out, metrics)
        if method.client_streaming:
            make = grpc.stream_stream_rpc_method_handler
        elif method.server_streaming:
            make = grpc.unary_stream_rpc_method_handler
        else:
            make = grpc.unary_unary_rpc_method_handler
        handlers[method.name] = make(
            behaviour, request_deserializer=parse, response_serializer=serialize
        )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(service.full_name, handlers),)
    )


class LockServicer(pb_grpc.LockServiceServicer):
    def __init__(
        self,
        store: LockStore,
        hub: WakeHub,
        settings: Settings,
        metrics: Metrics | None = None,
    ) -> None:
        self._store = store
        self._hub = hub
        self._settings = settings
        self._metrics = metrics

    def _waited(self, started: float) -> None:
        if self._metrics is not None:
            self._metrics.wait_seconds.observe(time.monotonic() - started)

    def _lifetime(self, value: float, field: str = "lifetime_seconds") -> float:
        return check.lifetime(value, self._settings.default_lifetime, field)

    async def _changing(self, conversation_id: str, change: Awaitable[Result]) -> Result:
        """Run a store change, then wake this server's waiters of the conversation.

        Also when the call failed: it may have been applied (a reply lost to a
        timeout), and this server's change feed skips its own publications.
        """
        try:
            return await change
        finally:
            self._hub.notify(conversation_id)

    # -- the lock store interface ----------------------------------------------

    @_unary
    async def GetLock(self, request: pb.GetLockRequest, context: Context) -> pb.GetLockResponse:
        lock = await self._store.get_lock(check.conversation_id(request.conversation_id))
        return pb.GetLockResponse(lock=None if lock is None else lock_to_pb(lock))

    @_unary
    async def SaveLock(self, request: pb.SaveLockRequest, context: Context) -> pb.SaveLockResponse:
        lock = check.ticket_lock(request.lock, request.HasField("lock"))
        await self._changing(lock.conversation_id, self._store.save_lock(lock))
        return pb.SaveLockResponse()

    @_unary
    async def DeleteLock(
        self, request: pb.DeleteLockRequest, context: Context
    ) -> pb.DeleteLockResponse:
        cid = check.conversation_id(request.conversation_id)
        deleted = await self._changing(cid, self._store.delete_lock(cid))
        return pb.DeleteLockResponse(deleted=deleted)

    # -- the ticket protocol ---------------------------------------------------

    @_unary
    async def IssueTicket(
        self, request: pb.IssueTicketRequest, context: Context
    ) -> pb.IssueTicketResponse:
        cid = check.conversation_id(request.conversation_id)
        issued = await self._store.issue_ticket(cid, self._lifetime(request.lifetime_seconds))
        return pb.IssueTicketResponse(
            ticket=ticket_to_pb(issued.ticket), now_serving=issued.now_serving
        )

    async def WaitForTicket(
        self, request: pb.WaitForTicketRequest, context: Context
    ) -> AsyncIterator[pb.WaitForTicketResponse]:
        try:
            request = parsed(request)
            cid = check.conversation_id(request.conversation_id)
            number = check.ticket_number(request.ticket_number)
            started = time.monotonic()
            positions = wait_for_turn(
                self._store,
                self._hub,
                cid,
                number,
                recheck_interval=self._settings.recheck_interval,
                with_lock=True,
            )
            # Closed at once if this handler ends, so the waiter leaves its room now.
            async with contextlib.aclosing(positions):
                async for position in positions:
                    if position.acquired:
                        self._waited(started)
                    yield pb.WaitForTicketResponse(
                        now_serving=position.now_serving,
                        tickets_ahead=position.tickets_ahead,
                        acquired=position.acquired,
                        lock=None if position.lock is None else lock_to_pb(position.lock),
                    )
        except CLIENT_ERRORS as error:
            await _abort_for(error, context)

    @_unary
    async def FinishServing(
        self, request: pb.FinishServingRequest, context: Context
    ) -> pb.FinishServingResponse:
        cid = check.conversation_id(request.conversation_id)
        number = check.ticket_number(request.ticket_number)
        await self._changing(cid, self._store.finish_serving(cid, number))
        return pb.FinishServingResponse()

    @_unary
    async def Cleanup(self, request: pb.CleanupRequest, context: Context) -> pb.CleanupResponse:
        cid = check.conversation_id(request.conversation_id)
        number = check.ticket_number(request.ticket_number)
        deleted = await self._changing(cid, self._store.cleanup(cid, number))
        return pb.CleanupResponse(lock_deleted=deleted)

    @_unary
    async def IsSomeoneWaiting(
        self, request: pb.IsSomeoneWaitingRequest, context: Context
    ) -> pb.IsSomeoneWaitingResponse:
        cid = check.conversation_id(request.conversation_id)
        return pb.IsSomeoneWaitingResponse(waiting=await self._store.is_someone_waiting(cid))

    @_unary
    async def RefreshTicket(
        self, request: pb.RefreshTicketRequest, context: Context
    ) -> pb.RefreshTicketResponse:
        cid = check.conversation_id(request.conversation_id)
        number = check.ticket_number(request.ticket_number)
        # A shorter lifetime can bring the next waiter's turn closer: re-arm its timer.
        lifetime = self._lifetime(request.lifetime_seconds)
        ticket = await self._changing(cid, self._store.refresh_ticket(cid, number, lifetime))
        if ticket is None:
            raise TicketNotFound(cid, number)
        return pb.RefreshTicketResponse(ticket=ticket_to_pb(ticket))

    # -- the session-bound lock -------------------------------------------------

    async def Lock(self, request_iterator: Any, context: Context) -> None:
        try:
            await _LockSession(self, context).run()
        except CLIENT_ERRORS as error:
            await _abort_for(error, context)


# Tasks that outlive the call that started them, kept from the garbage collector.
_BACKGROUND: set[asyncio.Future[Any]] = set()


def _retrieve(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()


class _LockSession:
    """One ``Lock`` stream: a ticket whose life is bound to the stream's.

    The uncontended path costs no extra task: the handler issues the ticket,
    answers, and then simply reads the client's next message. Events that must
    interrupt that read (the ticket running out, the server stopping) cancel the
    handler's task after recording why.
    """

    def __init__(self, servicer: LockServicer, context: Context) -> None:
        self._servicer = servicer
        self._store = servicer._store
        self._hub = servicer._hub
        self._context = context
        self._write_lock = asyncio.Lock()
        self._conversation_id = ""
        self._ticket = Ticket(-1, 0.0)
        # The numbering run the ticket was issued in (see LockStore.cleanup), as
        # keyword arguments: stores without epochs (custom ones) are called without.
        self._epoch: EpochArgument = {}
        self._released = False
        self._keep_ticket = False
        self._task: asyncio.Task[Any] | None = None
        self._interruption: Exception | None = None
        self._expiry: asyncio.TimerHandle | None = None
        self._expiry_check: asyncio.Future[None] | None = None

    async def run(self) -> None:
        first = parsed(await self._context.read())
        if first is _EOF:
            return
        if first.WhichOneof("action") != "acquire":
            raise InvalidArgument("action", "the first message of a Lock stream must be acquire")
        acquire = first.acquire
        self._conversation_id = check.conversation_id(
            acquire.conversation_id, "acquire.conversation_id"
        )
        lifetime = self._servicer._lifetime(acquire.lifetime_seconds, "acquire.lifetime_seconds")
        if self._hub.closed:
            raise ShuttingDown()
        issued = await self._issue(lifetime)
        self._ticket = issued.ticket
        self._epoch = {"epoch": issued.epoch} if issued.epoch else {}
        self._task = asyncio.current_task()
        try:
            pending_read: asyncio.Future[Any] | None = None
            if issued.acquired:
                await self._write(self._acquired())
            else:
                pending_read = await self._queue()
            if not self._released:
                await self._hold(pending_read)
        finally:
            if not self._released and not self._keep_ticket:
                # The stream ended without release: free the ticket now, not at
                # expiry. Shielded, so a cancelled stream still completes it.
                with contextlib.suppress(Exception):
                    await asyncio.shield(self._release())

    async def _issue(self, lifetime: float) -> Issued:
        if not self._store.suspends:
            return await self._store.issue_ticket(self._conversation_id, lifetime)
        issuing = asyncio.ensure_future(self._store.issue_ticket(self._conversation_id, lifetime))
        try:
            return await asyncio.shield(issuing)
        except asyncio.CancelledError:
            # The stream ended while the store was issuing (a Redis round trip): the
            # ticket exists, or soon will, with nobody to release it. Release it
            # once it does, rather than let it block the queue for its lifetime.
            issuing.add_done_callback(self._release_abandoned)
            raise

    def _release_abandoned(self, issuing: asyncio.Future[Issued]) -> None:
        if issuing.cancelled() or issuing.exception() is not None:
            return
        issued = issuing.result()
        epoch: EpochArgument = {"epoch": issued.epoch} if issued.epoch else {}
        cleanup = self._store.cleanup(self._conversation_id, issued.ticket.number, **epoch)
        task = asyncio.ensure_future(self._servicer._changing(self._conversation_id, cleanup))
        _BACKGROUND.add(task)
        task.add_done_callback(_BACKGROUND.discard)
        task.add_done_callback(_retrieve)

    async def _queue(self) -> asyncio.Future[Any] | None:
        """Wait for the turn while serving the client's messages.

        Returns the read still pending when the lock was acquired (None after a
        half-close), for ``_hold`` to continue with.
        """
        waiter = asyncio.ensure_future(self._wait_for_turn())
        # Its failure is raised through result() below, or is moot once the
        # stream is gone (a write to a cancelled stream): never left unretrieved.
        waiter.add_done_callback(_retrieve)
        reader: asyncio.Future[Any] | None = asyncio.ensure_future(self._context.read())
        try:
            while True:
                waiting_on: set[asyncio.Future[Any]] = {waiter}
                if reader is not None:
                    waiting_on.add(reader)
                done, _ = await asyncio.wait(waiting_on, return_when=asyncio.FIRST_COMPLETED)
                if reader is not None and reader in done:
                    message = parsed(reader.result())
                    reader = None
                    if message is _EOF:
                        continue  # half-closed: keep the place in the queue
                    if await self._serve(message):
                        return None
                    reader = asyncio.ensure_future(self._context.read())
                if waiter in done:
                    waiter.result()  # raises why the wait ended, if it failed
                    pending, reader = reader, None
                    return pending
        finally:
            waiter.cancel()
            if reader is not None:
                reader.cancel()

    async def _wait_for_turn(self) -> None:
        started = time.monotonic()
        positions = wait_for_turn(
            self._store,
            self._hub,
            self._conversation_id,
            self._ticket.number,
            recheck_interval=self._servicer._settings.recheck_interval,
            epoch=self._epoch,
        )
        async with contextlib.aclosing(positions):
            async for position in positions:
                if position.acquired:
                    self._servicer._waited(started)
                    await self._write(self._acquired())
                else:
                    queued = self._queued(position.now_serving, position.tickets_ahead)
                    await self._write(queued)

    async def _hold(self, pending_read: asyncio.Future[Any] | None) -> None:
        """Hold the lock until release; NOT_FOUND if the ticket runs out first."""
        self._arm_expiry()
        self._hub.holders.add(self)
        if self._hub.closed:
            # The shutdown began while "acquired" was on its way, before this session
            # was among the holders it interrupts.
            self.interrupt(ShuttingDown())
        try:
            while True:
                try:
                    if pending_read is not None:
                        message = await pending_read
                        pending_read = None
                    else:
                        message = await self._context.read()
                    if message is _EOF:
                        # Half-closed: hold until the ticket runs out or the stream ends.
                        await asyncio.Event().wait()
                    if await self._serve(parsed(message)):
                        return
                except asyncio.CancelledError:
                    if self._interruption is None:
                        raise
                    raise self._interruption from None
        finally:
            self._hub.holders.discard(self)
            if self._expiry is not None:
                self._expiry.cancel()
            if self._expiry_check is not None:
                self._expiry_check.cancel()

    async def _serve(self, message: pb.LockRequest) -> bool:
        """Act on a client message after acquire; True when the stream is done."""
        action = message.WhichOneof("action")
        if action == "release":
            await self._release()
            self._released = True
            await self._write(pb.LockResponse(released=pb.Released()))
            return True
        if action == "refresh":
            lifetime = self._servicer._lifetime(
                message.refresh.lifetime_seconds, "refresh.lifetime_seconds"
            )
            refresh = self._store.refresh_ticket(
                self._conversation_id, self._ticket.number, lifetime, **self._epoch
            )
            ticket = await self._servicer._changing(self._conversation_id, refresh)
            if ticket is None:
                raise TicketNotFound(self._conversation_id, self._ticket.number)
            self._ticket = ticket
            if self._expiry is not None:
                self._arm_expiry()
            await self._write(pb.LockResponse(refreshed=pb.Refreshed(ticket=ticket_to_pb(ticket))))
            return False
        if action == "acquire":
            raise InvalidArgument("acquire", "a Lock stream acquires only once")
        raise InvalidArgument("action", "must be one of acquire, release, refresh")

    def _arm_expiry(self, delay: float | None = None) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
        if delay is None:
            delay = max(0.0, self._ticket.expires - time.time()) + 0.001
        self._expiry = asyncio.get_running_loop().call_later(delay, self._on_expiry)

    def _on_expiry(self) -> None:
        self._expiry_check = asyncio.ensure_future(self._confirm_expiry())

    async def _confirm_expiry(self) -> None:
        # The store, not this process's clock, decides whether the ticket is gone;
        # if it is not (a RefreshTicket from elsewhere, clocks apart), look again
        # at the expiry the store reports.
        try:
            position = await self._store.position(
                self._conversation_id, self._ticket.number, next_change=False, **self._epoch
            )
        except StoreUnavailable:
            self._arm_expiry(1.0)
            return
        if position is None:
            self.interrupt(TicketNotFound(self._conversation_id, self._ticket.number))
        else:
            self._arm_expiry(max(position.expires_in, 0.01) + 0.001)

    def recheck(self) -> None:
        """Ask the store at once whether the ticket is still there (it was unreachable)."""
        if self._expiry is not None:
            self._arm_expiry(0.0)

    def interrupt(self, reason: Exception) -> None:
        """End the hold for ``reason`` (called by the expiry check or at shutdown)."""
        if isinstance(reason, ShuttingDown):
            # The holder is still working under its ticket: keep it, and let the
            # store expire it, rather than let the next waiter in early.
            self._keep_ticket = True
        self._interruption = reason
        if self._task is not None:
            self._task.cancel()

    def _queued(self, now_serving: int, ahead: int) -> pb.LockResponse:
        return pb.LockResponse(
            queued=pb.Queued(
                ticket=ticket_to_pb(self._ticket), now_serving=now_serving, tickets_ahead=ahead
            )
        )

    def _acquired(self) -> pb.LockResponse:
        return pb.LockResponse(acquired=pb.Acquired(ticket=ticket_to_pb(self._ticket)))

    async def _release(self) -> None:
        # Cleanup, not just finish: a released conversation that nobody else
        # waits for leaves no empty lock behind in the store.
        cleanup = self._store.cleanup(self._conversation_id, self._ticket.number, **self._epoch)
        await self._servicer._changing(self._conversation_id, cleanup)

    async def _write(self, message: pb.LockResponse) -> None:
        async with self._write_lock:
            await self._context.write(message)
