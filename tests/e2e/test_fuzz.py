"""Property-based fuzz of every RPC with random and hostile values.

Whatever a client sends, the answer is never UNKNOWN or INTERNAL, and the server
keeps serving.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ticketlock.v1 import lock_service_pb2 as pb
from ticketlock.v1 import lock_service_pb2_grpc as pb_grpc

FORBIDDEN = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL}

hostile_ids = st.sampled_from(
    ["", "}", "{", "{x}", "*", "[0-9]", "a:b", "\n", "\x00", "🎫", " ", "lock:*", "x" * 1024,
     "x" * 1025, "é" * 512, "é" * 513, "\ud7ff", "\U0010ffff"]
)  # fmt: skip
conversation_ids = st.one_of(
    hostile_ids, st.text(max_size=40), st.text(min_size=1000, max_size=1100)
)
lifetimes = st.one_of(
    st.sampled_from(
        [0.0, -0.0, -1.0, math.nan, math.inf, -math.inf, 1e-9, 86400.0, 86400.5, 1e308]
    ),
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(min_value=0.01, max_value=2.0),
)
numbers = st.one_of(
    st.sampled_from([0, 1, -1, 2**63 - 1, -(2**63)]), st.integers(-(2**63), 2**63 - 1)
)
tickets = st.builds(pb.Ticket, number=numbers, expires=st.floats(allow_nan=True))
ticket_locks = st.builds(
    pb.TicketLock, conversation_id=conversation_ids, tickets=st.lists(tickets, max_size=5)
)

unary_requests = st.one_of(
    st.tuples(st.just("GetLock"), st.builds(pb.GetLockRequest, conversation_id=conversation_ids)),
    st.tuples(
        st.just("SaveLock"),
        st.one_of(st.just(pb.SaveLockRequest()), st.builds(pb.SaveLockRequest, lock=ticket_locks)),
    ),
    st.tuples(
        st.just("DeleteLock"), st.builds(pb.DeleteLockRequest, conversation_id=conversation_ids)
    ),
    st.tuples(
        st.just("IssueTicket"),
        st.builds(
            pb.IssueTicketRequest, conversation_id=conversation_ids, lifetime_seconds=lifetimes
        ),
    ),
    st.tuples(
        st.just("FinishServing"),
        st.builds(pb.FinishServingRequest, conversation_id=conversation_ids, ticket_number=numbers),
    ),
    st.tuples(
        st.just("Cleanup"),
        st.builds(pb.CleanupRequest, conversation_id=conversation_ids, ticket_number=numbers),
    ),
    st.tuples(
        st.just("IsSomeoneWaiting"),
        st.builds(pb.IsSomeoneWaitingRequest, conversation_id=conversation_ids),
    ),
    st.tuples(
        st.just("RefreshTicket"),
        st.builds(
            pb.RefreshTicketRequest,
            conversation_id=conversation_ids,
            ticket_number=numbers,
            lifetime_seconds=lifetimes,
        ),
    ),
)

lock_actions = st.one_of(
    st.builds(
        lambda cid, lifetime: pb.LockRequest(
            acquire=pb.Acquire(conversation_id=cid, lifetime_seconds=lifetime)
        ),
        conversation_ids,
        lifetimes,
    ),
    st.just(pb.LockRequest(release=pb.Release())),
    st.builds(
        lambda lifetime: pb.LockRequest(refresh=pb.Refresh(lifetime_seconds=lifetime)), lifetimes
    ),
    st.just(pb.LockRequest()),
)

FUZZ = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.fixture
def channel(target: str) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(target) as ch:
        yield ch


def _still_serving(channel: grpc.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    status = health.Check(health_pb2.HealthCheckRequest(), timeout=5).status
    assert status == health_pb2.HealthCheckResponse.SERVING


def _status(error: grpc.RpcError) -> grpc.StatusCode:
    code: grpc.StatusCode = error.code()  # type: ignore[attr-defined]
    assert code not in FORBIDDEN, f"{code}: {error.details()}"  # type: ignore[attr-defined]
    return code


@FUZZ
@given(call=unary_requests)
def test_unary_rpcs_never_fail_unknown_or_internal(channel: grpc.Channel, call: Any) -> None:
    method, request = call
    stub = pb_grpc.LockServiceStub(channel)
    try:
        getattr(stub, method)(request, timeout=5)
    except grpc.RpcError as error:
        assert _status(error) in {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND}
    _still_serving(channel)


@FUZZ
@given(cid=conversation_ids, number=numbers)
def test_wait_for_ticket_never_fails_unknown_or_internal(
    channel: grpc.Channel, cid: str, number: int
) -> None:
    stub = pb_grpc.LockServiceStub(channel)
    request = pb.WaitForTicketRequest(conversation_id=cid, ticket_number=number)
    try:
        for _ in stub.WaitForTicket(request, timeout=0.3):
            pass
    except grpc.RpcError as error:
        assert _status(error) in {
            grpc.StatusCode.INVALID_ARGUMENT,
            grpc.StatusCode.NOT_FOUND,
            grpc.StatusCode.DEADLINE_EXCEEDED,
        }
    _still_serving(channel)


@settings(FUZZ, max_examples=80)
@given(actions=st.lists(lock_actions, min_size=0, max_size=5), cancel_after=st.integers(0, 3))
def test_lock_streams_never_fail_unknown_or_internal(
    channel: grpc.Channel, actions: list[pb.LockRequest], cancel_after: int
) -> None:
    stub = pb_grpc.LockServiceStub(channel)
    call = stub.Lock(iter(actions), timeout=0.3)
    try:
        for received, _ in enumerate(call):
            if received >= cancel_after:
                call.cancel()
                break
    except grpc.RpcError as error:
        assert _status(error) in {
            grpc.StatusCode.INVALID_ARGUMENT,
            grpc.StatusCode.NOT_FOUND,
            grpc.StatusCode.DEADLINE_EXCEEDED,
            grpc.StatusCode.CANCELLED,
        }
    _still_serving(channel)


@settings(FUZZ, max_examples=100)
@given(
    method=st.sampled_from(
        [
            "GetLock",
            "SaveLock",
            "DeleteLock",
            "IssueTicket",
            "FinishServing",
            "Cleanup",
            "IsSomeoneWaiting",
            "RefreshTicket",
        ]
    ),
    payload=st.binary(max_size=64),
)
def test_arbitrary_bytes_never_fail_unknown_or_internal(
    channel: grpc.Channel, method: str, payload: bytes
) -> None:
    call = channel.unary_unary(f"/ticketlock.v1.LockService/{method}")
    try:
        call(payload, timeout=5)
    except grpc.RpcError as error:
        assert _status(error) in {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND}
    _still_serving(channel)
