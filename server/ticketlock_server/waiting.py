"""Waiting for a ticket's turn: pushed wake-ups, no polling loop.

Every conversation with local waiters has a *room*: its waiters sorted by ticket
number. A change to the conversation (a release here, or one reported by another
replica) wakes waiters, which re-read their position in one store step each. The
room's first waiter sleeps with a timer set to the soonest expiry that can move
it (a ticket ahead, or its own); every other waiter with a timer at its own
expiry, so it learns at once that its ticket ran out. When the first waiter
leaves, the next one is woken at once, so a release is handed down the queue
without anyone polling.

A change wakes every waiter of a room of up to ``FULL_UPDATES`` waiters, so each
hears of every change in its position. In longer rooms the waiters beyond that
are woken when their place is 2**k - 1: each still sees its position fall, in
O(log n) messages, and a release costs O(log n) wake-ups instead of n, which
keeps 10,000 waiters on one conversation cheap. The first waiter also re-checks
after ``recheck_interval`` at most, so a lost cross-replica message cannot
strand it.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any

from ticketlock.model import Position

from ticketlock_server.stores.base import LockStore

FULL_UPDATES = 16


class TicketNotFound(Exception):
    """The ticket waited for does not exist (expired, finished, never issued)."""

    def __init__(self, conversation_id: str, ticket_number: int) -> None:
        super().__init__(
            f"ticket {ticket_number} does not exist (expired, finished or never issued)"
        )
        self.conversation_id = conversation_id
        self.ticket_number = ticket_number


@dataclass(eq=False, slots=True)
class _Waiter:
    number: int
    event: asyncio.Event = field(default_factory=asyncio.Event)

    def __lt__(self, other: _Waiter) -> bool:
        return self.number < other.number


class WakeHub:
    """The rooms of waiters, per conversation, of this process."""

    def __init__(self) -> None:
        self._rooms: dict[str, list[_Waiter]] = {}
        # Kept as a number, so that other threads (metrics) can read it safely.
        self._count = 0
        self._closed = False
        # Holders of session locks, told to end their streams when the server stops.
        self.holders: set[Any] = set()
        # Session streams without a ticket, ended when the server stops.
        self.idle: set[Any] = set()

    def __len__(self) -> int:
        return self._count

    def enter(self, conversation_id: str, ticket_number: int) -> _Waiter:
        waiter = _Waiter(ticket_number)
        bisect.insort(self._rooms.setdefault(conversation_id, []), waiter)
        self._count += 1
        return waiter

    def leave(self, conversation_id: str, waiter: _Waiter) -> bool:
        """Remove the waiter; True when it was the room's last one."""
        room = self._rooms.get(conversation_id)
        if room is None:
            return False
        index = bisect.bisect_left(room, waiter)
        while index < len(room) and room[index] is not waiter:
            index += 1
        if index == len(room):
            return False
        del room[index]
        self._count -= 1
        if not room:
            del self._rooms[conversation_id]
            return True
        if index == 0:
            room[0].event.set()
        return False

    def notify_all(self) -> None:
        """Everything may have changed (the store was unreachable): wake every room,
        and have every holder check that its ticket survived."""
        for conversation_id in list(self._rooms):
            self.notify(conversation_id)
        for holder in list(self.holders):
            holder.recheck()

    def is_first(self, conversation_id: str, waiter: _Waiter) -> bool:
        room = self._rooms.get(conversation_id)
        return bool(room) and room[0] is waiter  # type: ignore[index]

    def notify(self, conversation_id: str) -> None:
        """The conversation changed: wake its waiters (see the module's docstring)."""
        room = self._rooms.get(conversation_id)
        if not room:
            return
        for waiter in room[:FULL_UPDATES]:
            waiter.event.set()
        index = 2 * FULL_UPDATES - 1
        while index < len(room):
            room[index].event.set()
            index = 2 * index + 1

    def close(self) -> None:
        """Wake every waiter so it sees the hub closing (server shutdown)."""
        self._closed = True
        for holder in list(self.holders):
            holder.interrupt(ShuttingDown())
        for session in list(self.idle):
            session.interrupt(ShuttingDown())
        for room in self._rooms.values():
            for waiter in room:
                waiter.event.set()

    @property
    def closed(self) -> bool:
        return self._closed


class ShuttingDown(Exception):
    """The server is stopping; waiters should retry on another server."""


async def wait_for_turn(
    store: LockStore,
    hub: WakeHub,
    conversation_id: str,
    ticket_number: int,
    *,
    recheck_interval: float,
    with_lock: bool = False,
    epoch: str = "",
) -> AsyncGenerator[Position, None]:
    """Yield the ticket's position at once, then on each change, last when acquired.

    Raises ``TicketNotFound`` when the ticket is gone and ``ShuttingDown`` when the
    hub closes.
    """
    waiter = hub.enter(conversation_id, ticket_number)
    try:
        # Changes made on other replicas are reported from here on.
        await store.watch(conversation_id)
        last_ahead: int | None = None
        while True:
            if hub.closed:
                raise ShuttingDown()
            # Cleared before reading, so a change during the read wakes us again.
            waiter.event.clear()
            first = hub.is_first(conversation_id, waiter)
            position = await store.position(
                conversation_id, ticket_number, with_lock, first, epoch=epoch
            )
            if position is None:
                raise TicketNotFound(conversation_id, ticket_number)
            if position.acquired:
                yield position
                return
            if position.tickets_ahead != last_ahead:
                last_ahead = position.tickets_ahead
                yield position
            # A little past the expiry, so that the store sees it as expired.
            timeout = position.expires_in + 0.001
            if first:
                timeout = min(timeout, recheck_interval)
                if position.next_change_in is not None:
                    timeout = min(timeout, position.next_change_in + 0.001)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(waiter.event.wait(), timeout)
    finally:
        if hub.leave(conversation_id, waiter):
            store.unwatch(conversation_id)
