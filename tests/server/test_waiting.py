"""The waiting core as a unit: ``WakeHub`` and ``wait_for_turn``, without a server.

``wait_for_turn`` runs against a recording store (the in-memory store under a
fake clock, so no timer is ever due): the only wake-ups are the hub's. Every step
lets the event loop run until nothing is ready any more (``settle``), which needs
no real time: nothing here waits on a socket or a due timer.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from ticketlock.model import Position
from ticketlock_server.config import StoreLimits
from ticketlock_server.stores.in_memory import InMemoryLockStore
from ticketlock_server.waiting import (
    FULL_UPDATES,
    ShuttingDown,
    TicketNotFound,
    WakeHub,
    wait_for_turn,
)

from tests.support.clock import FakeClock
from tests.support.conditions import eventually

# Longer than any test: the first waiter's periodic re-check never fires by itself.
NO_RECHECK = 3600.0


def woken_places(room_size: int) -> list[int]:
    """The places (0 = first) of a room that a change wakes: every one of the first
    FULL_UPDATES, and beyond them the places 2**k - 1."""
    return [i for i in range(room_size) if i < FULL_UPDATES or (i + 1) & i == 0]


# ----------------------------------------------------------------------------- WakeHub


def _room(hub: WakeHub, conversation_id: str, size: int) -> list[Any]:
    """Waiters for tickets 0..size-1, entered in a scrambled order."""
    order = sorted(range(size), key=lambda n: (n * 7919) % (size or 1))
    waiters = {n: hub.enter(conversation_id, n) for n in order}
    for waiter in waiters.values():
        waiter.event.clear()
    return [waiters[n] for n in range(size)]


def _set(waiters: list[Any]) -> list[int]:
    return [i for i, w in enumerate(waiters) if w.event.is_set()]


def test_the_wake_pattern_matches_its_definition() -> None:
    assert FULL_UPDATES == 16
    assert woken_places(17) == list(range(16))
    assert woken_places(40) == [*range(16), 31]
    assert woken_places(100) == [*range(16), 31, 63]
    assert woken_places(1000) == [*range(16), 31, 63, 127, 255, 511]


@pytest.mark.parametrize("size", [1, 16, 17, 40, 100])
def test_notify_wakes_the_first_sixteen_then_the_places_two_to_the_k_minus_one(
    size: int,
) -> None:
    hub = WakeHub()
    waiters = _room(hub, "c", size)
    other = _room(hub, "other", 3)
    assert len(hub) == size + 3
    hub.notify("c")
    assert _set(waiters) == woken_places(size)
    assert _set(other) == []  # another conversation's room is not woken


def test_a_room_is_kept_in_ticket_order_whatever_the_order_of_entry() -> None:
    hub = WakeHub()
    waiters = _room(hub, "c", 40)
    for number, waiter in enumerate(waiters):
        assert waiter.number == number
    assert hub.is_first("c", waiters[0])
    assert not hub.is_first("c", waiters[1])
    assert not hub.is_first("nobody", waiters[0])


def test_a_queue_drained_by_releases_wakes_each_waiter_about_log_n_times() -> None:
    """100 waiters; 100 times a change, then the first one leaves: the waiter that
    starts at place p is woken by the changes exactly at the places q <= p that the
    pattern wakes, O(log p) times, so the drain costs O(n log n) wake-ups."""
    size = 100
    hub = WakeHub()
    waiters = _room(hub, "c", size)
    wakes = [0] * size
    for head in range(size):
        for waiter in waiters[head:]:
            waiter.event.clear()
        hub.notify("c")
        for number in _set(waiters[head:]):
            wakes[head + number] += 1
        hub.leave("c", waiters[head])
    assert wakes == [len(woken_places(n + 1)) for n in range(size)]
    assert sum(wakes) < 25 * size  # not n * n / 2 = 5,000
    assert len(hub) == 0


def test_leave_of_the_first_waiter_wakes_the_next_one_only() -> None:
    hub = WakeHub()
    first, second, third = _room(hub, "c", 3)
    assert hub.leave("c", first) is False
    assert _set([first, second, third]) == [1]
    assert hub.is_first("c", second)


def test_leave_of_a_waiter_further_back_wakes_nobody() -> None:
    hub = WakeHub()
    first, second, third = _room(hub, "c", 3)
    assert hub.leave("c", second) is False
    assert _set([first, second, third]) == []
    assert len(hub) == 2


def test_leave_removes_the_very_waiter_among_waiters_of_the_same_ticket() -> None:
    """Two streams may wait for the same ticket number: each leaves on its own."""
    hub = WakeHub()
    a = hub.enter("c", 5)
    b = hub.enter("c", 5)
    assert hub.leave("c", b) is False
    assert hub.is_first("c", a)
    assert hub.leave("c", b) is False  # already gone
    assert len(hub) == 1
    assert hub.leave("c", a) is True  # the room's last waiter
    assert len(hub) == 0
    assert hub.leave("c", a) is False  # the room is gone


def test_close_wakes_every_waiter_and_interrupts_every_holder() -> None:
    hub = WakeHub()
    rooms = [_room(hub, f"c{i}", size) for i, size in enumerate((1, 17, 40))]
    interrupted: list[Exception] = []

    class Holder:
        def interrupt(self, reason: Exception) -> None:
            interrupted.append(reason)

    hub.holders.update({Holder(), Holder()})
    assert not hub.closed
    hub.close()
    assert hub.closed
    assert all(w.event.is_set() for room in rooms for w in room)
    assert len(interrupted) == 2 and all(isinstance(r, ShuttingDown) for r in interrupted)


def test_notify_all_wakes_every_room_and_has_every_holder_recheck() -> None:
    hub = WakeHub()
    rooms = {size: _room(hub, f"c{size}", size) for size in (1, 17, 40)}
    rechecked: list[object] = []

    class Holder:
        def recheck(self) -> None:
            rechecked.append(self)

    hub.holders.add(Holder())
    hub.notify_all()
    for size, room in rooms.items():
        assert _set(room) == woken_places(size)
    assert len(rechecked) == 1


def test_the_waiter_count_can_be_read_from_another_thread() -> None:
    """Prometheus reads ``len(hub)`` from its HTTP thread while the event loop adds
    and removes rooms: the count is a plain number, so reading it never fails."""
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
    assert len(hub) == 20_000


# ------------------------------------------------------------------------ wait_for_turn


class RecordingStore(InMemoryLockStore):
    """The in-memory store, recording the waiting-related calls made to it."""

    def __init__(self, clock: FakeClock) -> None:
        # Rooms of up to 100 waiters behind a holder: above the default ticket cap.
        super().__init__(limits=StoreLimits(max_tickets_per_conversation=1000), clock=clock)
        self.reads: list[int] = []
        self.read_args: list[dict[str, Any]] = []
        self.watched: list[str] = []
        self.unwatched: list[str] = []

    async def watch(self, conversation_id: str) -> None:
        self.watched.append(conversation_id)

    def unwatch(self, conversation_id: str) -> None:
        self.unwatched.append(conversation_id)

    async def position(
        self, conversation_id: str, ticket_number: int, *args: Any, **kwargs: Any
    ) -> Position | None:
        call = _POSITION.bind(self, conversation_id, ticket_number, *args, **kwargs)
        call.apply_defaults()
        self.reads.append(ticket_number)
        self.read_args.append(
            {name: call.arguments[name] for name in ("with_lock", "next_change", "epoch")}
        )
        return await super().position(conversation_id, ticket_number, *args, **kwargs)


_POSITION = inspect.signature(InMemoryLockStore.position)


async def settle() -> None:
    """Run the loop until every task woken so far has done all it can do."""
    for _ in range(50):
        await asyncio.sleep(0)


class Waiters:
    """Tasks that run ``wait_for_turn`` and record what each one is told."""

    def __init__(self, store: RecordingStore, hub: WakeHub, conversation_id: str) -> None:
        self.store, self.hub, self.conversation_id = store, hub, conversation_id
        self.told: dict[int, list[tuple[int, bool]]] = {}
        self.tasks: dict[int, asyncio.Task[None]] = {}

    def start(self, number: int, **options: Any) -> asyncio.Task[None]:
        self.told[number] = []

        async def run() -> None:
            async for position in wait_for_turn(
                self.store,
                self.hub,
                self.conversation_id,
                number,
                recheck_interval=options.pop("recheck_interval", NO_RECHECK),
                **options,
            ):
                self.told[number].append((position.tickets_ahead, position.acquired))

        task = self.tasks[number] = asyncio.ensure_future(run())
        return task

    async def cancel_all(self) -> None:
        for task in self.tasks.values():
            task.cancel()
        await asyncio.gather(*self.tasks.values(), return_exceptions=True)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(clock: FakeClock) -> RecordingStore:
    return RecordingStore(clock)


@pytest.fixture
async def waiters(store: RecordingStore) -> AsyncIterator[Waiters]:
    group = Waiters(store, WakeHub(), "c")
    yield group
    await group.cancel_all()


async def _issue(store: RecordingStore, count: int, lifetime: float = 30) -> list[int]:
    return [(await store.issue_ticket("c", lifetime)).ticket.number for _ in range(count)]


async def test_a_waiter_is_told_its_position_at_once_then_each_change_then_acquired(
    store: RecordingStore, waiters: Waiters
) -> None:
    numbers = await _issue(store, 3)
    waiters.start(numbers[2])
    await settle()
    assert waiters.told[numbers[2]] == [(2, False)]
    assert store.watched == ["c"]  # watched before the first read
    await store.finish_serving("c", numbers[0])
    waiters.hub.notify("c")
    await settle()
    assert waiters.told[numbers[2]] == [(2, False), (1, False)]
    # A wake-up that changes nothing tells nothing.
    waiters.hub.notify("c")
    await settle()
    assert waiters.told[numbers[2]] == [(2, False), (1, False)]
    await store.finish_serving("c", numbers[1])
    waiters.hub.notify("c")
    await settle()
    assert waiters.told[numbers[2]] == [(2, False), (1, False), (0, True)]
    assert waiters.tasks[numbers[2]].done()
    assert store.unwatched == ["c"]  # the last waiter left
    assert len(waiters.hub) == 0


async def test_a_waiter_that_holds_already_is_told_acquired_alone(
    store: RecordingStore, waiters: Waiters
) -> None:
    (number,) = await _issue(store, 1)
    task = waiters.start(number, with_lock=True)
    await settle()
    assert task.done() and task.result() is None
    assert waiters.told[number] == [(0, True)]
    assert store.read_args == [{"with_lock": True, "next_change": True, "epoch": ""}]


async def test_a_missing_ticket_raises_ticket_not_found_and_leaves_the_room(
    store: RecordingStore,
) -> None:
    hub = WakeHub()
    await _issue(store, 1)
    with pytest.raises(TicketNotFound) as raised:
        async for _ in wait_for_turn(store, hub, "c", 7, recheck_interval=NO_RECHECK):
            pass
    assert (raised.value.conversation_id, raised.value.ticket_number) == ("c", 7)
    assert len(hub) == 0 and store.unwatched == ["c"]


async def test_a_ticket_finished_while_waiting_raises_ticket_not_found(
    store: RecordingStore, waiters: Waiters
) -> None:
    numbers = await _issue(store, 2)
    task = waiters.start(numbers[1])
    await settle()
    await store.finish_serving("c", numbers[1])
    waiters.hub.notify("c")
    await settle()
    assert isinstance(task.exception(), TicketNotFound)
    assert len(waiters.hub) == 0


async def test_closing_the_hub_ends_every_wait_with_shutting_down(
    store: RecordingStore, waiters: Waiters
) -> None:
    numbers = await _issue(store, 20)
    for number in numbers[1:]:
        waiters.start(number)
    await settle()
    waiters.hub.close()
    await settle()
    assert all(isinstance(t.exception(), ShuttingDown) for t in waiters.tasks.values())
    assert len(waiters.hub) == 0
    # A wait that starts after the close ends at once too.
    with pytest.raises(ShuttingDown):
        async for _ in wait_for_turn(
            store, waiters.hub, "c", numbers[1], recheck_interval=NO_RECHECK
        ):
            pass


@pytest.mark.parametrize("room_size", [1, 16, 17, 40, 100])
async def test_a_release_reaches_the_waiters_of_the_wake_pattern_only(
    store: RecordingStore, waiters: Waiters, room_size: int
) -> None:
    """Behind a holder, ``room_size`` waiters; the holder's release (finish, then a
    change) makes exactly the woken places re-read their position, and each of
    them is told its new place."""
    holder, *numbers = await _issue(store, room_size + 1)
    for number in numbers:
        waiters.start(number)
    await settle()
    assert all(told == [(i + 1, False)] for i, told in enumerate(waiters.told.values()))
    store.reads.clear()
    await store.finish_serving("c", holder)
    waiters.hub.notify("c")
    await settle()
    woken = woken_places(room_size)
    assert sorted(store.reads) == [numbers[i] for i in woken]
    for place, number in enumerate(numbers):
        told = waiters.told[number]
        if place == 0:
            assert told[-1] == (0, True)
        elif place in woken:
            assert told[-1] == (place, False)
        else:
            assert told == [(place + 1, False)]  # not woken: told nothing yet


async def test_a_first_waiter_that_gives_up_hands_the_watch_on_expiries_to_the_next(
    store: RecordingStore, waiters: Waiters
) -> None:
    """Only the first waiter asks the store for the next change (the soonest expiry
    ahead) and sleeps until it; when it leaves without a change of the store (its
    client gave up), the next waiter is woken at once and takes that role."""
    _, *numbers = await _issue(store, 4)
    for number in numbers:
        waiters.start(number)
        await settle()
    assert [a["next_change"] for a in store.read_args] == [True, False, False]
    store.reads.clear()
    store.read_args.clear()
    waiters.tasks[numbers[0]].cancel()
    await settle()
    assert store.reads == [numbers[1]]
    assert store.read_args[-1]["next_change"] is True
    assert waiters.told[numbers[1]] == [(2, False)]  # its place did not change
    assert len(waiters.hub) == 2


async def test_when_the_first_waiter_acquires_the_next_one_becomes_first(
    store: RecordingStore, waiters: Waiters
) -> None:
    holder, *numbers = await _issue(store, 41)
    for number in numbers:
        waiters.start(number)
    await settle()
    store.read_args.clear()
    store.reads.clear()
    await store.finish_serving("c", holder)
    waiters.hub.notify("c")
    await settle()
    assert waiters.told[numbers[0]][-1] == (0, True) and waiters.tasks[numbers[0]].done()
    last_read_of_next = max(i for i, n in enumerate(store.reads) if n == numbers[1])
    assert store.read_args[last_read_of_next]["next_change"] is True
    assert waiters.hub.is_first("c", waiters.hub._rooms["c"][0])
    assert waiters.hub._rooms["c"][0].number == numbers[1]


async def test_the_first_waiter_re_reads_when_the_ticket_ahead_expires(
    clock: FakeClock,
) -> None:
    """The first waiter sleeps until the soonest expiry ahead of it (by the store's
    clock), then re-reads without any wake-up."""
    store = RecordingStore(clock)
    hub = WakeHub()
    await store.issue_ticket("c", 0.05)
    waiter = await store.issue_ticket("c", 30)
    told: list[Position] = []

    async def wait() -> None:
        async for position in wait_for_turn(
            store, hub, "c", waiter.ticket.number, recheck_interval=NO_RECHECK
        ):
            told.append(position)

    task = asyncio.ensure_future(wait())
    try:
        await asyncio.wait_for(_until(lambda: len(store.reads) == 1), 10)
        clock.advance(0.06)  # the holder's ticket has run out by the store's clock
        await asyncio.wait_for(task, 10)  # woken by its timer (about 50 ms)
    finally:
        task.cancel()
    assert [(p.tickets_ahead, p.acquired) for p in told] == [(1, False), (0, True)]


async def test_a_waiter_behind_the_first_is_told_when_its_own_ticket_expires(
    clock: FakeClock,
) -> None:
    """Every waiter sleeps until its own expiry at most: one queued behind another
    waiter learns at once that its ticket ran out (TicketNotFound), without a
    wake-up and without reaching the front."""
    store = RecordingStore(clock)
    hub = WakeHub()
    await _issue(store, 2)
    short = (await store.issue_ticket("c", 0.05)).ticket.number

    async def wait(number: int) -> None:
        async for _ in wait_for_turn(store, hub, "c", number, recheck_interval=NO_RECHECK):
            pass

    ahead = asyncio.ensure_future(wait(1))
    behind = asyncio.ensure_future(wait(short))
    try:
        await asyncio.wait_for(_until(lambda: len(store.reads) == 2), 10)
        assert not hub.is_first("c", hub._rooms["c"][1])
        clock.advance(0.06)
        with pytest.raises(TicketNotFound):
            await asyncio.wait_for(behind, 10)
        assert not ahead.done()
    finally:
        ahead.cancel()
        behind.cancel()
        await asyncio.gather(ahead, behind, return_exceptions=True)


async def test_the_first_waiter_rechecks_after_the_recheck_interval(
    store: RecordingStore,
) -> None:
    """A change made elsewhere whose message was lost still reaches the first
    waiter: it re-reads at most ``recheck_interval`` after its last read."""
    hub = WakeHub()
    holder, waiter = await _issue(store, 2)
    told: list[Position] = []

    async def wait() -> None:
        async for position in wait_for_turn(store, hub, "c", waiter, recheck_interval=0.05):
            told.append(position)

    task = asyncio.ensure_future(wait())
    try:
        await asyncio.wait_for(_until(lambda: len(store.reads) >= 1), 10)
        await store.finish_serving("c", holder)  # and nobody notifies
        await asyncio.wait_for(task, 10)
    finally:
        task.cancel()
    assert [(p.tickets_ahead, p.acquired) for p in told] == [(1, False), (0, True)]


async def _until(condition: Callable[[], bool]) -> None:
    await eventually(condition, "the store to be read", interval=0.001)
