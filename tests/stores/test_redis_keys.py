"""Key layout: every key of a conversation in one hash slot, for any id."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from redis.crc import key_slot as redis_key_slot
from ticketlock_server.stores.redis_keys import (
    RedisKeyLayout,
    escape_tag,
    key_slot,
    same_slot_tag,
    tag_for_slot,
)

AWKWARD_IDS = [
    "plain",
    "{",
    "}",
    "{}",
    "}{",
    "a{b}c",
    "{user1}a",
    "a}b",
    "lock}{x}",
    "*",
    "[a-z]?",
    "a:b:c",
    "with space",
    "new\nline",
    "emoji \U0001f600",
    "%7D",
    "}%",
]

LAYOUTS = [
    RedisKeyLayout("lock:", concurrent=False),
    RedisKeyLayout("app:lock:", concurrent=False),
    RedisKeyLayout("concurrent_lock:", concurrent=True),
    RedisKeyLayout("app:concurrent_lock:", concurrent=True),
]


def _slots(layout: RedisKeyLayout, conversation_id: str) -> set[int]:
    return {redis_key_slot(k.encode()) for k in layout.keys(conversation_id)}


@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda layout: layout.key_prefix)
@pytest.mark.parametrize("conversation_id", AWKWARD_IDS)
def test_all_keys_of_a_conversation_share_a_slot(
    layout: RedisKeyLayout, conversation_id: str
) -> None:
    assert len(_slots(layout, conversation_id)) == 1


@given(st.text(min_size=1, max_size=40))
def test_any_id_keeps_its_keys_in_one_slot_and_distinct_from_others(conversation_id: str) -> None:
    for layout in LAYOUTS:
        assert len(_slots(layout, conversation_id)) == 1
        other = layout.keys(conversation_id + "x")
        assert not set(layout.keys(conversation_id)) & set(other)


def test_rasa_lock_key_is_kept_exactly() -> None:
    assert RedisKeyLayout("lock:", False).keys("c1")[0] == "lock:c1"
    assert RedisKeyLayout("app:lock:", False).keys("c1")[0] == "app:lock:c1"


def test_concurrent_keys_are_readable_for_plain_ids() -> None:
    keys = RedisKeyLayout("concurrent_lock:", True).keys("conv-1")
    assert keys[2] == "concurrent_lock:{conv-1}:last_issued_ticket_number"
    assert keys[3] + "7" == "concurrent_lock:{conv-1}:7"


def test_escaped_tags_are_distinct_for_distinct_ids() -> None:
    assert escape_tag("a}") != escape_tag("a%7D")
    assert "}" not in escape_tag("}}}")


def test_slot_helpers_agree_with_redis_py() -> None:
    for conversation_id in AWKWARD_IDS:
        key = f"lock:{conversation_id}".encode()
        assert key_slot(key) == redis_key_slot(key)
        assert redis_key_slot(f"{{{same_slot_tag(key.decode())}}}".encode()) == redis_key_slot(key)
    for slot in (0, 1, 5000, 16383):
        assert redis_key_slot(tag_for_slot(slot).encode()) == slot


@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda layout: layout.key_prefix)
@pytest.mark.parametrize(
    "conversation_id",
    # Ids of one brace would be found in the key's own braces.
    [*[i for i in AWKWARD_IDS if len(i) > 1], "0f8fad5b-d9cb-469f-a165-70867728950e"],
)
def test_no_key_spells_the_conversation_id_twice(
    layout: RedisKeyLayout, conversation_id: str
) -> None:
    for key in layout.keys(conversation_id):
        assert key.count(conversation_id) <= 1, key


@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda layout: layout.key_prefix)
def test_no_key_copies_a_long_hash_tag_out_of_the_id(layout: RedisKeyLayout) -> None:
    """Nor most of it: a hash tag copied from the id would double a key's size."""
    conversation_id = "a{" + "x" * 1000 + "}b"
    for key in layout.keys(conversation_id):
        assert len(key) < len(conversation_id) + 60, key


def test_the_numbering_key_of_a_plain_id_is_the_lock_key_as_its_tag() -> None:
    keys = RedisKeyLayout("lock:", concurrent=False).keys("conv-1")
    assert keys[1] == "ticketlock:next:{lock:conv-1}"
    assert RedisKeyLayout("app:lock:", False).keys("a{b}c")[1].endswith("}:a{b}c")
