"""The pure ticket-lock model: Rasa's semantics under a fake clock."""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)
from ticketlock.model import NO_TICKET_ISSUED, Position, Ticket, TicketLock

from tests.support.clock import START, FakeClock


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def lock(clock: FakeClock) -> TicketLock:
    return TicketLock("conv", clock=clock)


def numbers(lock: TicketLock) -> list[int]:
    return [t.number for t in lock.tickets]


def just_after(value: float) -> float:
    return math.nextafter(value, math.inf)


# -- the empty lock -----------------------------------------------------------


def test_empty_lock_reads(lock: TicketLock) -> None:
    assert lock.last_issued == NO_TICKET_ISSUED == -1
    assert lock.now_serving == 0
    assert not lock.is_someone_waiting()
    assert not lock.is_locked(0)
    assert lock.is_locked(1)
    assert lock.ticket_for(0) is None
    assert lock.has_lock_expired(0)
    assert lock.position(0) is None
    assert lock.refresh(0, 10) is None
    assert not lock.remove_ticket_for(0)
    assert list(lock.tickets) == []


def test_constructor_defaults_to_empty_queue() -> None:
    assert list(TicketLock("c").tickets) == []
    assert list(TicketLock("c", None).tickets) == []
    assert list(TicketLock("c", []).tickets) == []


# -- issuing ------------------------------------------------------------------


def test_tickets_are_numbered_from_zero(lock: TicketLock, clock: FakeClock) -> None:
    assert [lock.issue_ticket(10) for _ in range(4)] == [0, 1, 2, 3]
    assert numbers(lock) == [0, 1, 2, 3]
    assert lock.last_issued == 3
    assert lock.now_serving == 0
    assert lock.is_someone_waiting()
    assert [t.expires for t in lock.tickets] == [START + 10] * 4


def test_issue_ticket_expiry_is_now_plus_lifetime(lock: TicketLock, clock: FakeClock) -> None:
    lock.issue_ticket(10)
    clock.advance(3)
    lock.issue_ticket(0.25)
    assert list(lock.tickets) == [Ticket(0, START + 10), Ticket(1, START + 3 + 0.25)]


def test_issue_ticket_with_explicit_number(lock: TicketLock) -> None:
    assert lock.issue_ticket(10, ticket_number=5) == 5
    assert lock.last_issued == 5
    assert lock.now_serving == 5
    assert lock.issue_ticket(10) == 6
    assert lock.issue_ticket(10, ticket_number=42) == 42
    assert numbers(lock) == [5, 6, 42]
    assert lock.issue_ticket(10) == 43


def test_is_locked_only_for_tickets_not_now_serving(lock: TicketLock) -> None:
    first, second, third = (lock.issue_ticket(10) for _ in range(3))
    assert not lock.is_locked(first)
    assert lock.is_locked(second)
    assert lock.is_locked(third)
    assert lock.is_locked(99)
    assert lock.remove_ticket_for(first)
    assert not lock.is_locked(second)
    assert lock.is_locked(third)


# -- expiry -------------------------------------------------------------------


def test_ticket_has_expired_only_strictly_after_expires() -> None:
    ticket = Ticket(0, 100.0)
    assert not ticket.has_expired(99.0)
    assert not ticket.has_expired(100.0)
    assert ticket.has_expired(just_after(100.0))
    assert ticket.has_expired(101.0)


def test_ticket_has_expired_defaults_to_wall_clock() -> None:
    assert not Ticket(0, 1e12).has_expired()
    assert Ticket(0, 1.0).has_expired()


def test_ticket_is_visible_at_its_expiry_and_gone_just_after(
    lock: TicketLock, clock: FakeClock
) -> None:
    lock.issue_ticket(10)
    clock.set(START + 10)
    assert lock.is_someone_waiting()
    assert lock.last_issued == 0
    assert lock.ticket_for(0) == Ticket(0, START + 10)
    clock.set(just_after(START + 10))
    assert not lock.is_someone_waiting()
    assert lock.last_issued == -1
    assert lock.now_serving == 0
    assert lock.ticket_for(0) is None


def test_zero_lifetime_ticket_lives_for_the_current_instant(
    lock: TicketLock, clock: FakeClock
) -> None:
    assert lock.issue_ticket(0) == 0
    assert lock.now_serving == 0
    assert lock.is_someone_waiting()
    clock.advance(0.001)
    assert not lock.is_someone_waiting()


READS: dict[str, Callable[[TicketLock], object]] = {
    "last_issued": lambda lock: lock.last_issued,
    "now_serving": lambda lock: lock.now_serving,
    "is_locked": lambda lock: lock.is_locked(1),
    "is_someone_waiting": lambda lock: lock.is_someone_waiting(),
    "ticket_for": lambda lock: lock.ticket_for(1),
    "has_lock_expired": lambda lock: lock.has_lock_expired(1),
    "position": lambda lock: lock.position(1),
    "refresh": lambda lock: lock.refresh(1, 5),
    "remove_ticket_for": lambda lock: lock.remove_ticket_for(99),
    "remove_expired_tickets": lambda lock: lock.remove_expired_tickets(),
    "issue_ticket": lambda lock: lock.issue_ticket(100),
}


@pytest.mark.parametrize("read", READS.values(), ids=list(READS))
def test_every_read_or_change_drops_expired_tickets(
    read: Callable[[TicketLock], object], lock: TicketLock, clock: FakeClock
) -> None:
    lock.issue_ticket(5)  # 0: expires first
    lock.issue_ticket(100)  # 1
    lock.issue_ticket(5)  # 2: expires with 0
    clock.advance(6)
    read(lock)
    assert all(t.expires >= clock.now for t in lock.tickets)
    assert Ticket(0, START + 5) not in lock.tickets
    assert Ticket(2, START + 5) not in lock.tickets
    assert 1 in numbers(lock)


def test_expired_head_passes_the_lock_on(lock: TicketLock, clock: FakeClock) -> None:
    lock.issue_ticket(5)
    lock.issue_ticket(50)
    assert lock.is_locked(1)
    clock.advance(6)
    assert lock.now_serving == 1
    assert not lock.is_locked(1)
    assert lock.last_issued == 1


def test_expired_ticket_in_the_middle_is_dropped(lock: TicketLock, clock: FakeClock) -> None:
    lock.issue_ticket(50)
    lock.issue_ticket(5)
    lock.issue_ticket(50)
    clock.advance(6)
    assert numbers(lock) == [0, 1, 2]  # nothing read yet
    assert lock.now_serving == 0
    assert numbers(lock) == [0, 2]
    position = lock.position(2)
    assert position is not None
    assert position.tickets_ahead == 1


def test_issue_after_all_tickets_expired_restarts_at_zero(
    lock: TicketLock, clock: FakeClock
) -> None:
    assert [lock.issue_ticket(5) for _ in range(3)] == [0, 1, 2]
    clock.advance(10)
    assert lock.issue_ticket(5) == 0
    assert numbers(lock) == [0]


def test_issue_after_newest_ticket_expired_reuses_its_number(
    lock: TicketLock, clock: FakeClock
) -> None:
    """Rasa's rule: the next number is one past the newest *unexpired* ticket."""
    lock.issue_ticket(50)
    lock.issue_ticket(5)
    clock.advance(6)
    assert lock.issue_ticket(5) == 1
    assert numbers(lock) == [0, 1]


def test_tickets_loaded_already_expired_are_invisible(clock: FakeClock) -> None:
    lock = TicketLock("c", [Ticket(0, START - 1), Ticket(1, START + 1)], clock=clock)
    assert lock.now_serving == 1
    assert lock.last_issued == 1
    assert numbers(lock) == [1]


def test_expiry_is_checked_again_after_the_queue_emptied(clock: FakeClock) -> None:
    lock = TicketLock("c", clock=clock)
    lock.issue_ticket(1)
    clock.advance(2)
    assert not lock.is_someone_waiting()
    lock.issue_ticket(1)
    assert lock.is_someone_waiting()
    clock.advance(2)
    assert not lock.is_someone_waiting()
    assert lock.last_issued == -1


def test_expired_ticket_added_directly_to_tickets_is_dropped_on_read(
    lock: TicketLock, clock: FakeClock
) -> None:
    """``tickets`` is a public deque (as in Rasa): a ticket appended to it is still
    subject to expiry on the next read, whatever the lock read before."""
    lock.issue_ticket(100)
    assert lock.now_serving == 0
    lock.tickets.append(Ticket(1, START - 1))
    assert lock.last_issued == 0
    assert numbers(lock) == [0]


# -- removing -----------------------------------------------------------------


def test_remove_ticket_for(lock: TicketLock) -> None:
    for _ in range(3):
        lock.issue_ticket(10)
    assert lock.remove_ticket_for(1) is True
    assert numbers(lock) == [0, 2]
    assert lock.remove_ticket_for(1) is False
    assert lock.remove_ticket_for(7) is False
    assert lock.remove_ticket_for(-1) is False
    assert lock.remove_ticket_for(0) is True
    assert lock.now_serving == 2
    assert lock.remove_ticket_for(2) is True
    assert not lock.is_someone_waiting()
    assert lock.last_issued == -1
    assert lock.now_serving == 0


def test_remove_ticket_for_an_expired_ticket_is_false(lock: TicketLock, clock: FakeClock) -> None:
    lock.issue_ticket(5)
    clock.advance(6)
    assert lock.remove_ticket_for(0) is False


def test_has_lock_expired(lock: TicketLock, clock: FakeClock) -> None:
    lock.issue_ticket(5)
    assert not lock.has_lock_expired(0)
    assert lock.has_lock_expired(1)
    clock.advance(6)
    assert lock.has_lock_expired(0)


def test_is_someone_waiting(lock: TicketLock, clock: FakeClock) -> None:
    assert not lock.is_someone_waiting()
    lock.issue_ticket(5)
    assert lock.is_someone_waiting()
    lock.remove_ticket_for(0)
    assert not lock.is_someone_waiting()
    lock.issue_ticket(5)
    clock.advance(5)
    assert lock.is_someone_waiting()
    clock.advance(0.5)
    assert not lock.is_someone_waiting()


# -- refresh ------------------------------------------------------------------


def test_refresh_sets_a_new_expiry_from_now(lock: TicketLock, clock: FakeClock) -> None:
    lock.issue_ticket(10)
    lock.issue_ticket(10)
    clock.advance(8)
    ticket = lock.refresh(1, 30)
    assert ticket == Ticket(1, START + 8 + 30)
    assert lock.ticket_for(1) == Ticket(1, START + 38)
    assert numbers(lock) == [0, 1]  # the queue order does not change
    clock.advance(5)  # ticket 0 expires, ticket 1 lives on
    assert lock.now_serving == 1
    clock.advance(25)
    assert lock.now_serving == 1
    clock.advance(0.5)
    assert not lock.is_someone_waiting()


def test_refresh_can_shorten_a_lifetime(lock: TicketLock, clock: FakeClock) -> None:
    lock.issue_ticket(100)
    lock.issue_ticket(100)
    assert lock.now_serving == 0
    ticket = lock.refresh(0, 1)
    assert ticket is not None
    assert ticket.expires == START + 1
    clock.advance(2)
    assert lock.now_serving == 1
    assert numbers(lock) == [1]


def test_refresh_returns_the_ticket_in_the_queue(lock: TicketLock) -> None:
    lock.issue_ticket(10)
    ticket = lock.refresh(0, 20)
    assert ticket is lock.tickets[0]


def test_refresh_of_missing_or_expired_ticket_is_none(lock: TicketLock, clock: FakeClock) -> None:
    lock.issue_ticket(5)
    assert lock.refresh(3, 10) is None
    clock.advance(6)
    assert lock.refresh(0, 10) is None
    assert not lock.is_someone_waiting()


# -- position -----------------------------------------------------------------


def test_position_of_the_head(lock: TicketLock) -> None:
    lock.issue_ticket(10)
    lock.issue_ticket(10)
    position = lock.position(0)
    assert position == Position(
        now_serving=0, tickets_ahead=0, next_change_in=None, lock=None, expires_in=10
    )
    assert position.acquired


def test_position_of_waiters(lock: TicketLock, clock: FakeClock) -> None:
    lock.issue_ticket(30)  # 0 expires at +30
    lock.issue_ticket(10)  # 1 expires at +10
    lock.issue_ticket(20)  # 2 expires at +20
    lock.issue_ticket(1)  # 3 behind 2 expires at +1: cannot move 2
    clock.advance(0.5)
    second = lock.position(1)
    assert second == Position(now_serving=0, tickets_ahead=1, next_change_in=9.5, expires_in=9.5)
    assert not second.acquired
    third = lock.position(2)
    assert third == Position(now_serving=0, tickets_ahead=2, next_change_in=9.5, expires_in=19.5)
    fourth = lock.position(3)
    assert fourth == Position(now_serving=0, tickets_ahead=3, next_change_in=0.5, expires_in=0.5)


def test_position_next_change_counts_the_tickets_own_expiry(
    lock: TicketLock, clock: FakeClock
) -> None:
    lock.issue_ticket(30)
    lock.issue_ticket(4)
    position = lock.position(1)
    assert position is not None
    assert position.next_change_in == 4


def test_position_next_change_is_zero_at_the_expiry_instant(
    lock: TicketLock, clock: FakeClock
) -> None:
    lock.issue_ticket(10)
    lock.issue_ticket(30)
    clock.advance(10)
    assert lock.position(1) == Position(
        now_serving=0, tickets_ahead=1, next_change_in=0.0, expires_in=20
    )


def test_position_moves_as_tickets_ahead_leave(lock: TicketLock, clock: FakeClock) -> None:
    for _ in range(3):
        lock.issue_ticket(10)
    lock.remove_ticket_for(0)
    assert lock.position(2) == Position(
        now_serving=1, tickets_ahead=1, next_change_in=10, expires_in=10
    )
    lock.remove_ticket_for(1)
    assert lock.position(2) == Position(
        now_serving=2, tickets_ahead=0, next_change_in=None, expires_in=10
    )


def test_position_of_missing_or_expired_ticket_is_none(lock: TicketLock, clock: FakeClock) -> None:
    lock.issue_ticket(5)
    lock.issue_ticket(50)
    assert lock.position(7) is None
    clock.advance(6)
    assert lock.position(0) is None
    assert lock.position(1) == Position(
        now_serving=1, tickets_ahead=0, next_change_in=None, expires_in=44
    )


def test_position_with_lock_carries_a_copy_for_the_holder_only(
    lock: TicketLock, clock: FakeClock
) -> None:
    lock.issue_ticket(10)
    lock.issue_ticket(10)
    waiter = lock.position(1, with_lock=True)
    assert waiter is not None
    assert waiter.lock is None
    head = lock.position(0, with_lock=True)
    assert head is not None
    snapshot = head.lock
    assert snapshot is not None
    assert snapshot == lock
    assert snapshot is not lock
    assert snapshot.tickets is not lock.tickets
    assert all(a is not b for a, b in zip(snapshot.tickets, lock.tickets, strict=True))
    # Changing the snapshot leaves the lock alone, and the other way round.
    snapshot.tickets[0].expires = START + 99
    snapshot.remove_ticket_for(1)
    lock.issue_ticket(10)
    assert list(lock.tickets) == [
        Ticket(0, START + 10),
        Ticket(1, START + 10),
        Ticket(2, START + 10),
    ]
    assert list(snapshot.tickets) == [Ticket(0, START + 99)]


# -- copy and equality ----------------------------------------------------------


def test_copy_is_equal_and_independent(lock: TicketLock, clock: FakeClock) -> None:
    lock.issue_ticket(10)
    lock.issue_ticket(20)
    twin = lock.copy()
    assert twin == lock
    assert twin is not lock
    assert twin.conversation_id == lock.conversation_id
    assert twin.tickets is not lock.tickets
    assert all(a is not b for a, b in zip(twin.tickets, lock.tickets, strict=True))
    twin.issue_ticket(5)
    twin.tickets[0].expires = START + 99
    assert twin != lock
    assert list(lock.tickets) == [Ticket(0, START + 10), Ticket(1, START + 20)]


def test_copy_keeps_the_clock(lock: TicketLock, clock: FakeClock) -> None:
    lock.issue_ticket(10)
    twin = lock.copy()
    clock.advance(11)
    assert not twin.is_someone_waiting()


def test_equality() -> None:
    a = TicketLock("c", [Ticket(0, 1.0), Ticket(1, 2.0)])
    assert a == TicketLock("c", [Ticket(0, 1.0), Ticket(1, 2.0)])
    assert a != TicketLock("d", [Ticket(0, 1.0), Ticket(1, 2.0)])
    assert a != TicketLock("c", [Ticket(0, 1.0)])
    assert a != TicketLock("c", [Ticket(1, 2.0), Ticket(0, 1.0)])
    assert a != TicketLock("c", [Ticket(0, 1.0), Ticket(1, 2.5)])
    assert a != "c"
    assert a.__eq__("c") is NotImplemented
    assert TicketLock("c") == TicketLock("c")


def test_ticket_lock_is_unhashable() -> None:
    with pytest.raises(TypeError):
        hash(TicketLock("c"))


def test_repr_names_conversation_and_tickets() -> None:
    text = repr(TicketLock("conv-1", [Ticket(3, 4.5)]))
    assert "conv-1" in text
    assert "3" in text
    assert "4.5" in text


# -- Rasa's JSON form -----------------------------------------------------------


def rasa_json(conversation_id: str, tickets: list[tuple[int, float]]) -> str:
    """What Rasa's ``TicketLock.dumps()`` writes."""
    return json.dumps(
        {
            "conversation_id": conversation_id,
            "tickets": [json.dumps({"number": n, "expires": e}) for n, e in tickets],
        }
    )


def test_ticket_json_literal() -> None:
    ticket = Ticket(0, 1700000000.5)
    assert ticket.dumps() == '{"number": 0, "expires": 1700000000.5}'
    assert ticket.as_dict() == {"number": 0, "expires": 1700000000.5}
    assert Ticket.from_dict({"number": 0, "expires": 1700000000.5}) == ticket


def test_lock_json_literal() -> None:
    clock = FakeClock(1699999940.5)
    lock = TicketLock("c", clock=clock)
    lock.issue_ticket(60)
    expected = (
        '{"conversation_id": "c", "tickets": ["{\\"number\\": 0, \\"expires\\": 1700000000.5}"]}'
    )
    assert lock.dumps() == expected
    assert lock.dumps() == rasa_json("c", [(0, 1700000000.5)])


def test_empty_lock_json_literal() -> None:
    assert TicketLock("c").dumps() == '{"conversation_id": "c", "tickets": []}'


def test_lock_json_matches_rasa_for_several_tickets() -> None:
    tickets = [(0, 1700000000.5), (1, 1700000001.25), (2, 1700000002.0), (17, 1e-05)]
    lock = TicketLock("conv é 🎉", [Ticket(n, e) for n, e in tickets], clock=FakeClock(0))
    assert lock.dumps() == rasa_json("conv é 🎉", tickets)
    assert lock.as_dict() == json.loads(rasa_json("conv é 🎉", tickets))
    assert '"conv \\u00e9 \\ud83c\\udf89"' in lock.dumps()  # ensure_ascii, as Rasa


def test_dumps_keeps_expired_tickets_as_stored() -> None:
    """Serialising is not a read: like Rasa, it writes the queue as it is."""
    lock = TicketLock("c", [Ticket(0, 1.0)], clock=FakeClock(1_000.0))
    assert lock.dumps() == rasa_json("c", [(0, 1.0)])


def test_loads_reads_what_rasa_writes(clock: FakeClock) -> None:
    text = rasa_json("c", [(0, START + 60.5), (1, START + 61)])
    lock = TicketLock.loads(text, clock=clock)
    assert lock.conversation_id == "c"
    assert list(lock.tickets) == [Ticket(0, START + 60.5), Ticket(1, START + 61)]
    assert lock.now_serving == 0
    assert lock.last_issued == 1
    assert TicketLock.loads(text.encode("utf-8"), clock=clock) == lock
    assert TicketLock.from_dict(json.loads(text), clock=clock) == lock


def test_loaded_lock_uses_the_given_clock() -> None:
    clock = FakeClock(START)
    lock = TicketLock.loads(rasa_json("c", [(0, START + 1)]), clock=clock)
    assert lock.is_someone_waiting()
    clock.advance(2)
    assert not lock.is_someone_waiting()


def test_from_dict_without_tickets_is_an_empty_lock() -> None:
    assert TicketLock.from_dict({"conversation_id": "c"}) == TicketLock("c")
    assert TicketLock.from_dict({"conversation_id": "c", "tickets": []}) == TicketLock("c")


def test_round_trip(lock: TicketLock, clock: FakeClock) -> None:
    lock.issue_ticket(10)
    clock.advance(0.1)
    lock.issue_ticket(20)
    again = TicketLock.loads(lock.dumps(), clock=clock)
    assert again == lock
    assert again.dumps() == lock.dumps()
    assert TicketLock.from_dict(lock.as_dict(), clock=clock) == lock


finite = st.floats(allow_nan=False, allow_infinity=False)


@settings(max_examples=150, deadline=None)
@given(
    conversation_id=st.text(),
    tickets=st.lists(st.tuples(st.integers(min_value=0, max_value=2**63 - 1), finite)),
)
def test_json_round_trips_for_any_finite_tickets(
    conversation_id: str, tickets: list[tuple[int, float]]
) -> None:
    lock = TicketLock(conversation_id, [Ticket(n, e) for n, e in tickets], clock=FakeClock(0))
    text = lock.dumps()
    assert text == rasa_json(conversation_id, tickets)
    again = TicketLock.loads(text, clock=FakeClock(0))
    assert again == lock
    assert again.conversation_id == conversation_id
    assert [(t.number, t.expires) for t in again.tickets] == tickets
    assert all(isinstance(t.expires, float) for t in again.tickets)
    assert again.dumps() == text


# -- the model against a reference, step by step ------------------------------------


@dataclass
class RefTicket:
    number: int
    expires: float
    serial: int  # issue order, unique even when Rasa's rule reuses a number


@dataclass
class Reference:
    """Rasa's semantics written the obvious way."""

    now: float = START
    queue: list[RefTicket] = field(default_factory=list)
    serials: int = 0

    def drop_expired(self) -> None:
        self.queue = [t for t in self.queue if not self.now > t.expires]

    def live(self) -> list[RefTicket]:
        self.drop_expired()
        return self.queue

    def issue(self, lifetime: float, number: int | None) -> int:
        queue = self.live()
        if number is None:
            number = queue[-1].number + 1 if queue else 0
        queue.append(RefTicket(number, self.now + lifetime, self.serials))
        self.serials += 1
        return number

    def find(self, number: int) -> RefTicket | None:
        return next((t for t in self.live() if t.number == number), None)


lifetimes = st.one_of(
    st.sampled_from([0.0, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0]),
    st.floats(min_value=0, max_value=20, allow_nan=False),
)
steps = st.one_of(
    st.sampled_from([0.0, 0.5, 1.0, 2.0, 3.0]),
    st.floats(min_value=0, max_value=8, allow_nan=False),
)


class TicketLockMachine(RuleBasedStateMachine):
    issued = Bundle("issued")

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.lock = TicketLock("conv", clock=self.clock)
        self.ref = Reference()
        self.acquired: list[int] = []  # serials, in the order they got the lock
        self.head: int | None = None

    @initialize()
    def start(self) -> None:
        self.observe_head()

    def observe_head(self) -> None:
        """Record which issued ticket holds the lock, as the lock itself says."""
        head: int | None = None
        if self.lock.is_someone_waiting():
            holder = self.ref.find(self.lock.now_serving)
            assert holder is not None
            head = holder.serial
        if head is not None and head != self.head:
            self.acquired.append(head)
        self.head = head

    def after_change(self) -> None:
        self.observe_head()

    @rule(target=issued, lifetime=lifetimes)
    def issue(self, lifetime: float) -> int:
        number = self.lock.issue_ticket(lifetime)
        expected = self.ref.issue(lifetime, None)
        assert number == expected
        self.after_change()
        return number

    @rule(target=issued, lifetime=lifetimes, gap=st.integers(min_value=1, max_value=4))
    def issue_numbered(self, lifetime: float, gap: int) -> int:
        queue = self.ref.live()
        wanted = (queue[-1].number if queue else -1) + gap
        number = self.lock.issue_ticket(lifetime, ticket_number=wanted)
        self.ref.issue(lifetime, wanted)
        assert number == wanted
        self.after_change()
        return number

    @rule(seconds=steps)
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)
        self.ref.now = self.clock.now
        self.observe_head()

    @rule(number=st.one_of(issued, st.integers(min_value=-1, max_value=30)))
    def remove(self, number: int) -> None:
        expected = self.ref.find(number)
        assert self.lock.remove_ticket_for(number) is (expected is not None)
        if expected is not None:
            self.ref.queue.remove(expected)
        self.after_change()

    @precondition(lambda self: bool(self.ref.live()))
    @rule()
    def finish_head(self) -> None:
        head = self.ref.live()[0]
        assert self.lock.now_serving == head.number
        assert not self.lock.is_locked(head.number)
        assert self.lock.remove_ticket_for(head.number)
        self.ref.queue.pop(0)
        self.after_change()

    @rule(number=st.one_of(issued, st.integers(min_value=0, max_value=30)), lifetime=lifetimes)
    def refresh(self, number: int, lifetime: float) -> None:
        expected = self.ref.find(number)
        ticket = self.lock.refresh(number, lifetime)
        if expected is None:
            assert ticket is None
        else:
            expected.expires = self.ref.now + lifetime
            assert ticket == Ticket(number, expected.expires)
        self.after_change()

    @rule(number=st.one_of(issued, st.integers(min_value=0, max_value=30)))
    def look_up(self, number: int) -> None:
        expected = self.ref.find(number)
        found = self.lock.ticket_for(number)
        assert found == (None if expected is None else Ticket(number, expected.expires))
        assert self.lock.has_lock_expired(number) is (expected is None)

    @rule()
    def round_trip(self) -> None:
        again = TicketLock.loads(self.lock.dumps(), clock=self.clock)
        assert again == self.lock
        twin = self.lock.copy()
        assert twin == self.lock
        assert twin.now_serving == self.lock.now_serving
        assert twin.last_issued == self.lock.last_issued

    @invariant()
    def reads_match_the_reference(self) -> None:
        now = self.clock.now
        queue = self.ref.live()
        expected_numbers = [t.number for t in queue]
        # Every read first: none may show an expired ticket.
        assert self.lock.last_issued == (queue[-1].number if queue else -1)
        assert self.lock.now_serving == (queue[0].number if queue else 0)
        assert self.lock.is_someone_waiting() is bool(queue)
        tickets = list(self.lock.tickets)
        assert [t.number for t in tickets] == expected_numbers
        assert [t.expires for t in tickets] == [t.expires for t in queue]
        assert all(not t.has_expired(now) for t in tickets)
        assert all(a < b for a, b in itertools.pairwise(expected_numbers))
        assert len(set(expected_numbers)) == len(expected_numbers)
        for index, ref in enumerate(queue):
            assert self.lock.is_locked(ref.number) is (index != 0)
            position = self.lock.position(ref.number, with_lock=True)
            assert position is not None
            assert position.now_serving == queue[0].number
            assert position.tickets_ahead == index
            assert position.acquired is (index == 0)
            if index == 0:
                assert position.next_change_in is None
                assert position.lock == self.lock
                assert position.lock is not self.lock
            else:
                soonest = min(t.expires for t in queue[: index + 1])
                assert position.next_change_in == max(0.0, soonest - now)
                assert position.lock is None

    @invariant()
    def acquisition_order_is_issue_order(self) -> None:
        assert self.acquired == sorted(self.acquired)
        assert len(set(self.acquired)) == len(self.acquired)


TicketLockMachine.TestCase.settings = settings(
    max_examples=120,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_ticket_lock_against_reference = TicketLockMachine.TestCase
