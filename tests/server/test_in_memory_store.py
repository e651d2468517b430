"""InMemoryLockStore as a unit, under a fake clock: each method one step, and
abandoned locks swept."""

from __future__ import annotations

import time
import tracemalloc
import uuid

import pytest
from ticketlock import Ticket, TicketLock
from ticketlock_server.config import StoreLimits
from ticketlock_server.stores import in_memory
from ticketlock_server.stores.base import StoreLimitExceeded
from ticketlock_server.stores.in_memory import InMemoryLockStore

from tests.support.clock import FakeClock


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(clock: FakeClock) -> InMemoryLockStore:
    return InMemoryLockStore(clock=clock)


@pytest.fixture
def sweep_always(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every issue or save sweeps, instead of at most once per SWEEP_INTERVAL."""
    monkeypatch.setattr(in_memory, "SWEEP_INTERVAL", 0.0)


async def test_issue_position_finish_cleanup(store: InMemoryLockStore) -> None:
    first = await store.issue_ticket("c", 30)
    second = await store.issue_ticket("c", 30)
    assert (first.ticket.number, first.now_serving, first.acquired) == (0, 0, True)
    assert (second.ticket.number, second.acquired) == (1, False)
    position = await store.position("c", 1)
    assert position is not None and position.tickets_ahead == 1 and position.now_serving == 0
    assert position.next_change_in == 30
    assert await store.position("c", 5) is None
    assert await store.position("nobody", 0) is None
    assert await store.finish_serving("c", 0) is True
    assert await store.finish_serving("c", 0) is False
    held = await store.position("c", 1, with_lock=True)
    assert held is not None and held.acquired and held.lock == TicketLock("c", [second.ticket])
    assert await store.cleanup("c", 1) is True
    assert await store.get_lock("c") is None


async def test_get_and_save_never_alias_the_stored_lock(
    store: InMemoryLockStore, clock: FakeClock
) -> None:
    lock = TicketLock("c", [Ticket(1, clock.now + 30)])
    await store.save_lock(lock)
    lock.tickets.clear()
    stored = await store.get_lock("c")
    assert stored is not None and [t.number for t in stored.tickets] == [1]
    stored.tickets.clear()
    assert await store.is_someone_waiting("c")


async def test_refresh_and_expiry_by_the_store_clock(
    store: InMemoryLockStore, clock: FakeClock
) -> None:
    await store.issue_ticket("c", 0.05)
    refreshed = await store.refresh_ticket("c", 0, 30)
    assert refreshed is not None and refreshed.expires == clock.now + 30
    assert await store.refresh_ticket("c", 9, 30) is None
    await store.issue_ticket("d", 0.05)
    clock.advance(0.04)
    assert await store.is_someone_waiting("d")
    clock.advance(0.02)
    assert not await store.is_someone_waiting("d")
    assert await store.position("d", 0) is None


@pytest.mark.usefixtures("sweep_always")
async def test_locks_whose_tickets_all_expired_are_swept(
    store: InMemoryLockStore, clock: FakeClock
) -> None:
    for i in range(100):
        await store.issue_ticket(f"abandoned-{i}", 0.05)
    await store.issue_ticket("alive", 30)
    assert len(store) == 101
    clock.advance(0.1)
    await store.issue_ticket("trigger", 30)
    assert len(store) == 2
    assert await store.get_lock("alive") is not None
    # A lock whose ticket was refreshed is looked at again later, not dropped.
    await store.issue_ticket("refreshed", 0.05)
    await store.refresh_ticket("refreshed", 0, 30)
    clock.advance(0.1)
    await store.issue_ticket("trigger-2", 30)
    assert await store.is_someone_waiting("refreshed")


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


@pytest.mark.usefixtures("sweep_always")
async def test_locks_created_by_save_lock_are_swept_once_their_tickets_expire(
    store: InMemoryLockStore, clock: FakeClock
) -> None:
    """A conversation that SaveLock created and then abandoned is forgotten like
    one that IssueTicket created: the sweep drops it once its tickets expired."""
    for i in range(50):
        await store.save_lock(TicketLock(f"saved-{i}", [Ticket(0, clock.now + 0.05)]))
    assert len(store) == 50
    clock.advance(0.1)
    await store.issue_ticket("trigger", 30)
    assert len(store) == 1, f"{len(store) - 1} abandoned SaveLock conversations were kept"


@pytest.mark.usefixtures("sweep_always")
async def test_pending_reviews_stay_bounded_by_the_locks_not_the_messages(
    store: InMemoryLockStore, clock: FakeClock
) -> None:
    """The sweep's heap holds one review per conversation: a conversation that is
    re-created for every message, and is busy whenever the sweep looks at it,
    does not make the heap grow with the number of messages."""
    for _ in range(3):
        for _ in range(200):  # 200 messages, each: issue, done, cleanup (lock deleted)
            issued = await store.issue_ticket("busy", 0.2)
            await store.cleanup("busy", issued.ticket.number)
        holder = await store.issue_ticket("busy", 30)  # busy when the sweep looks
        clock.advance(0.3)
        await store.issue_ticket("other", 30)  # sweeps
        await store.cleanup("busy", holder.ticket.number)
        await store.cleanup("other", 0)
    reviews = len(store._reviews)  # the structure whose growth would be the defect
    assert reviews <= 10, f"{reviews} pending reviews for {len(store)} locks"
