"""InMemoryLockStore: the locks of one server process, in a dict.

Each method runs without awaiting anything, so on the event loop it is one atomic
step. Tickets are numbered from 0, as in Rasa. The clock is ``time.time``.

A lock whose tickets have all expired is forgotten by a sweep that runs at most
once per ``SWEEP_INTERVAL`` while tickets are issued (as a Redis key with a TTL
would vanish), so conversations abandoned without a cleanup do not pile up.
"""

from __future__ import annotations

import heapq
import time
from typing import Any

from ticketlock.model import Position, Ticket, TicketLock

from ticketlock_server.stores.base import Issued, LockStore

SWEEP_INTERVAL = 10.0


class InMemoryLockStore(LockStore):
    name = "in_memory"

    def __init__(self, endpoint_config: Any = None) -> None:
        super().__init__(endpoint_config)
        self._locks: dict[str, TicketLock] = {}
        # (time after which to look at the lock again, conversation id): one entry
        # per lock created by issue_ticket, so the heap never outgrows the dict.
        self._reviews: list[tuple[float, str]] = []
        self._next_sweep = 0.0

    def __len__(self) -> int:
        return len(self._locks)

    def _sweep(self, now: float) -> None:
        self._next_sweep = now + SWEEP_INTERVAL
        while self._reviews and self._reviews[0][0] < now:
            _, conversation_id = heapq.heappop(self._reviews)
            lock = self._locks.get(conversation_id)
            if lock is None:
                continue
            if lock.is_someone_waiting():
                latest = max(t.expires for t in lock.tickets)
                heapq.heappush(self._reviews, (latest, conversation_id))
            else:
                del self._locks[conversation_id]

    async def ping(self) -> None:
        return None

    async def issue_ticket(self, conversation_id: str, lifetime: float) -> Issued:
        now = time.time()
        if now >= self._next_sweep:
            self._sweep(now)
        lock = self._locks.get(conversation_id)
        if lock is None:
            lock = self._locks[conversation_id] = TicketLock(conversation_id, owned=True)
            heapq.heappush(self._reviews, (now + lifetime, conversation_id))
        number = lock.issue_ticket(lifetime)
        ticket = lock.tickets[-1]
        return Issued(Ticket(number, ticket.expires), lock.now_serving)

    async def position(
        self, conversation_id: str, ticket_number: int, with_lock: bool = False
    ) -> Position | None:
        lock = self._locks.get(conversation_id)
        return None if lock is None else lock.position(ticket_number, with_lock)

    async def finish_serving(self, conversation_id: str, ticket_number: int) -> bool:
        lock = self._locks.get(conversation_id)
        return lock is not None and lock.remove_ticket_for(ticket_number)

    async def cleanup(self, conversation_id: str, ticket_number: int) -> bool:
        lock = self._locks.get(conversation_id)
        if lock is None:
            return False
        lock.remove_ticket_for(ticket_number)
        if lock.is_someone_waiting():
            return False
        del self._locks[conversation_id]
        return True

    async def refresh_ticket(
        self, conversation_id: str, ticket_number: int, lifetime: float
    ) -> Ticket | None:
        lock = self._locks.get(conversation_id)
        ticket = None if lock is None else lock.refresh(ticket_number, lifetime)
        return None if ticket is None else Ticket(ticket.number, ticket.expires)

    async def is_someone_waiting(self, conversation_id: str) -> bool:
        lock = self._locks.get(conversation_id)
        return lock is not None and lock.is_someone_waiting()

    async def get_lock(self, conversation_id: str) -> TicketLock | None:
        lock = self._locks.get(conversation_id)
        if lock is None:
            return None
        lock.remove_expired_tickets()
        return lock.copy()

    async def save_lock(self, lock: TicketLock) -> None:
        # A copy, so that the caller's object and the stored one never alias.
        stored = TicketLock(
            lock.conversation_id, (Ticket(t.number, t.expires) for t in lock.tickets), owned=True
        )
        stored.remove_expired_tickets()
        self._locks[lock.conversation_id] = stored

    async def delete_lock(self, conversation_id: str) -> bool:
        return self._locks.pop(conversation_id, None) is not None
