"""InMemoryLockStore as a unit: each method one step, and abandoned locks swept."""

from __future__ import annotations

import asyncio
import time

import pytest
from ticketlock import Ticket, TicketLock
from ticketlock_server.stores import in_memory
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
