"""``wait_for_ticket`` reads the stream to its end, so a successful wait ends OK.

A scripted LockService on a real port sends ``acquired`` and then keeps the call
open for a while before it ends it: a client that left after ``acquired`` would
cancel the call in that window (and the server would count a successful wait as
cancelled); one that reads on sees the end, OK.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from ticketlock import AsyncLockClient, LockClient
from ticketlock.v1 import lock_service_pb2 as pb
from ticketlock.v1 import lock_service_pb2_grpc as pb_grpc

from tests.support.scripted import scripted_server

# How long the scripted server keeps the call open after ``acquired``.
WINDOW = 1.0


class AcquireThenLinger(pb_grpc.LockServiceServicer):
    def __init__(self) -> None:
        self.outcomes: list[str] = []

    def WaitForTicket(self, request: Any, context: Any) -> Iterator[pb.WaitForTicketResponse]:
        ended = threading.Event()
        context.add_callback(ended.set)
        yield pb.WaitForTicketResponse(
            now_serving=request.ticket_number,
            acquired=True,
            lock=pb.TicketLock(
                conversation_id=request.conversation_id,
                tickets=[pb.Ticket(number=request.ticket_number, expires=1e9)],
            ),
        )
        # The call ends early only if the client cancels it.
        self.outcomes.append("cancelled by the client" if ended.wait(WINDOW) else "read to the end")


@pytest.fixture
def lingering() -> Iterator[tuple[AcquireThenLinger, str]]:
    service = AcquireThenLinger()
    with scripted_server(service) as target:
        yield service, target


def test_sync_wait_for_ticket_reads_the_stream_to_its_end(
    lingering: tuple[AcquireThenLinger, str],
) -> None:
    service, target = lingering
    with LockClient(target) as client:
        lock = client.wait_for_ticket("c", 7, timeout=30)
    assert lock.conversation_id == "c" and [t.number for t in lock.tickets] == [7]
    assert service.outcomes == ["read to the end"]


async def test_async_wait_for_ticket_reads_the_stream_to_its_end(
    lingering: tuple[AcquireThenLinger, str],
) -> None:
    service, target = lingering
    async with AsyncLockClient(target) as client:
        lock = await client.wait_for_ticket("c", 7, timeout=30)
    assert lock.conversation_id == "c" and [t.number for t in lock.tickets] == [7]
    assert service.outcomes == ["read to the end"]


def test_a_wait_that_acquired_is_not_lost_when_the_deadline_ends_the_stream(
    lingering: tuple[AcquireThenLinger, str],
) -> None:
    """The deadline passes between ``acquired`` and the stream's end: the ticket holds
    the lock, so the wait returns it instead of raising a timeout."""
    _, target = lingering
    with LockClient(target) as client:
        lock = client.wait_for_ticket("c", 7, timeout=WINDOW / 2)
    assert [t.number for t in lock.tickets] == [7]
