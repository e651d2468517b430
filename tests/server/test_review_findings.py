"""Review findings, unit level: each test fails on the current code and passes once
the defect it names is fixed. Every test is bounded (a few seconds at most).
"""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from ticketlock import Ticket, TicketLock
from ticketlock_server.stores import in_memory
from ticketlock_server.stores.in_memory import InMemoryLockStore
from ticketlock_server.waiting import WakeHub

pytestmark = pytest.mark.timeout(20)


async def test_locks_created_by_save_lock_are_swept_too(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only issue_ticket schedules a review, so a conversation that SaveLock
    created and then abandoned stays in memory for ever."""
    monkeypatch.setattr(in_memory, "SWEEP_INTERVAL", 0.0)
    store = InMemoryLockStore()
    for i in range(50):
        await store.save_lock(TicketLock(f"saved-{i}", [Ticket(0, time.time() + 0.05)]))
    await asyncio.sleep(0.1)
    await store.issue_ticket("trigger", 30)
    assert len(store) == 1, f"{len(store) - 1} abandoned SaveLock conversations were kept"


async def test_review_heap_does_not_grow_with_each_re_creation_of_a_busy_lock(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each creation of a lock pushes a review, and the sweep re-pushes every due
    review of a lock that exists: a conversation that is re-created often and is
    busy when the sweep looks keeps all its reviews, so the heap grows with the
    number of messages, not with the number of locks ("never outgrows the dict")."""
    monkeypatch.setattr(in_memory, "SWEEP_INTERVAL", 0.0)
    store = InMemoryLockStore()
    for _ in range(3):
        for _ in range(200):  # 200 messages, each: issue, done, cleanup (lock deleted)
            issued = await store.issue_ticket("busy", 0.2)
            await store.cleanup("busy", issued.ticket.number)
        holder = await store.issue_ticket("busy", 30)  # busy when the sweep looks
        await asyncio.sleep(0.3)
        await store.issue_ticket("other", 30)  # sweeps
        await store.cleanup("busy", holder.ticket.number)
        await store.cleanup("other", 0)
    reviews = len(store._reviews)  # the structure whose growth is the defect
    assert reviews <= 10, f"{reviews} pending reviews for {len(store)} locks"


def test_waiter_count_can_be_read_from_the_metrics_thread() -> None:
    """``metrics.watch(lambda: len(hub), ...)``: prometheus calls it from its HTTP
    thread, while the event loop adds and removes rooms; iterating the dict then
    raises 'dictionary changed size during iteration' and the scrape fails."""
    hub = WakeHub()
    for i in range(20_000):
        hub.enter(f"resident-{i}", 0)
    errors: list[BaseException] = []
    stop = threading.Event()

    def scrape() -> None:
        while not stop.is_set():
            try:
                len(hub)
            except RuntimeError as error:
                errors.append(error)
                return

    scraper = threading.Thread(target=scrape, daemon=True)
    scraper.start()
    deadline = time.monotonic() + 2.5
    i = 0
    try:
        while time.monotonic() < deadline and not errors:
            waiter = hub.enter(f"passing-{i}", 0)
            hub.leave(f"passing-{i}", waiter)
            i += 1
    finally:
        stop.set()
        scraper.join(5)
    assert not errors, f"len(hub) from another thread failed: {errors[0]!r}"
