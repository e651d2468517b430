"""Field checks of every request (the INVALID_ARGUMENT rules documented in the proto);
each failure names the field and says why."""

from __future__ import annotations

import math

from ticketlock.model import Ticket, TicketLock
from ticketlock.v1 import lock_service_pb2 as pb

from ticketlock_server.config import MAX_LOCK_LIFETIME

MAX_CONVERSATION_ID_BYTES = 1024
MAX_LIFETIME_SECONDS = MAX_LOCK_LIFETIME
# A saved lock's limits: shared stores keep numbers and times as doubles (Lua, JSON),
# exact for every integer up to 2**53 - 1, the largest number any store issues; a
# saved number must leave room for one more. No real lock outlives the year 9999.
MAX_TICKET_NUMBER = 2**53 - 1
MAX_EXPIRES = 253402300799.0


class InvalidArgument(Exception):
    """A request field is out of range."""

    def __init__(self, field: str, why: str) -> None:
        super().__init__(f"{field}: {why}")
        self.field = field


def conversation_id(value: str, field: str = "conversation_id") -> str:
    if not value:
        raise InvalidArgument(field, "must not be empty")
    size = len(value.encode("utf-8", "surrogatepass"))
    if size > MAX_CONVERSATION_ID_BYTES:
        raise InvalidArgument(
            field, f"is {size} UTF-8 bytes, more than the {MAX_CONVERSATION_ID_BYTES} allowed"
        )
    return value


def lifetime(
    value: float,
    default: float,
    field: str = "lifetime_seconds",
    maximum: float = MAX_LIFETIME_SECONDS,
) -> float:
    """The lifetime to use: ``default`` for 0, else ``value`` when in range.

    ``maximum`` is lower than 24 h when the store keeps its numbers for less.
    """
    if math.isnan(value) or math.isinf(value):
        raise InvalidArgument(field, f"must be a finite number of seconds, not {value}")
    if value < 0:
        raise InvalidArgument(field, f"must not be negative, got {value}")
    if value > MAX_LIFETIME_SECONDS:
        raise InvalidArgument(
            field, f"must be at most {MAX_LIFETIME_SECONDS} seconds (24 h), got {value}"
        )
    if value > maximum:
        raise InvalidArgument(
            field,
            f"must be at most {maximum:g} seconds (the store's number_retention_seconds), "
            f"got {value}",
        )
    return value or default


def ticket_number(value: int, field: str = "ticket_number") -> int:
    if value < 0:
        raise InvalidArgument(field, f"must not be negative, got {value}")
    return value


def ticket_lock(message: pb.TicketLock, has_lock: bool) -> TicketLock:
    """A SaveLock payload as a model lock."""
    if not has_lock:
        raise InvalidArgument("lock", "is required")
    conversation_id(message.conversation_id, "lock.conversation_id")
    seen: set[int] = set()
    tickets: list[Ticket] = []
    for index, ticket in enumerate(message.tickets):
        field = f"lock.tickets[{index}]"
        ticket_number(ticket.number, f"{field}.number")
        if ticket.number >= MAX_TICKET_NUMBER:
            # No number could be issued after it: the next would not be exact.
            raise InvalidArgument(
                f"{field}.number",
                f"must be below 2**53 - 1 ({MAX_TICKET_NUMBER}), the largest ticket number, "
                f"so that a ticket can be issued after it; got {ticket.number}",
            )
        if ticket.number in seen:
            raise InvalidArgument(f"{field}.number", f"duplicates ticket number {ticket.number}")
        if tickets and ticket.number < tickets[-1].number:
            raise InvalidArgument(
                f"{field}.number",
                f"{ticket.number} is lower than the ticket before it: tickets are oldest "
                "first, in ascending number order",
            )
        if not math.isfinite(ticket.expires):
            raise InvalidArgument(f"{field}.expires", f"must be finite, got {ticket.expires}")
        if abs(ticket.expires) > MAX_EXPIRES:
            raise InvalidArgument(
                f"{field}.expires",
                f"must be within ±{MAX_EXPIRES:.0f} (the year 9999), got {ticket.expires}",
            )
        seen.add(ticket.number)
        tickets.append(Ticket(ticket.number, ticket.expires))
    return TicketLock(message.conversation_id, tickets)
