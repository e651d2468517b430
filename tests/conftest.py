"""Shared fixtures: real server processes on real loopback ports."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
from ticketlock import AsyncLockClient, LockClient

from harness.server import ServerProcess

pytest_plugins = ["tests.support.redis_fixtures", "tests.support.store_servers"]


@pytest.fixture(scope="session")
def server() -> Iterator[ServerProcess]:
    """One in-memory server for the whole session (tests use distinct conversation ids)."""
    with ServerProcess(["--log-level", "warning"]) as process:
        yield process


@pytest.fixture
def target(server: ServerProcess) -> str:
    return server.target


@pytest.fixture
def client(target: str) -> Iterator[LockClient]:
    with LockClient(target) as c:
        yield c


@pytest.fixture
async def aclient(target: str) -> AsyncIterator[AsyncLockClient]:
    async with AsyncLockClient(target) as c:
        yield c


@pytest.fixture
def cid() -> str:
    """A conversation id no other test uses."""
    return f"conv-{uuid.uuid4().hex}"
