"""``ticketlock.convert``: the model and the contract's messages, both ways, exactly."""

from __future__ import annotations

from ticketlock.convert import lock_from_pb, lock_to_pb, ticket_from_pb, ticket_to_pb
from ticketlock.model import Ticket, TicketLock
from ticketlock.v1 import lock_service_pb2 as pb


def test_a_ticket_round_trips_exactly() -> None:
    ticket = Ticket(2**53 - 1, 1_700_000_000.123456)
    message = ticket_to_pb(ticket)
    assert (message.number, message.expires) == (2**53 - 1, 1_700_000_000.123456)
    assert ticket_from_pb(message) == ticket


def test_a_lock_round_trips_exactly_and_keeps_its_order() -> None:
    lock = TicketLock("a}b {x} \U0001f600", [Ticket(9, 10.5), Ticket(3, 20.25)])
    message = lock_to_pb(lock)
    assert message.conversation_id == lock.conversation_id
    assert [(t.number, t.expires) for t in message.tickets] == [(9, 10.5), (3, 20.25)]
    back = lock_from_pb(message)
    assert back.conversation_id == lock.conversation_id
    assert list(back.tickets) == list(lock.tickets)
    assert lock_from_pb(pb.TicketLock.FromString(message.SerializeToString())) == back


def test_an_empty_lock_converts_to_an_empty_message() -> None:
    message = lock_to_pb(TicketLock("c"))
    assert message == pb.TicketLock(conversation_id="c")
    assert list(lock_from_pb(message).tickets) == []
