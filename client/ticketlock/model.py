"""The ticket lock: a FIFO queue of expiring tickets per conversation.

Pure model with Rasa's semantics (``rasa.core.lock``) and Rasa's JSON form, so a
lock written by Rasa reads here and the other way round. No I/O: the only outside
input is the clock, which is injectable so that stores can use their own (and
tests a fake one).
"""

from __future__ import annotations

import bisect
import itertools
import json
import math
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

NO_TICKET_ISSUED = -1
# Rasa's lock lifetime in seconds when none is given (its TICKET_LOCK_LIFETIME unset
# or 0): the server's default and the Rasa drop-in's.
DEFAULT_LOCK_LIFETIME = 60

Clock = Callable[[], float]


@dataclass(slots=True)
class Ticket:
    """A place in a conversation's queue, valid until ``expires`` (epoch seconds)."""

    number: int
    expires: float

    def has_expired(self, now: float | None = None) -> bool:
        return (time.time() if now is None else now) > self.expires

    def as_dict(self) -> dict[str, Any]:
        return {"number": self.number, "expires": self.expires}

    def dumps(self) -> str:
        """Rasa's form: ``{"number": 0, "expires": 1700000000.5}``."""
        return json.dumps(self.as_dict())

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Ticket:
        return cls(number=data["number"], expires=data["expires"])


def _number(ticket: Ticket) -> int:
    return ticket.number


def _expiries(tickets: Iterable[Ticket]) -> Iterable[float]:
    return (t.expires for t in tickets)


@dataclass(frozen=True, slots=True)
class Position:
    """Where a ticket stands in its queue at one instant."""

    now_serving: int
    tickets_ahead: int
    # Seconds until the soonest expiry that can move this ticket (a ticket ahead
    # of it, or its own); None when nothing ahead or own can expire.
    next_change_in: float | None
    # A snapshot of the lock, when asked for and the ticket holds it.
    lock: TicketLock | None = None
    # Seconds until this ticket itself expires.
    expires_in: float = math.inf

    @property
    def acquired(self) -> bool:
        return self.tickets_ahead == 0


class TicketLock:
    """The queue of tickets of one conversation, oldest first.

    The oldest unexpired ticket holds the lock. Expired tickets are dropped
    whenever the lock is read or changed.
    """

    __slots__ = ("_clock", "_earliest_expiry", "_owned", "conversation_id", "tickets")

    def __init__(
        self,
        conversation_id: str,
        tickets: Iterable[Ticket] | None = None,
        *,
        clock: Clock = time.time,
        owned: bool = False,
    ) -> None:
        """``owned=True`` promises that the tickets change only through this
        object's methods (as inside a store), which lets reads skip the expiry
        scan while nothing can have expired: a long queue is then cheap to read.
        """
        self.conversation_id = conversation_id
        self.tickets: deque[Ticket] = deque(tickets or ())
        self._clock = clock
        self._owned = owned
        # For owned locks, a lower bound of the tickets' expiries: while the clock
        # is below it, nothing can have expired.
        self._earliest_expiry = -math.inf

    # -- Rasa's JSON form ---------------------------------------------------

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, clock: Clock = time.time) -> TicketLock:
        tickets = (Ticket.from_dict(json.loads(t)) for t in data.get("tickets") or ())
        return cls(data["conversation_id"], tickets, clock=clock)

    @classmethod
    def loads(cls, text: str | bytes, *, clock: Clock = time.time) -> TicketLock:
        return cls.from_dict(json.loads(text), clock=clock)

    def as_dict(self) -> dict[str, Any]:
        return {
            "conversation_id": self.conversation_id,
            "tickets": [t.dumps() for t in self.tickets],
        }

    def dumps(self) -> str:
        return json.dumps(self.as_dict())

    # -- Rasa's interface ---------------------------------------------------

    def is_locked(self, ticket_number: int) -> bool:
        """True unless ``ticket_number`` is the one now serving."""
        return self.now_serving != ticket_number

    def issue_ticket(self, lifetime: float, ticket_number: int | None = None) -> int:
        """Append a ticket valid for ``lifetime`` seconds and return its number."""
        self.remove_expired_tickets()
        number = self.last_issued + 1 if ticket_number is None else ticket_number
        expires = self._clock() + lifetime
        self.tickets.append(Ticket(number, expires))
        self._earliest_expiry = min(self._earliest_expiry, expires)
        return number

    def remove_expired_tickets(self) -> None:
        now = self._clock()
        if self._owned and now <= self._earliest_expiry:
            return
        if any(t.expires < now for t in self.tickets):
            self.tickets = deque(t for t in self.tickets if t.expires >= now)
        if self._owned:
            self._earliest_expiry = min((t.expires for t in self.tickets), default=math.inf)

    @property
    def last_issued(self) -> int:
        """Number of the newest ticket; ``NO_TICKET_ISSUED`` (-1) when there is none."""
        self.remove_expired_tickets()
        return self.tickets[-1].number if self.tickets else NO_TICKET_ISSUED

    @property
    def now_serving(self) -> int:
        """Number of the oldest unexpired ticket; 0 when there is none."""
        self.remove_expired_tickets()
        return self.tickets[0].number if self.tickets else 0

    def is_someone_waiting(self) -> bool:
        self.remove_expired_tickets()
        return len(self.tickets) > 0

    def remove_ticket_for(self, ticket_number: int) -> bool:
        """Remove the ticket ``ticket_number``; False when there was none."""
        ticket = self.ticket_for(ticket_number)
        if ticket is None:
            return False
        self.tickets.remove(ticket)
        return True

    def has_lock_expired(self, ticket_number: int) -> bool:
        """True when the ticket expired or does not exist."""
        return self.ticket_for(ticket_number) is None

    # -- Beyond Rasa: what a server needs in one step -----------------------

    def ticket_for(self, ticket_number: int) -> Ticket | None:
        self.remove_expired_tickets()
        return next((t for t in self.tickets if t.number == ticket_number), None)

    def position(
        self, ticket_number: int, with_lock: bool = False, next_change: bool = True
    ) -> Position | None:
        """Where ``ticket_number`` stands; None when the ticket does not exist.

        With ``with_lock``, a position that holds the lock carries a copy of it.
        Without ``next_change``, ``next_change_in`` is left at None for a waiter
        (it costs a pass over the tickets ahead, which only the first waiter needs).
        """
        self.remove_expired_tickets()
        tickets = self.tickets
        if self._owned:
            # An owned lock's numbers ascend (issued in order, or saved validated).
            ahead = bisect.bisect_left(tickets, ticket_number, key=_number)
            if ahead == len(tickets) or tickets[ahead].number != ticket_number:
                return None
        else:
            found = next((i for i, t in enumerate(tickets) if t.number == ticket_number), None)
            if found is None:
                return None
            ahead = found
        now = self._clock()
        ticket = tickets[ahead]
        expires_in = max(0.0, ticket.expires - now)
        if ahead == 0:
            snapshot = self.copy() if with_lock else None
            return Position(ticket_number, 0, None, snapshot, expires_in)
        soonest: float | None = None
        if next_change:
            earliest = min(itertools.islice(_expiries(tickets), ahead + 1))
            soonest = max(0.0, earliest - now)
        return Position(tickets[0].number, ahead, soonest, None, expires_in)

    def refresh(self, ticket_number: int, lifetime: float) -> Ticket | None:
        """Give a ticket the expiry now + ``lifetime``; None when it does not exist."""
        ticket = self.ticket_for(ticket_number)
        if ticket is None:
            return None
        ticket.expires = self._clock() + lifetime
        self._earliest_expiry = min(self._earliest_expiry, ticket.expires)
        return ticket

    def copy(self) -> TicketLock:
        return TicketLock(
            self.conversation_id,
            (Ticket(t.number, t.expires) for t in self.tickets),
            clock=self._clock,
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TicketLock):
            return NotImplemented
        return self.conversation_id == other.conversation_id and list(self.tickets) == list(
            other.tickets
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"TicketLock({self.conversation_id!r}, {list(self.tickets)!r})"
