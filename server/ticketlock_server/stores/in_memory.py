"""InMemoryLockStore: the locks of one server process, in a dict.

Each method runs without awaiting anything, so on the event loop it is one atomic
step. The clock is ``time.time`` unless one is passed (tests pass a fake one).
Epochs are not needed: the store loses its data only with its process, and its
sessions with it.

Numbering starts at 0 for a new conversation, as in Rasa, but a number is never
handed out twice: the next number is kept apart from the lock and survives the
expiry of every ticket and the deletion of the lock, until
``number_retention_seconds`` (24 h by default) after the last ticket was issued (as
the concurrent Redis store's counter does). A stale client that finishes or cleans
up "its" old ticket can then never remove someone else's. Numbers are Python
integers, exact at any size, but end at 2**53 - 1 as in the Redis stores, so that
a client sees the same range whatever the store.

A sweep, run at most once per ``SWEEP_INTERVAL`` while tickets are issued or
locks saved, forgets a lock whose tickets have all expired (as a Redis key with a
TTL would vanish), and later its number: abandoned conversations do not pile up,
and once most of them are gone the table that held them is rebuilt smaller (a
Python dict never shrinks by itself), so the memory goes back too.
"""

from __future__ import annotations

import heapq
import time
from dataclasses import dataclass
from typing import Any

from ticketlock.model import Clock, Position, Ticket, TicketLock

from ticketlock_server.config import StoreLimits
from ticketlock_server.stores.base import Issued, LockStore, StoreLimitExceeded

SWEEP_INTERVAL = 10.0
# The largest ticket number handed out (as in the Redis stores: exact in a double).
MAX_NUMBER = 2**53 - 1
# The table of conversations is rebuilt when it holds less than this share of
# the most it held since it was last built (and the most was at least MIN_REBUILD).
REBUILD_BELOW = 0.25
MIN_REBUILD = 1024


@dataclass(slots=True)
class _Conversation:
    lock: TicketLock | None
    next_number: int = 0
    # Until when next_number must be remembered (the retention after the last issue).
    keep_until: float = 0.0


class InMemoryLockStore(LockStore):
    name = "in_memory"
    suspends = False  # every method runs without awaiting

    def __init__(
        self,
        endpoint_config: Any = None,
        *,
        limits: StoreLimits | None = None,
        clock: Clock = time.time,
    ) -> None:
        super().__init__(endpoint_config)
        limits = limits or StoreLimits()
        self._max_tickets = limits.max_tickets_per_conversation
        self._retention = float(limits.number_retention_seconds)
        self.max_lifetime = limits.max_lifetime
        self._clock = clock
        self._conversations: dict[str, _Conversation] = {}
        self._peak = 0
        # (when to look at a conversation again, its id): exactly one entry per
        # conversation, so the heap never outgrows the dict.
        self._reviews: list[tuple[float, str]] = []
        self._next_sweep = 0.0

    def __len__(self) -> int:
        """The number of locks (conversations whose numbers are kept do not count)."""
        return sum(1 for c in self._conversations.values() if c.lock is not None)

    def _lock(self, conversation_id: str) -> TicketLock | None:
        conversation = self._conversations.get(conversation_id)
        return None if conversation is None else conversation.lock

    def _conversation(self, conversation_id: str, now: float, review_at: float) -> _Conversation:
        if now >= self._next_sweep:
            self._sweep(now)
        conversation = self._conversations.get(conversation_id)
        if conversation is None:
            conversation = self._conversations[conversation_id] = _Conversation(None)
            heapq.heappush(self._reviews, (review_at, conversation_id))
            self._peak = max(self._peak, len(self._conversations))
        if conversation.lock is None:
            conversation.lock = TicketLock(conversation_id, clock=self._clock, owned=True)
        return conversation

    def _sweep(self, now: float) -> None:
        self._next_sweep = now + SWEEP_INTERVAL
        while self._reviews and self._reviews[0][0] < now:
            _, conversation_id = heapq.heappop(self._reviews)
            conversation = self._conversations[conversation_id]
            lock = conversation.lock
            if lock is not None and lock.is_someone_waiting():
                latest = max(t.expires for t in lock.tickets)
                heapq.heappush(self._reviews, (max(latest, now), conversation_id))
                continue
            conversation.lock = None
            if conversation.keep_until > now:
                heapq.heappush(self._reviews, (conversation.keep_until, conversation_id))
            else:
                del self._conversations[conversation_id]
        if self._peak >= MIN_REBUILD and len(self._conversations) < self._peak * REBUILD_BELOW:
            self._conversations = dict(self._conversations)
            self._peak = len(self._conversations)

    async def ping(self) -> None:
        return None

    async def issue_ticket(self, conversation_id: str, lifetime: float) -> Issued:
        now = self._clock()
        conversation = self._conversation(conversation_id, now, now + lifetime)
        lock = conversation.lock
        assert lock is not None
        lock.remove_expired_tickets()
        if len(lock.tickets) >= self._max_tickets:
            raise StoreLimitExceeded(
                f"conversation {conversation_id!r} holds {len(lock.tickets)} tickets, the most "
                f"max_tickets_per_conversation ({self._max_tickets}) allows"
            )
        number = max(conversation.next_number, lock.last_issued + 1)
        if number > MAX_NUMBER:
            raise StoreLimitExceeded(
                f"the next ticket number of conversation {conversation_id!r} would be "
                f"{number}, above 2**53 - 1 ({MAX_NUMBER}), the largest a store keeps exactly"
            )
        lock.issue_ticket(lifetime, number)
        conversation.next_number = number + 1
        conversation.keep_until = now + self._retention
        return Issued(Ticket(number, lock.tickets[-1].expires), lock.now_serving)

    async def position(
        self,
        conversation_id: str,
        ticket_number: int,
        with_lock: bool = False,
        next_change: bool = True,
        epoch: str = "",
    ) -> Position | None:
        lock = self._lock(conversation_id)
        return None if lock is None else lock.position(ticket_number, with_lock, next_change)

    async def finish_serving(self, conversation_id: str, ticket_number: int) -> bool:
        lock = self._lock(conversation_id)
        return lock is not None and lock.remove_ticket_for(ticket_number)

    async def cleanup(self, conversation_id: str, ticket_number: int, epoch: str = "") -> bool:
        lock = self._lock(conversation_id)
        if lock is None:
            return False
        lock.remove_ticket_for(ticket_number)
        if lock.is_someone_waiting():
            return False
        self._conversations[conversation_id].lock = None
        return True

    async def refresh_ticket(
        self, conversation_id: str, ticket_number: int, lifetime: float, epoch: str = ""
    ) -> Ticket | None:
        lock = self._lock(conversation_id)
        ticket = None if lock is None else lock.refresh(ticket_number, lifetime)
        return None if ticket is None else Ticket(ticket.number, ticket.expires)

    async def is_someone_waiting(self, conversation_id: str) -> bool:
        lock = self._lock(conversation_id)
        return lock is not None and lock.is_someone_waiting()

    async def get_lock(self, conversation_id: str) -> TicketLock | None:
        lock = self._lock(conversation_id)
        if lock is None:
            return None
        lock.remove_expired_tickets()
        return lock.copy()

    async def save_lock(self, lock: TicketLock) -> None:
        if len(lock.tickets) > self._max_tickets:
            raise StoreLimitExceeded(
                f"the lock has {len(lock.tickets)} tickets, more than "
                f"max_tickets_per_conversation ({self._max_tickets}) allows"
            )
        # Every saved number, expired or not, is never handed out again.
        highest = max((t.number for t in lock.tickets), default=None)
        if highest is not None and highest >= MAX_NUMBER:
            raise StoreLimitExceeded(
                f"ticket number {highest} leaves no number to issue after it: numbers end "
                f"at 2**53 - 1 ({MAX_NUMBER})"
            )
        now = self._clock()
        # A copy, so that the caller's object and the stored one never alias.
        stored = TicketLock(
            lock.conversation_id,
            (Ticket(t.number, t.expires) for t in lock.tickets),
            clock=self._clock,
            owned=True,
        )
        stored.remove_expired_tickets()
        latest = max((t.expires for t in stored.tickets), default=now)
        conversation = self._conversation(lock.conversation_id, now, latest)
        conversation.lock = stored
        if highest is not None:
            conversation.next_number = max(conversation.next_number, highest + 1)
            conversation.keep_until = max(conversation.keep_until, now + self._retention)

    async def delete_lock(self, conversation_id: str) -> bool:
        conversation = self._conversations.get(conversation_id)
        if conversation is None or conversation.lock is None:
            return False
        conversation.lock = None
        return True
