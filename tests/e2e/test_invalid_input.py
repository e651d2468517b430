"""Bad input gets INVALID_ARGUMENT naming the field, odd ids work, and the server keeps serving."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
from ticketlock import LockClient
from ticketlock.v1 import lock_service_pb2 as pb
from ticketlock.v1 import lock_service_pb2_grpc as pb_grpc

from harness.server import ServerProcess

ODD_IDS = [
    "}",
    "{x}",
    "*",
    "[0-9]",
    "a:b",
    "line\nbreak",
    "emoji 🎫🔒",
    "{",
    "lock:*",
    " ",
    "é" * 512,  # exactly 1,024 UTF-8 bytes
    "x" * 1024,
]


@pytest.fixture
def stub(target: str) -> Iterator[pb_grpc.LockServiceStub]:
    with grpc.insecure_channel(target) as channel:
        yield pb_grpc.LockServiceStub(channel)


@pytest.mark.parametrize("conversation_id", ODD_IDS, ids=range(len(ODD_IDS)))
def test_odd_conversation_ids_work_end_to_end(client: LockClient, conversation_id: str) -> None:
    cid = conversation_id
    client.delete_lock(cid)  # the session's server is shared (the fuzz uses such ids too)
    holder = client.issue(cid, 30)
    waiter = client.issue(cid, 30)
    assert holder.acquired and waiter.ticket.number == holder.ticket.number + 1
    lock = client.get_lock(cid)
    assert lock is not None and lock.conversation_id == cid
    client.cleanup(cid, holder.ticket.number)
    acquired = client.wait_for_ticket(cid, waiter.ticket.number, timeout=5)
    assert acquired.conversation_id == cid
    assert client.cleanup(cid, waiter.ticket.number) is True
    with client.lock(cid, 30, timeout=5) as held:
        assert held.conversation_id == cid
    client.save_lock(lock)
    assert client.get_lock(cid) == lock
    assert client.delete_lock(cid)


def test_ids_are_never_patterns(client: LockClient) -> None:
    """A lock on ``*`` or ``[0-9]`` must not see or touch other conversations."""
    base = f"pattern-{time.time_ns()}"
    for cid in (f"{base}-1", f"{base}-2"):
        client.issue_ticket(cid, 30)
    for pattern in (f"{base}-*", f"{base}-[0-9]"):
        assert client.get_lock(pattern) is None
        assert client.delete_lock(pattern) is False
    assert client.is_someone_waiting(f"{base}-1") and client.is_someone_waiting(f"{base}-2")


TOO_LONG = "x" * 1025
TOO_LONG_MULTIBYTE = "é" * 512 + "x"  # 1,025 bytes in 513 characters
BAD_LIFETIMES = [-1.0, -0.001, math.nan, math.inf, -math.inf, 86400.001, 1e300]


def _cases() -> list[tuple[str, str, Any]]:
    cases: list[tuple[str, str, Any]] = []
    for bad_id in ("", TOO_LONG, TOO_LONG_MULTIBYTE):
        cases += [
            ("GetLock", "conversation_id", pb.GetLockRequest(conversation_id=bad_id)),
            ("DeleteLock", "conversation_id", pb.DeleteLockRequest(conversation_id=bad_id)),
            ("IssueTicket", "conversation_id", pb.IssueTicketRequest(conversation_id=bad_id)),
            ("FinishServing", "conversation_id", pb.FinishServingRequest(conversation_id=bad_id)),
            ("Cleanup", "conversation_id", pb.CleanupRequest(conversation_id=bad_id)),
            (
                "IsSomeoneWaiting",
                "conversation_id",
                pb.IsSomeoneWaitingRequest(conversation_id=bad_id),
            ),
            ("RefreshTicket", "conversation_id", pb.RefreshTicketRequest(conversation_id=bad_id)),
            ("WaitForTicket", "conversation_id", pb.WaitForTicketRequest(conversation_id=bad_id)),
            (
                "SaveLock",
                "lock.conversation_id",
                pb.SaveLockRequest(lock=pb.TicketLock(conversation_id=bad_id)),
            ),
            (
                "Lock",
                "acquire.conversation_id",
                pb.LockRequest(acquire=pb.Acquire(conversation_id=bad_id)),
            ),
        ]
    for bad in BAD_LIFETIMES:
        cases += [
            (
                "IssueTicket",
                "lifetime_seconds",
                pb.IssueTicketRequest(conversation_id="c", lifetime_seconds=bad),
            ),
            (
                "RefreshTicket",
                "lifetime_seconds",
                pb.RefreshTicketRequest(conversation_id="c", lifetime_seconds=bad),
            ),
            (
                "Lock",
                "acquire.lifetime_seconds",
                pb.LockRequest(acquire=pb.Acquire(conversation_id="c", lifetime_seconds=bad)),
            ),
        ]
    for name, request_type in (
        ("WaitForTicket", pb.WaitForTicketRequest),
        ("FinishServing", pb.FinishServingRequest),
        ("Cleanup", pb.CleanupRequest),
        ("RefreshTicket", pb.RefreshTicketRequest),
    ):
        for number in (-1, -(2**63)):
            cases.append(
                (name, "ticket_number", request_type(conversation_id="c", ticket_number=number))
            )
    now = time.time() + 60
    cases += [
        ("SaveLock", "lock", pb.SaveLockRequest()),
        (
            "SaveLock",
            "lock.tickets[1].number",
            pb.SaveLockRequest(
                lock=pb.TicketLock(
                    conversation_id="c",
                    tickets=[pb.Ticket(number=1, expires=now), pb.Ticket(number=1, expires=now)],
                )
            ),
        ),
        (
            "SaveLock",
            "lock.tickets[0].number",
            pb.SaveLockRequest(
                lock=pb.TicketLock(conversation_id="c", tickets=[pb.Ticket(number=-3, expires=now)])
            ),
        ),
    ]
    for bad in (math.nan, math.inf, -math.inf):
        cases.append(
            (
                "SaveLock",
                "lock.tickets[0].expires",
                pb.SaveLockRequest(
                    lock=pb.TicketLock(
                        conversation_id="c", tickets=[pb.Ticket(number=1, expires=bad)]
                    )
                ),
            )
        )
    cases += [
        ("Lock", "action", pb.LockRequest(release=pb.Release())),
        ("Lock", "action", pb.LockRequest(refresh=pb.Refresh(lifetime_seconds=5))),
        ("Lock", "action", pb.LockRequest()),
    ]
    return cases


CASES = _cases()


def _invoke(stub: pb_grpc.LockServiceStub, method: str, request: Any) -> Callable[[], Any]:
    call = getattr(stub, method)
    if method == "WaitForTicket":
        return lambda: list(call(request, timeout=5))
    if method == "Lock":
        return lambda: list(call(iter([request]), timeout=5))
    return lambda: call(request, timeout=5)


@pytest.mark.parametrize(("method", "field", "request_message"), CASES, ids=range(len(CASES)))
def test_invalid_argument_names_the_field(
    stub: pb_grpc.LockServiceStub, method: str, field: str, request_message: Any
) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        _invoke(stub, method, request_message)()
    error: Any = raised.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert error.details().startswith(field + ":"), error.details()


def test_second_acquire_on_a_lock_stream_is_invalid(
    stub: pb_grpc.LockServiceStub, cid: str
) -> None:
    acquire = pb.LockRequest(acquire=pb.Acquire(conversation_id=cid, lifetime_seconds=5))
    responses = stub.Lock(iter([acquire, acquire]), timeout=5)
    assert next(responses).WhichOneof("event") == "acquired"
    with pytest.raises(grpc.RpcError) as raised:
        next(responses)
    error: Any = raised.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "acquire" in error.details()


def test_bytes_that_are_not_a_message_are_invalid_argument(target: str) -> None:
    with grpc.insecure_channel(target) as channel:
        for payload in (b"\xff\xff\xff", b"\x0a\x02\xc3\x28", b"\x0a\x05ab"):
            for method in ("GetLock", "IssueTicket", "SaveLock", "Cleanup"):
                call = channel.unary_unary(f"/ticketlock.v1.LockService/{method}")
                with pytest.raises(grpc.RpcError) as raised:
                    call(payload, timeout=5)
                error: Any = raised.value
                assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert error.details().startswith("request:")
            stream = channel.unary_stream("/ticketlock.v1.LockService/WaitForTicket")
            with pytest.raises(grpc.RpcError) as raised:
                list(stream(payload, timeout=5))
            assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
            session = channel.stream_stream("/ticketlock.v1.LockService/Lock")
            with pytest.raises(grpc.RpcError) as raised:
                list(session(iter([payload]), timeout=5))
            assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]


def test_server_still_serves_after_all_bad_input(
    server: ServerProcess, client: LockClient, cid: str
) -> None:
    assert server.process.poll() is None
    with client.lock(cid, 5, timeout=5) as held:
        assert held.ticket.number == 0
    assert "Traceback" not in server.log
