"""Arrival order within a process: Rasa's own lock-store scenario, on every store.

Ten ``lock()`` calls of one conversation start together (no stagger), and the
earlier a message arrived the longer it takes: without a ticket order that
follows the order of the calls, the quicker later messages overtake. Across
processes the order is arrival at the server; within one client (or one
``RemoteLockStore``), it is the order of the calls.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from ticketlock import AsyncLockClient, LockClient
from ticketlock._order import IssueOrder, Turn
from ticketlock.rasa import RemoteLockStore

from tests.support.store_servers import StoreServers

STORES = ["in_memory", "redis", "concurrent_redis"]
REPETITIONS = 50
MESSAGES = 10
pytestmark = [pytest.mark.timeout(600), pytest.mark.slow]


class Agent:
    """Rasa's ``Agent.handle_message`` with its processing patched as Rasa's tests do."""

    def __init__(self) -> None:
        self.finished: list[int] = []
        self.inside = 0
        self.overlaps = 0

    async def process(self, index: int) -> None:
        self.inside += 1
        self.overlaps += self.inside > 1
        # Message i takes (10 - i) ms: later messages are quicker.
        await asyncio.sleep((MESSAGES - index) * 0.001)
        self.finished.append(index)
        self.inside -= 1


async def _ten_messages(lock: Callable[[str], Any]) -> None:
    cid = f"order-{uuid.uuid4().hex}"
    agent = Agent()

    async def handle(index: int) -> None:
        async with lock(cid):
            await agent.process(index)

    # All ten created in one loop turn: they call lock() in creation order.
    tasks = [asyncio.ensure_future(handle(i)) for i in range(MESSAGES)]
    await asyncio.wait_for(asyncio.gather(*tasks), 30)
    assert agent.finished == list(range(MESSAGES))
    assert agent.overlaps == 0


async def _rasa_scenario(lock: Callable[[str], Any]) -> None:
    for _ in range(REPETITIONS):
        await _ten_messages(lock)


@pytest.mark.parametrize("kind", STORES)
async def test_remote_lock_store_keeps_arrival_order(
    store_servers: StoreServers, kind: str
) -> None:
    store = RemoteLockStore(url=store_servers(kind).target)
    try:
        await _rasa_scenario(store.lock)
    finally:
        store.close()


@pytest.mark.parametrize("kind", STORES)
async def test_async_client_keeps_arrival_order(store_servers: StoreServers, kind: str) -> None:
    async with AsyncLockClient(store_servers(kind).target) as client:
        await _rasa_scenario(lambda cid: client.lock(cid, 30))


class RecordingOrder(IssueOrder):
    """Records the order in which calls joined the chain: the order of the calls."""

    def __init__(self) -> None:
        super().__init__()
        self.arrivals: dict[str, list[int]] = {}
        self.index = threading.local()

    def take(self, conversation_id: str) -> Turn:
        with self._mutex:
            # Taken under the chain's own lock, so the record is the chain's order.
            self.arrivals.setdefault(conversation_id, []).append(self.index.value)
            ahead = self._tails.get(conversation_id)
            turn = Turn(self, conversation_id, ahead)
            self._tails[conversation_id] = turn
            return turn


def _ten_threads(client: LockClient, order: RecordingOrder) -> None:
    cid = f"order-{uuid.uuid4().hex}"
    finished: list[int] = []
    errors: list[BaseException] = []
    start = threading.Barrier(MESSAGES)

    def handle(index: int) -> None:
        try:
            order.index.value = index
            start.wait(10)  # all ten call lock() together
            with client.lock(cid, 30):
                finished.append(index)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=handle, args=(i,)) for i in range(MESSAGES)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not errors
    assert finished == order.arrivals[cid]
    assert sorted(finished) == list(range(MESSAGES))


@pytest.mark.parametrize("kind", STORES)
def test_sync_client_threads_keep_arrival_order(store_servers: StoreServers, kind: str) -> None:
    order = RecordingOrder()
    with LockClient(store_servers(kind).target, issue_order=order) as client:
        for _ in range(REPETITIONS):
            _ten_threads(client, order)
