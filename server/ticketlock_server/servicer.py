"""The LockService handlers: validate, call one store step, wake waiters, reply.

Errors become status codes in ``rpc.abort_for``; ``Lock`` sessions live in
``sessions``.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Awaitable
from typing import Any, TypeVar

from ticketlock._convert import lock_to_pb, ticket_to_pb
from ticketlock.v1 import lock_service_pb2 as pb
from ticketlock.v1 import lock_service_pb2_grpc as pb_grpc

from ticketlock_server import validation as check
from ticketlock_server.observability import Metrics
from ticketlock_server.rpc import CLIENT_ERRORS, Context, abort_for, parsed, unary
from ticketlock_server.sessions import LockSession, Settings
from ticketlock_server.stores.base import LockStore
from ticketlock_server.waiting import TicketNotFound, WakeHub, wait_for_turn

Result = TypeVar("Result")


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
        self._waited_for(time.monotonic() - started)

    def _waited_for(self, seconds: float) -> None:
        if self._metrics is not None:
            self._metrics.wait_seconds.observe(seconds)

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

    @unary
    async def GetLock(self, request: pb.GetLockRequest, context: Context) -> pb.GetLockResponse:
        lock = await self._store.get_lock(check.conversation_id(request.conversation_id))
        return pb.GetLockResponse(lock=None if lock is None else lock_to_pb(lock))

    @unary
    async def SaveLock(self, request: pb.SaveLockRequest, context: Context) -> pb.SaveLockResponse:
        lock = check.ticket_lock(request.lock, request.HasField("lock"))
        await self._changing(lock.conversation_id, self._store.save_lock(lock))
        return pb.SaveLockResponse()

    @unary
    async def DeleteLock(
        self, request: pb.DeleteLockRequest, context: Context
    ) -> pb.DeleteLockResponse:
        cid = check.conversation_id(request.conversation_id)
        deleted = await self._changing(cid, self._store.delete_lock(cid))
        return pb.DeleteLockResponse(deleted=deleted)

    # -- the ticket protocol ---------------------------------------------------

    @unary
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
            await abort_for(error, context)

    @unary
    async def FinishServing(
        self, request: pb.FinishServingRequest, context: Context
    ) -> pb.FinishServingResponse:
        cid = check.conversation_id(request.conversation_id)
        number = check.ticket_number(request.ticket_number)
        await self._changing(cid, self._store.finish_serving(cid, number))
        return pb.FinishServingResponse()

    @unary
    async def Cleanup(self, request: pb.CleanupRequest, context: Context) -> pb.CleanupResponse:
        cid = check.conversation_id(request.conversation_id)
        number = check.ticket_number(request.ticket_number)
        # The unary protocol knows no numbering run: "" matches the current one.
        deleted = await self._changing(cid, self._store.cleanup(cid, number, epoch=""))
        return pb.CleanupResponse(lock_deleted=deleted)

    @unary
    async def IsSomeoneWaiting(
        self, request: pb.IsSomeoneWaitingRequest, context: Context
    ) -> pb.IsSomeoneWaitingResponse:
        cid = check.conversation_id(request.conversation_id)
        return pb.IsSomeoneWaitingResponse(waiting=await self._store.is_someone_waiting(cid))

    @unary
    async def RefreshTicket(
        self, request: pb.RefreshTicketRequest, context: Context
    ) -> pb.RefreshTicketResponse:
        cid = check.conversation_id(request.conversation_id)
        number = check.ticket_number(request.ticket_number)
        # A shorter lifetime can bring the next waiter's turn closer: re-arm its timer.
        lifetime = self._lifetime(request.lifetime_seconds)
        refresh = self._store.refresh_ticket(cid, number, lifetime, epoch="")
        ticket = await self._changing(cid, refresh)
        if ticket is None:
            raise TicketNotFound(cid, number)
        return pb.RefreshTicketResponse(ticket=ticket_to_pb(ticket))

    # -- the session-bound lock -------------------------------------------------

    async def Lock(self, request_iterator: Any, context: Context) -> None:
        session = LockSession(
            context,
            self._store,
            self._hub,
            self._settings,
            on_change=self._hub.notify,
            on_acquired_after=self._waited_for if self._metrics is not None else None,
        )
        try:
            await session.run()
        except CLIENT_ERRORS as error:
            await abort_for(error, context)
