"""The INVALID_ARGUMENT rules of the contract, at the level of the validation functions."""

from __future__ import annotations

import math
import re
from contextlib import AbstractContextManager

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from ticketlock.model import Ticket, TicketLock
from ticketlock.v1 import lock_service_pb2 as pb
from ticketlock_server import validation
from ticketlock_server.validation import (
    MAX_CONVERSATION_ID_BYTES,
    MAX_LIFETIME_SECONDS,
    InvalidArgument,
)

DEFAULT = 60.0


def raises_for(field: str) -> AbstractContextManager[pytest.ExceptionInfo[InvalidArgument]]:
    """Expect InvalidArgument whose message starts with the field name."""
    return pytest.raises(InvalidArgument, match=f"^{re.escape(field)}: ")


# -- limits as the spec states them -------------------------------------------


def test_limits() -> None:
    assert MAX_CONVERSATION_ID_BYTES == 1024
    assert MAX_LIFETIME_SECONDS == 86_400


def test_invalid_argument_carries_the_field() -> None:
    error = InvalidArgument("lock.tickets[0].number", "must not be negative")
    assert error.field == "lock.tickets[0].number"
    assert str(error) == "lock.tickets[0].number: must not be negative"


# -- conversation_id --------------------------------------------------------------


def test_empty_conversation_id_is_rejected() -> None:
    with raises_for("conversation_id") as info:
        validation.conversation_id("")
    assert info.value.field == "conversation_id"
    assert "empty" in str(info.value)


def test_conversation_id_error_names_the_given_field() -> None:
    with raises_for("acquire.conversation_id") as info:
        validation.conversation_id("", "acquire.conversation_id")
    assert info.value.field == "acquire.conversation_id"


@pytest.mark.parametrize(
    "value",
    [
        "a",
        "a" * 1024,
        "é" * 512,  # 2 bytes each
        "€" * 341 + "a",  # 3 bytes each: 1,023 + 1
        "🎉" * 256,  # 4 bytes each
        "🎉" * 255 + "abcd",
        " {}*[:\n🎉",
    ],
    ids=["one", "1024-ascii", "1024-2byte", "1024-3byte", "1024-emoji", "1024-mixed", "odd"],
)
def test_conversation_id_up_to_1024_utf8_bytes_is_accepted(value: str) -> None:
    assert len(value.encode("utf-8")) <= 1024
    assert validation.conversation_id(value) == value


@pytest.mark.parametrize(
    "value",
    [
        "a" * 1025,
        "é" * 512 + "a",
        "€" * 341 + "ab",
        "🎉" * 256 + "a",  # 257 characters, 1,025 bytes
        "🎉" * 300,  # 300 characters, 1,200 bytes
    ],
    ids=["1025-ascii", "1025-2byte", "1025-3byte", "1025-emoji", "1200-emoji"],
)
def test_conversation_id_over_1024_utf8_bytes_is_rejected(value: str) -> None:
    size = len(value.encode("utf-8"))
    assert size > 1024
    assert len(value) < 1024 or value == "a" * 1025
    with raises_for("conversation_id") as info:
        validation.conversation_id(value)
    assert info.value.field == "conversation_id"
    assert str(size) in str(info.value)
    assert "1024" in str(info.value)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=1100))
def test_conversation_id_rule_is_the_utf8_byte_count(value: str) -> None:
    size = len(value.encode("utf-8"))
    if 0 < size <= 1024:
        assert validation.conversation_id(value) == value
    else:
        with raises_for("conversation_id"):
            validation.conversation_id(value)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.sampled_from(["a", "é", "€", "🎉"]), min_size=200, max_size=400))
def test_conversation_id_multibyte_boundary(chars: list[str]) -> None:
    value = "".join(chars)
    size = len(value.encode("utf-8"))
    if size <= 1024:
        assert validation.conversation_id(value) == value
    else:
        with raises_for("conversation_id"):
            validation.conversation_id(value)


# -- lifetime_seconds ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "why"),
    [
        (-1.0, "negative"),
        (-0.001, "negative"),
        (-86_400.0, "negative"),
        (math.nan, "finite"),
        (math.inf, "finite"),
        (-math.inf, "finite"),
        (math.nextafter(86_400.0, math.inf), "86400"),
        (86_400.5, "86400"),
        (86_401.0, "86400"),
        (1e300, "86400"),
    ],
)
def test_bad_lifetime_is_rejected(value: float, why: str) -> None:
    with raises_for("lifetime_seconds") as info:
        validation.lifetime(value, DEFAULT)
    assert info.value.field == "lifetime_seconds"
    assert why in str(info.value)


@pytest.mark.parametrize("value", [0.0, -0.0, 0])
def test_zero_lifetime_means_the_default(value: float) -> None:
    assert validation.lifetime(value, DEFAULT) == DEFAULT
    assert validation.lifetime(value, 5.0) == 5.0


@pytest.mark.parametrize("value", [1e-9, 0.001, 0.5, 1.0, 60.0, 3600.25, 86_400.0])
def test_lifetime_in_range_is_kept(value: float) -> None:
    assert validation.lifetime(value, DEFAULT) == value


def test_lifetime_error_names_the_given_field() -> None:
    with raises_for("refresh.lifetime_seconds") as info:
        validation.lifetime(-1.0, DEFAULT, "refresh.lifetime_seconds")
    assert info.value.field == "refresh.lifetime_seconds"
    with raises_for("acquire.lifetime_seconds"):
        validation.lifetime(math.nan, DEFAULT, "acquire.lifetime_seconds")


@settings(max_examples=300, deadline=None)
@given(st.floats())
def test_lifetime_rule_for_any_double(value: float) -> None:
    if math.isfinite(value) and 0 <= value <= 86_400:
        assert validation.lifetime(value, DEFAULT) == (value or DEFAULT)
    else:
        with raises_for("lifetime_seconds"):
            validation.lifetime(value, DEFAULT)


# -- ticket_number ------------------------------------------------------------------


@pytest.mark.parametrize("value", [-1, -2, -(2**63)])
def test_negative_ticket_number_is_rejected(value: int) -> None:
    with raises_for("ticket_number") as info:
        validation.ticket_number(value)
    assert info.value.field == "ticket_number"
    assert "negative" in str(info.value)


@pytest.mark.parametrize("value", [0, 1, 2**63 - 1])
def test_non_negative_ticket_number_is_accepted(value: int) -> None:
    assert validation.ticket_number(value) == value


def test_ticket_number_error_names_the_given_field() -> None:
    with raises_for("request.ticket_number") as info:
        validation.ticket_number(-1, "request.ticket_number")
    assert info.value.field == "request.ticket_number"


# -- SaveLock payload -----------------------------------------------------------------


def message(conversation_id: str, *tickets: tuple[int, float]) -> pb.TicketLock:
    return pb.TicketLock(
        conversation_id=conversation_id,
        tickets=[pb.Ticket(number=n, expires=e) for n, e in tickets],
    )


def test_missing_lock_is_rejected() -> None:
    with raises_for("lock") as info:
        validation.ticket_lock(pb.TicketLock(), has_lock=False)
    assert info.value.field == "lock"
    assert "required" in str(info.value)


def test_missing_lock_is_rejected_even_with_content() -> None:
    with raises_for("lock"):
        validation.ticket_lock(message("c", (0, 1.0)), has_lock=False)


def test_lock_with_empty_conversation_id_is_rejected() -> None:
    with raises_for("lock.conversation_id") as info:
        validation.ticket_lock(message("", (0, 1.0)), has_lock=True)
    assert info.value.field == "lock.conversation_id"


def test_lock_with_too_long_conversation_id_is_rejected() -> None:
    with raises_for("lock.conversation_id"):
        validation.ticket_lock(message("🎉" * 256 + "a"), has_lock=True)
    assert validation.ticket_lock(message("🎉" * 256), has_lock=True).conversation_id == "🎉" * 256


@pytest.mark.parametrize(
    ("tickets", "field"),
    [
        ([(0, 1.0), (0, 2.0)], "lock.tickets[1].number"),
        ([(1, 1.0), (2, 2.0), (1, 3.0)], "lock.tickets[2].number"),
        ([(5, 1.0), (6, 1.0), (7, 1.0), (6, 1.0)], "lock.tickets[3].number"),
    ],
)
def test_lock_with_duplicate_numbers_is_rejected(
    tickets: list[tuple[int, float]], field: str
) -> None:
    with raises_for(field) as info:
        validation.ticket_lock(message("c", *tickets), has_lock=True)
    assert info.value.field == field
    assert "duplicate" in str(info.value)


@pytest.mark.parametrize(
    ("tickets", "field"),
    [
        ([(-1, 1.0)], "lock.tickets[0].number"),
        ([(0, 1.0), (-5, 1.0)], "lock.tickets[1].number"),
        ([(0, 1.0), (1, 1.0), (-(2**63), 1.0)], "lock.tickets[2].number"),
    ],
)
def test_lock_with_negative_numbers_is_rejected(
    tickets: list[tuple[int, float]], field: str
) -> None:
    with raises_for(field) as info:
        validation.ticket_lock(message("c", *tickets), has_lock=True)
    assert info.value.field == field
    assert "negative" in str(info.value)


@pytest.mark.parametrize("expires", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("index", [0, 2])
def test_lock_with_non_finite_expiry_is_rejected(expires: float, index: int) -> None:
    tickets = [(0, 10.0), (1, 11.0), (2, 12.0)]
    tickets[index] = (index, expires)
    field = f"lock.tickets[{index}].expires"
    with raises_for(field) as info:
        validation.ticket_lock(message("c", *tickets), has_lock=True)
    assert info.value.field == field
    assert "finite" in str(info.value)


def test_valid_lock_becomes_a_model_lock_in_order() -> None:
    lock = validation.ticket_lock(
        message("conv 🎉", (0, 1700000001.0), (3, 1700000000.5), (7, 1.0)), has_lock=True
    )
    assert isinstance(lock, TicketLock)
    assert lock.conversation_id == "conv 🎉"
    assert list(lock.tickets) == [
        Ticket(0, 1700000001.0),
        Ticket(3, 1700000000.5),
        Ticket(7, 1.0),
    ]


def test_tickets_out_of_number_order_are_rejected() -> None:
    """Tickets are oldest first: a lower number after a higher one is no queue."""
    with raises_for("lock.tickets[1].number") as info:
        validation.ticket_lock(message("c", (3, 1.0), (0, 2.0)), has_lock=True)
    assert "ascending" in str(info.value)


def test_valid_empty_lock() -> None:
    lock = validation.ticket_lock(message("c"), has_lock=True)
    assert lock == TicketLock("c")


def test_lock_with_past_expiry_is_valid() -> None:
    """Expired tickets are finite: SaveLock accepts them and reads drop them."""
    lock = validation.ticket_lock(message("c", (0, 1.0), (1, -5.0)), has_lock=True)
    assert list(lock.tickets) == [Ticket(0, 1.0), Ticket(1, -5.0)]
    assert not lock.is_someone_waiting()


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(min_value=-3, max_value=6),
            st.one_of(st.floats(), st.sampled_from([1.0, math.nan, math.inf])),
        ),
        max_size=6,
    )
)
def test_lock_rule_for_any_tickets(tickets: list[tuple[int, float]]) -> None:
    def first_problem() -> str | None:
        seen: set[int] = set()
        for index, (number, expires) in enumerate(tickets):
            if number < 0 or number in seen or (seen and number < max(seen)):
                return f"lock.tickets[{index}].number"
            if not math.isfinite(expires) or abs(expires) > validation.MAX_EXPIRES:
                return f"lock.tickets[{index}].expires"
            seen.add(number)
        return None

    problem = first_problem()
    if problem is None:
        lock = validation.ticket_lock(message("c", *tickets), has_lock=True)
        assert [(t.number, t.expires) for t in lock.tickets] == tickets
    else:
        with raises_for(problem) as info:
            validation.ticket_lock(message("c", *tickets), has_lock=True)
        assert info.value.field == problem


@pytest.mark.parametrize(
    ("ticket", "field", "why"),
    [
        ((2**53, 1.0), "lock.tickets[0].number", "2**53 - 1"),
        ((2**53 - 1, 1.0), "lock.tickets[0].number", "so that a ticket can be issued after it"),
        ((1, 1e20), "lock.tickets[0].expires", "year 9999"),
        ((1, -1e20), "lock.tickets[0].expires", "year 9999"),
    ],
)
def test_saved_lock_beyond_what_a_store_holds_exactly_is_rejected(
    ticket: tuple[int, float], field: str, why: str
) -> None:
    with raises_for(field) as info:
        validation.ticket_lock(message("c", ticket), has_lock=True)
    assert why in str(info.value)


def test_saved_lock_at_the_limits_is_accepted() -> None:
    """The highest number a save may hold leaves exactly one number to issue."""
    lock = validation.ticket_lock(message("c", (2**53 - 2, 253402300799.0)), has_lock=True)
    assert [t.number for t in lock.tickets] == [2**53 - 2]
