"""The client retries idempotent calls on UNAVAILABLE, and never IssueTicket.

A scripted LockService on a real port answers UNAVAILABLE a given number of
times, so the attempts the client makes can be counted exactly.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from ticketlock import (
    AsyncLockClient,
    LockClient,
    ResourceExhaustedError,
    StoreDataError,
    StoreUnavailableError,
)
from ticketlock.v1 import lock_service_pb2 as pb
from ticketlock.v1 import lock_service_pb2_grpc as pb_grpc

from tests.support.scripted import scripted_server


class FlakyService(pb_grpc.LockServiceServicer):
    def __init__(self, failures: int, code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE) -> None:
        self.failures = failures
        self.code = code
        self.attempts: Counter[str] = Counter()

    def _flake(self, method: str, context: Any) -> None:
        self.attempts[method] += 1
        if self.attempts[method] <= self.failures:
            context.abort(self.code, f"lock store in_memory: test {self.code.name}")

    def GetLock(self, request: Any, context: Any) -> pb.GetLockResponse:
        self._flake("GetLock", context)
        return pb.GetLockResponse()

    def Cleanup(self, request: Any, context: Any) -> pb.CleanupResponse:
        self._flake("Cleanup", context)
        return pb.CleanupResponse(lock_deleted=True)

    def IssueTicket(self, request: Any, context: Any) -> pb.IssueTicketResponse:
        self._flake("IssueTicket", context)
        return pb.IssueTicketResponse(ticket=pb.Ticket(number=0, expires=1.0))


@contextlib.contextmanager
def serving(
    failures: int, code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE
) -> Iterator[tuple[FlakyService, str]]:
    """A FlakyService on a free loopback port, and its address."""
    service = FlakyService(failures, code)
    with scripted_server(service) as target:
        yield service, target


@pytest.fixture
def flaky() -> Iterator[tuple[FlakyService, str]]:
    with serving(failures=2) as running:
        yield running


def test_idempotent_calls_are_retried_on_unavailable(flaky: tuple[FlakyService, str]) -> None:
    service, target = flaky
    with LockClient(target) as client:
        assert client.get_lock("c") is None
        assert client.cleanup("c", 0) is True
    assert service.attempts == Counter({"GetLock": 3, "Cleanup": 3})


def test_issue_ticket_is_never_retried(flaky: tuple[FlakyService, str]) -> None:
    service, target = flaky
    with LockClient(target) as client, pytest.raises(StoreUnavailableError) as raised:
        client.issue_ticket("c")
    assert raised.value.code == grpc.StatusCode.UNAVAILABLE
    assert "in_memory" in str(raised.value) and "UNAVAILABLE" in str(raised.value)
    assert service.attempts["IssueTicket"] == 1


async def test_async_client_retries_the_same_way(flaky: tuple[FlakyService, str]) -> None:
    service, target = flaky
    async with AsyncLockClient(target) as client:
        assert await client.get_lock("c") is None
        with pytest.raises(StoreUnavailableError):
            await client.issue_ticket("c")
    assert service.attempts == Counter({"GetLock": 3, "IssueTicket": 1})


def test_retries_give_up_after_five_attempts() -> None:
    with serving(failures=100) as (service, target):
        with LockClient(target) as client, pytest.raises(StoreUnavailableError):
            client.get_lock("c")
        assert service.attempts["GetLock"] == 5


@pytest.mark.parametrize(
    ("code", "error"),
    [
        (grpc.StatusCode.FAILED_PRECONDITION, StoreDataError),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, ResourceExhaustedError),
    ],
)
def test_store_data_and_limit_errors_are_mapped_and_never_retried(
    code: grpc.StatusCode, error: type[Exception]
) -> None:
    with serving(failures=100, code=code) as (service, target):
        with LockClient(target) as client:
            with pytest.raises(error) as raised:
                client.get_lock("c")
            assert raised.value.code == code  # type: ignore[attr-defined]
            with pytest.raises(error):
                client.issue_ticket("c")
        assert service.attempts == Counter({"GetLock": 1, "IssueTicket": 1})
