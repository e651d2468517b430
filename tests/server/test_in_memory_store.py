"""InMemoryLockStore as a unit: each method one step, and abandoned locks swept."""

from __future__ import annotations

import asyncio
import time
import tracemalloc
import uuid

import pytest
from ticketlock import Ticket, TicketLock
from ticketlock_server.config import StoreLimits
from ticketlock_server.stores import in_memory
from ticketlock_server.stores.base import StoreLimitExceeded
from ticketlock_server.stores.in_memory import InMemoryLockStore


async def test_issue_position_finish_cleanup() -> None:
    store = InMemoryLockStore()
    first = await store.issue_ticket("c", 30)
    second = await store.issue_ticket("c", 30)
    assert (first.ticket.number, first.now_serving, first.acquired) == (0, 0, True)
    assert (second.ticket.number, second.acquired) == (1, False)
    position = await store.position("c", 1)
    assert position is not None and position.tickets_ahead == 1 and position.now_serving == 0
    assert position.next_change_in == pytest.approx(30, abs=1)
    assert await store.position("c", 5) is None
    assert await store.position("nobody", 0) is None
    assert await store.finish_serving("c", 0) is True
    assert await store.finish_serving("c", 0) is False
    held = await store.position("c", 1, with_lock=True)
    assert held is not None and held.acquired and held.lock == TicketLock("c", [second.ticket])
    assert await store.cleanup("c", 1) is True
    assert await store.get_lock("c") is None


async def test_get_and_save_never_alias_the_stored_lock() -> None:
    store = InMemoryLockStore()
    lock = TicketLock("c", [Ticket(1, time.time() + 30)])
    await store.save_lock(lock)
    lock.tickets.clear()
    stored = await store.get_lock("c")
    assert stored is not None and [t.number for t in stored.tickets] == [1]
    stored.tickets.clear()
    assert await store.is_someone_waiting("c")


async def test_refresh_and_expiry_by_the_store_clock() -> None:
    store = InMemoryLockStore()
    await store.issue_ticket("c", 0.05)
    refreshed = await store.refresh_ticket("c", 0, 30)
    assert refreshed is not None and refreshed.expires == pytest.approx(time.time() + 30, abs=1)
    assert await store.refresh_ticket("c", 9, 30) is None
    await store.issue_ticket("d", 0.05)
    await asyncio.sleep(0.1)
    assert not await store.is_someone_waiting("d")
    assert await store.position("d", 0) is None


async def test_locks_whose_tickets_all_expired_are_swept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(in_memory, "SWEEP_INTERVAL", 0.0)
    store = InMemoryLockStore()
    for i in range(100):
        await store.issue_ticket(f"abandoned-{i}", 0.05)
    await store.issue_ticket("alive", 30)
    assert len(store) == 101
    await asyncio.sleep(0.1)
    await store.issue_ticket("trigger", 30)
    assert len(store) == 2
    assert await store.get_lock("alive") is not None
    # A lock whose ticket was refreshed is looked at again later, not dropped.
    await store.issue_ticket("refreshed", 0.05)
    await store.refresh_ticket("refreshed", 0, 30)
    await asyncio.sleep(0.1)
    await store.issue_ticket("trigger-2", 30)
    assert await store.is_someone_waiting("refreshed")


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


async def test_numbers_are_kept_for_the_retention_then_forgotten() -> None:
    clock = FakeClock()
    store = InMemoryLockStore(limits=StoreLimits(number_retention_seconds=60), clock=clock)
    first = await store.issue_ticket("c", 1)
    assert await store.cleanup("c", first.ticket.number)
    clock.now += 50  # a sweep runs (every 10 s), and the number is kept
    assert (await store.issue_ticket("c", 1)).ticket.number == first.ticket.number + 1
    await store.cleanup("c", first.ticket.number + 1)
    clock.now += 61 + in_memory.SWEEP_INTERVAL
    await store.issue_ticket("sweep", 1)
    assert (await store.issue_ticket("c", 1)).ticket.number == 0


async def test_memory_goes_back_once_no_conversation_numbers_are_kept() -> None:
    """50,000 conversations with 36-byte ids come and go; once their numbers are no
    longer kept, the memory they took is given back (the table is rebuilt smaller)."""
    clock = FakeClock()
    store = InMemoryLockStore(limits=StoreLimits(number_retention_seconds=60), clock=clock)
    await store.issue_ticket("warm-up", 1)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(50_000):
            cid = str(uuid.uuid4())
            issued = await store.issue_ticket(cid, 1)
            await store.cleanup(cid, issued.ticket.number)
        during = tracemalloc.get_traced_memory()[0]
        clock.now += 61 + in_memory.SWEEP_INTERVAL
        await store.issue_ticket("sweep", 1)
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    taken = during - before
    print(f"\n50,000 conversations: {taken / 50_000:.0f} B each; left after: {after - before} B")
    assert taken > 50_000 * 100
    assert after - before < taken / 50


async def test_a_conversation_holds_at_most_its_limit_of_tickets() -> None:
    store = InMemoryLockStore(limits=StoreLimits(max_tickets_per_conversation=3))
    for _ in range(3):
        await store.issue_ticket("c", 30)
    with pytest.raises(StoreLimitExceeded, match=r"max_tickets_per_conversation \(3\)"):
        await store.issue_ticket("c", 30)
    before = await store.get_lock("c")
    four = TicketLock("c", [Ticket(n, time.time() + 30) for n in range(10, 14)])
    with pytest.raises(StoreLimitExceeded, match=r"max_tickets_per_conversation \(3\)"):
        await store.save_lock(four)
    assert await store.get_lock("c") == before
