"""Raw streams of the contract, returned once the server has queued them.

A test that needs a waiter to be in the queue before it acts (a release that must
wake it, a shutdown that must end it) reads the stream's first message: the server
sends it only after it has queued the waiter. That replaces a sleep that hopes
the waiter got there.
"""

from __future__ import annotations

from typing import Any

import grpc
from ticketlock.v1 import lock_service_pb2 as pb
from ticketlock.v1 import lock_service_pb2_grpc as pb_grpc


async def queued_wait(
    channel: grpc.aio.Channel, conversation_id: str, ticket_number: int, timeout: float = 30
) -> tuple[Any, Any]:
    """A ``WaitForTicket`` stream whose first message said the ticket waits; returns
    the call and that message."""
    call = pb_grpc.LockServiceStub(channel).WaitForTicket(
        pb.WaitForTicketRequest(conversation_id=conversation_id, ticket_number=ticket_number),
        timeout=timeout,
    )
    first = await call.read()
    assert first is not grpc.aio.EOF and not first.acquired, first
    assert first.tickets_ahead > 0, first
    return call, first


async def queued_session(
    channel: grpc.aio.Channel, conversation_id: str, lifetime: float = 60, timeout: float = 30
) -> tuple[Any, Any]:
    """A ``Lock`` stream answered with ``queued``; returns the call and that message."""
    call = pb_grpc.LockServiceStub(channel).Lock(timeout=timeout)
    await call.write(
        pb.LockRequest(
            acquire=pb.Acquire(conversation_id=conversation_id, lifetime_seconds=lifetime)
        )
    )
    message = await call.read()
    assert message is not grpc.aio.EOF and message.WhichOneof("event") == "queued", message
    return call, message.queued


async def next_event(call: Any) -> str:
    """The kind of a ``Lock`` stream's next message."""
    message = await call.read()
    assert message is not grpc.aio.EOF, "the stream ended"
    return str(message.WhichOneof("event"))
