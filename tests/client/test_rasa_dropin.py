"""``ticketlock.rasa.RemoteLockStore`` used the way Rasa uses a lock store."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from ticketlock import Ticket, TicketLock
from ticketlock.rasa import LOCK_LIFETIME, RemoteLockStore

from tests.support.conditions import eventually


@dataclass
class EndpointConfig:
    """The shape of ``rasa.utils.endpoints.EndpointConfig`` that a lock store sees."""

    url: str | None = None
    type: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)


def load_like_rasa(config: EndpointConfig) -> Any:
    """What Rasa's ``_load_from_module_name_in_endpoint_config`` does."""
    assert config.type is not None
    module_name, _, class_name = config.type.rpartition(".")
    cls = getattr(importlib.import_module(module_name), class_name)
    return cls(endpoint_config=config)


@pytest.fixture
def store(target: str) -> Iterator[RemoteLockStore]:
    config = EndpointConfig(url=target, type="ticketlock.rasa.RemoteLockStore")
    lock_store = load_like_rasa(config)
    assert isinstance(lock_store, RemoteLockStore)
    yield lock_store
    lock_store.close()


class AgentLike:
    """Rasa's ``Agent.handle_message``: the whole message under the sender's lock."""

    def __init__(self, lock_store: Any) -> None:
        self.lock_store = lock_store
        self.started: list[int] = []
        self.finished: list[int] = []
        self.inside = 0
        self.overlaps = 0

    async def handle_message(self, sender_id: str, index: int, seconds: float) -> None:
        async with self.lock_store.lock(sender_id):
            await self._process(index, seconds)

    async def _process(self, index: int, seconds: float) -> None:
        self.inside += 1
        self.overlaps += self.inside > 1
        self.started.append(index)
        await asyncio.sleep(seconds)
        self.finished.append(index)
        self.inside -= 1


async def _ten_messages(
    agent: AgentLike, sender_id: str, arrived: Callable[[int], Awaitable[bool]]
) -> None:
    tasks = []
    for index in range(10):
        # Message i takes (10 - i) * 20 ms: later messages are quicker.
        seconds = (10 - index) * 0.02
        tasks.append(asyncio.ensure_future(agent.handle_message(sender_id, index, seconds)))
        # The next message arrives once this one has been taken in.
        await eventually(functools.partial(arrived, index), f"message {index} to arrive")
    await asyncio.wait_for(asyncio.gather(*tasks), 30)


def taken_in_by(store: RemoteLockStore, agent: AgentLike, sender_id: str) -> Any:
    """Message i has arrived once it holds a ticket: the lock has issued ticket i
    (a fresh conversation on the in-memory store numbers from 0), or it started."""

    async def arrived(index: int) -> bool:
        if index in agent.started:
            return True
        lock = await asyncio.to_thread(store.get_lock, sender_id)
        return lock is not None and lock.last_issued >= index

    return arrived


async def test_ten_messages_of_one_sender_are_processed_in_arrival_order(
    store: RemoteLockStore, cid: str
) -> None:
    agent = AgentLike(store)
    await _ten_messages(agent, cid, taken_in_by(store, agent, cid))
    assert agent.finished == list(range(10))
    assert agent.started == list(range(10))
    assert agent.overlaps == 0
    assert store.get_lock(cid) is None  # nothing left behind


async def test_without_a_lock_the_same_messages_finish_out_of_order(cid: str) -> None:
    """The control: the scenario above would catch a lock that does not serialise."""

    class NoLock:
        @contextlib.asynccontextmanager
        async def lock(self, conversation_id: str) -> AsyncIterator[None]:
            yield

    agent = AgentLike(NoLock())

    async def started(index: int) -> bool:
        return index in agent.started

    await _ten_messages(agent, cid, started)
    assert agent.finished != list(range(10))
    assert agent.overlaps > 0


async def test_lock_accepts_rasa_arguments_and_yields_the_lock(
    store: RemoteLockStore, cid: str
) -> None:
    async with store.lock(cid, lock_lifetime=30, wait_time_in_seconds=5) as lock:
        assert isinstance(lock, TicketLock)
        assert lock.conversation_id == cid
        assert not lock.is_locked(lock.tickets[0].number)
        assert store.is_someone_waiting(cid)
    assert not store.is_someone_waiting(cid)


async def test_other_senders_are_not_blocked(store: RemoteLockStore, cid: str) -> None:
    async with store.lock(cid + "-a"):
        started = time.monotonic()
        async with store.lock(cid + "-b"):
            assert time.monotonic() - started < 1.0


def test_store_interface_of_rasa(store: RemoteLockStore, cid: str) -> None:
    assert store.get_lock(cid) is None
    assert store.get_or_create_lock(cid) == TicketLock(cid)
    assert RemoteLockStore.create_lock(cid) == TicketLock(cid)
    assert RemoteLockStore.create(store) is store
    first = store.issue_ticket(cid)
    second = store.issue_ticket(cid, lock_lifetime=30)
    assert (first, second) == (0, 1)
    lock = store.get_lock(cid)
    assert lock is not None and lock.now_serving == 0 and lock.last_issued == 1
    assert lock.tickets[0].expires == pytest.approx(time.time() + LOCK_LIFETIME, abs=2)
    assert store.increment_ticket_number(lock) == 2
    assert store.is_someone_waiting(cid)
    store.finish_serving(cid, 0)
    store.update_lock(cid)
    lock = store.get_lock(cid)
    assert lock is not None and [t.number for t in lock.tickets] == [1]
    store.cleanup(cid, 1)
    assert store.get_lock(cid) is None
    store.issue_ticket(cid)
    store.delete_lock(cid)
    assert store.get_lock(cid) is None


def test_save_lock_takes_rasa_shaped_locks(store: RemoteLockStore, cid: str) -> None:
    class RasaTicketLock:
        """Rasa's own ``TicketLock`` as far as ``save_lock`` may touch it."""

        def __init__(self, conversation_id: str, tickets: list[tuple[int, float]]) -> None:
            self.conversation_id = conversation_id
            self.tickets = tickets

        def dumps(self) -> str:
            tickets = [json.dumps({"number": n, "expires": e}) for n, e in self.tickets]
            return json.dumps({"conversation_id": self.conversation_id, "tickets": tickets})

    expires = time.time() + 30
    store.save_lock(RasaTicketLock(cid, [(4, expires), (5, expires + 1)]))
    assert store.get_lock(cid) == TicketLock(cid, [Ticket(4, expires), Ticket(5, expires + 1)])
    store.delete_lock(cid)


def test_endpoint_kwargs_carry_token_and_timeout(target: str) -> None:
    config = EndpointConfig(url=target, type="x", kwargs={"token": "t", "timeout": 3})
    lock_store = RemoteLockStore(endpoint_config=config)
    try:
        assert lock_store.url == target
        assert lock_store._token == "t" and lock_store._timeout == 3.0
    finally:
        lock_store.close()


def test_acquire_errors_are_rasa_lock_errors_when_rasa_is_installed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Rasa catches its own ``rasa.core.lock_store.LockError``; with Rasa installed,
    the store's acquire errors are that class as well as ticketlock's."""
    import sys
    import types

    import ticketlock.rasa as rasa_module
    from ticketlock import LockError

    class RasaLockError(Exception):
        pass

    fake = types.ModuleType("rasa.core.lock_store")
    fake.LockError = RasaLockError  # type: ignore[attr-defined]
    for name in ("rasa", "rasa.core"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, "rasa.core.lock_store", fake)
    rasa_module._acquire_error_class.cache_clear()
    try:
        store = RemoteLockStore(url="127.0.0.1:1", timeout=0.5)
        try:
            with pytest.raises(RasaLockError) as raised:
                store.issue_ticket("c")
            assert isinstance(raised.value, LockError)
            assert "Error while acquiring lock" in str(raised.value)
        finally:
            store.close()
    finally:
        rasa_module._acquire_error_class.cache_clear()


async def test_lock_failures_are_lock_errors(cid: str) -> None:
    from ticketlock import LockError

    store = RemoteLockStore(url="127.0.0.1:1", timeout=0.5)
    try:
        with pytest.raises(LockError, match="Error while acquiring lock"):
            async with store.lock(cid):
                pytest.fail("acquired without a server")
    finally:
        store.close()
