"""Conversions between the pure model and the protobuf messages.

Public: the client uses them, and so does the server (``ticketlock-server``), which
speaks the same messages; a tool that reads the contract's messages may too.
"""

from __future__ import annotations

from ticketlock.model import Ticket, TicketLock
from ticketlock.v1 import lock_service_pb2 as pb


def ticket_to_pb(ticket: Ticket) -> pb.Ticket:
    return pb.Ticket(number=ticket.number, expires=ticket.expires)


def ticket_from_pb(message: pb.Ticket) -> Ticket:
    return Ticket(message.number, message.expires)


def lock_to_pb(lock: TicketLock) -> pb.TicketLock:
    return pb.TicketLock(
        conversation_id=lock.conversation_id,
        tickets=[pb.Ticket(number=t.number, expires=t.expires) for t in lock.tickets],
    )


def lock_from_pb(message: pb.TicketLock) -> TicketLock:
    return TicketLock(message.conversation_id, (ticket_from_pb(t) for t in message.tickets))
