"""``Lock`` sessions: the state machine of one session stream.

A session issues a ticket, answers ``queued`` while it waits for its turn and
``acquired`` when it holds the lock, serves ``refresh`` and ``release``, and
frees the ticket at once when the stream ends any other way. It knows nothing of
the servicer: it is given the stream, the store, the wake-up hub, the settings
and a callback for the changes it makes.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from ticketlock.convert import ticket_to_pb
from ticketlock.model import DEFAULT_LOCK_LIFETIME, Ticket
from ticketlock.v1 import lock_service_pb2 as pb

from ticketlock_server import validation as check
from ticketlock_server.config import DEFAULT_IDLE_STREAM_TIMEOUT, DEFAULT_RECHECK_INTERVAL
from ticketlock_server.rpc import EOF, Context, parsed
from ticketlock_server.stores.base import Issued, LockStore, StoreUnavailable
from ticketlock_server.validation import InvalidArgument
from ticketlock_server.waiting import ShuttingDown, TicketNotFound, WakeHub, wait_for_turn

Result = TypeVar("Result")


@dataclass(frozen=True, slots=True)
class Settings:
    """What the handlers and sessions need to know beyond the store."""

    default_lifetime: float = float(DEFAULT_LOCK_LIFETIME)
    # Bound on how long the first waiter of a conversation sleeps without a
    # re-check, in case a cross-replica wake-up is lost.
    recheck_interval: float = DEFAULT_RECHECK_INTERVAL
    # A Lock stream without a ticket that receives nothing this long is ended (OK).
    idle_stream_timeout: float = DEFAULT_IDLE_STREAM_TIMEOUT


# Call metadata with which a client asks to keep its Lock stream after ``released``.
REUSE_METADATA = ("ticketlock-reuse", "1")


def _wants_reuse(context: Context) -> bool:
    return any((key, value) == REUSE_METADATA for key, value in context.invocation_metadata() or ())


# Tasks that outlive the call that started them, kept from the garbage collector.
_BACKGROUND: set[asyncio.Future[Any]] = set()


def _retrieve(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()


def lost_reason(error: BaseException) -> str:
    """Why a hold ended without a release, for the metrics."""
    if isinstance(error, TicketNotFound):
        return "expiry"
    if isinstance(error, ShuttingDown):
        return "shutdown"
    if isinstance(error, asyncio.CancelledError):
        return "disconnect"
    return "error"


class LockSession:
    """One ``Lock`` stream: a ticket whose life is bound to the stream's.

    A stream whose call carries the ``ticketlock-reuse: 1`` metadata lives on
    after ``released`` and serves the next ``acquire``, one ticket at a time; any
    other stream ends after its first ``released``, as before streams could be
    reused. A stream without a ticket that stays idle for ``idle_stream_timeout``,
    or when the server shuts down, ends with OK.

    The uncontended path costs no extra task: the handler issues the ticket,
    answers, and then simply reads the client's next message. Events that must
    interrupt that read (the ticket running out, the server stopping, an idle
    stream's timer) cancel the handler's task after recording why.
    """

    def __init__(
        self,
        context: Context,
        store: LockStore,
        hub: WakeHub,
        settings: Settings,
        on_change: Callable[[str], None],
        on_acquired_after: Callable[[float], None] | None = None,
        on_hold_ended: Callable[[float, str | None], None] | None = None,
    ) -> None:
        """``on_change(conversation_id)`` is called after every change this session
        makes to the store (a wake-up for the conversation's waiters here), also
        when the change failed: it may have been applied. ``on_acquired_after`` is
        told how long a queued ticket waited for its turn (metrics). ``on_hold_ended``
        is told how long each hold lasted and, when it ended without a release,
        why the lock was lost (``lost_reason``).
        """
        self._context = context
        self._store = store
        self._hub = hub
        self._settings = settings
        self._on_change = on_change
        self._on_acquired_after = on_acquired_after
        self._on_hold_ended = on_hold_ended
        self._reusable = _wants_reuse(context)
        self._write_lock = asyncio.Lock()
        self._task: asyncio.Task[Any] | None = None
        # Set while the stream holds no ticket and waits for the next acquire.
        self._idle = False
        self._idle_ended = False
        self._start_cycle("")

    def _start_cycle(self, conversation_id: str) -> None:
        self._conversation_id = conversation_id
        self._ticket = Ticket(-1, 0.0)
        # The numbering run the ticket was issued in (see LockStore.cleanup).
        self._epoch = ""
        self._released = False
        self._keep_ticket = False
        self._interruption: Exception | None = None
        self._expiry: asyncio.TimerHandle | None = None
        self._expiry_check: asyncio.Future[None] | None = None

    async def run(self) -> None:
        self._task = asyncio.current_task()
        message = parsed(await self._read_idle())
        if message is EOF:
            return
        if message.WhichOneof("action") != "acquire":
            raise InvalidArgument("action", "the first message of a Lock stream must be acquire")
        while True:
            await self._cycle(message.acquire)
            if not self._reusable:
                return
            message = parsed(await self._read_idle())
            if message is EOF:
                return
            if message.WhichOneof("action") != "acquire":
                raise InvalidArgument(
                    "action", "a Lock stream that holds no ticket takes only acquire"
                )

    async def _read_idle(self) -> Any:
        """The next message of a stream without a ticket; EOF once it idled too long."""
        if self._hub.closed:
            return EOF
        self._idle = True
        self._hub.idle.add(self)
        timer = asyncio.get_running_loop().call_later(
            self._settings.idle_stream_timeout, self._end_idle
        )
        try:
            return await self._context.read()
        except asyncio.CancelledError:
            if self._idle_ended:
                return EOF
            raise
        finally:
            timer.cancel()
            self._idle = False
            self._hub.idle.discard(self)

    def _end_idle(self) -> None:
        if self._idle and not self._idle_ended:
            self._idle_ended = True
            if self._task is not None:
                self._task.cancel()

    async def _cycle(self, acquire: pb.Acquire) -> None:
        """One ticket: issue it, wait for its turn, hold it until released."""
        self._start_cycle(check.conversation_id(acquire.conversation_id, "acquire.conversation_id"))
        lifetime = self._lifetime(acquire.lifetime_seconds, "acquire.lifetime_seconds")
        if self._hub.closed:
            raise ShuttingDown()
        issued = await self._issue(lifetime)
        self._ticket = issued.ticket
        self._epoch = issued.epoch
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
                # expiry. Shielded, so a cancelled stream still completes it; its
                # failure after the stream is gone (a hung store) is moot.
                release = asyncio.ensure_future(self._release())
                release.add_done_callback(_retrieve)
                with contextlib.suppress(Exception):
                    await asyncio.shield(release)

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
        cleanup = self._store.cleanup(
            self._conversation_id, issued.ticket.number, epoch=issued.epoch
        )
        task = asyncio.ensure_future(self._changing(cleanup))
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
                    if message is EOF:
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
            recheck_interval=self._settings.recheck_interval,
            epoch=self._epoch,
        )
        async with contextlib.aclosing(positions):
            async for position in positions:
                if position.acquired:
                    if self._on_acquired_after is not None:
                        self._on_acquired_after(time.monotonic() - started)
                    await self._write(self._acquired())
                else:
                    queued = self._queued(position.now_serving, position.tickets_ahead)
                    await self._write(queued)

    async def _hold(self, pending_read: asyncio.Future[Any] | None) -> None:
        """Hold the lock until release; NOT_FOUND if the ticket runs out first."""
        held_since = time.monotonic()
        ended: BaseException | None = None
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
                    if message is EOF:
                        # Half-closed: hold until the ticket runs out or the stream ends.
                        await asyncio.Event().wait()
                    if await self._serve(parsed(message)):
                        return
                except asyncio.CancelledError:
                    if self._interruption is None:
                        raise
                    raise self._interruption from None
        except BaseException as error:
            ended = error
            raise
        finally:
            if self._on_hold_ended is not None:
                lost = None if ended is None else lost_reason(ended)
                self._on_hold_ended(time.monotonic() - held_since, lost)
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
            # No longer a holder: a shutdown from here on ends the stream with OK, as
            # it does an idle one, even before `released` is out.
            self._hub.holders.discard(self)
            await self._write(pb.LockResponse(released=pb.Released()))
            return True
        if action == "refresh":
            lifetime = self._lifetime(message.refresh.lifetime_seconds, "refresh.lifetime_seconds")
            refresh = self._store.refresh_ticket(
                self._conversation_id, self._ticket.number, lifetime, epoch=self._epoch
            )
            ticket = await self._changing(refresh)
            if ticket is None:
                raise TicketNotFound(self._conversation_id, self._ticket.number)
            self._ticket = ticket
            if self._expiry is not None:
                self._arm_expiry()
            await self._write(pb.LockResponse(refreshed=pb.Refreshed(ticket=ticket_to_pb(ticket))))
            return False
        if action == "acquire":
            raise InvalidArgument(
                "acquire", "a Lock stream holds one ticket at a time: release it first"
            )
        raise InvalidArgument("action", "must be one of acquire, release, refresh")

    def _arm_expiry(self, delay: float | None = None) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
        if delay is None:
            delay = max(0.0, self._ticket.expires - time.time()) + 0.001
        # Also every recheck_interval: a store that lost its data unseen (flushed, a
        # replica promoted without it) ends the hold within that time.
        delay = min(delay, self._settings.recheck_interval)
        self._expiry = asyncio.get_running_loop().call_later(delay, self._on_expiry)

    def _on_expiry(self) -> None:
        self._expiry_check = asyncio.ensure_future(self._confirm_expiry())

    async def _confirm_expiry(self) -> None:
        # The store, not this process's clock, decides whether the ticket is gone;
        # if it is not (a RefreshTicket from elsewhere, clocks apart), look again
        # at the expiry the store reports.
        try:
            position = await self._store.position(
                self._conversation_id, self._ticket.number, next_change=False, epoch=self._epoch
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
        """End the hold for ``reason`` (called by the expiry check or at shutdown).

        A stream without a ticket simply ends, with OK.
        """
        if self._idle:
            self._end_idle()
            return
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
        cleanup = self._store.cleanup(self._conversation_id, self._ticket.number, epoch=self._epoch)
        await self._changing(cleanup)

    def _lifetime(self, value: float, field: str) -> float:
        maximum = self._store.max_lifetime
        return check.lifetime(value, self._settings.default_lifetime, field, maximum)

    async def _changing(self, change: Awaitable[Result]) -> Result:
        try:
            return await change
        finally:
            self._on_change(self._conversation_id)

    async def _write(self, message: pb.LockResponse) -> None:
        async with self._write_lock:
            await self._context.write(message)
