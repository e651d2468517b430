"""Key names of the Redis stores: every key of a conversation in one hash slot.

Redis Cluster hashes only the part of a key between the first ``{`` and the next
``}`` (when that part is not empty), so a conversation's keys share a slot when
they share that *hash tag*. Conversation ids are opaque and may contain braces,
so a tag is never the raw id:

- ConcurrentRedisLockStore owns its layout. Its tag is the id with ``%`` and
  ``}`` percent-encoded: never contains ``}``, never empty, and different ids
  give different tags. ``concurrent_lock:{conv-1}:7`` is ticket 7 of ``conv-1``.
- RedisLockStore must keep Rasa's key ``lock:<id>``, which has no tag of ours.
  Its companion keys hash to the *same slot* as that key, and spell the id once:
  when Redis hashes the whole lock key (it has no ``{…}`` part) and the key holds
  no ``}``, the tag is the lock key itself (``ticketlock:next:{lock:<id>}``);
  otherwise it is a short decimal string found (once per slot, then cached) to
  hash to that slot, and the id follows it (``ticketlock:next:{1234}:<id>``). The
  two forms cannot meet: a decimal tag never contains ``lock:``.
"""

from __future__ import annotations

import binascii
import functools
import itertools
from dataclasses import dataclass

SLOTS = 16384


def key_slot(key: bytes) -> int:
    """The Redis Cluster hash slot of ``key`` (CRC16/XMODEM of its hash part)."""
    return binascii.crc_hqx(hash_part(key), 0) % SLOTS


def hash_part(key: bytes) -> bytes:
    """The part of ``key`` that Redis Cluster hashes."""
    start = key.find(b"{")
    if start >= 0:
        end = key.find(b"}", start + 1)
        if end > start + 1:
            return key[start + 1 : end]
    return key


@functools.cache
def tag_for_slot(slot: int) -> str:
    """The shortest decimal string (then smallest) that hashes to ``slot``."""
    for candidate in itertools.count():
        text = str(candidate)
        if binascii.crc_hqx(text.encode(), 0) % SLOTS == slot:
            return text
    raise AssertionError("unreachable")  # pragma: no cover


def same_slot_tag(key: str) -> str:
    """A hash tag (without braces) that puts a key in the same slot as ``key``."""
    part = hash_part(key.encode())
    if b"}" not in part:
        return part.decode()
    return tag_for_slot(key_slot(key.encode()))


def escape_tag(conversation_id: str) -> str:
    """The id as a hash tag: ``%`` and ``}`` percent-encoded, so it cannot end early."""
    return conversation_id.replace("%", "%25").replace("}", "%7D")


@dataclass(frozen=True, slots=True)
class RedisKeyLayout:
    """The keys of each store; ``key_prefix`` is the validated one from the config."""

    key_prefix: str
    concurrent: bool

    @property
    def base(self) -> str:
        """What comes before ``lock:`` / ``concurrent_lock:`` (``""`` or ``<prefix>:``)."""
        default = "concurrent_lock:" if self.concurrent else "lock:"
        return self.key_prefix[: -len(default)] if self.key_prefix.endswith(default) else ""

    def keys(self, conversation_id: str) -> list[str]:
        """The KEYS of every script of this store, the change channel last."""
        if self.concurrent:
            tagged = f"{self.key_prefix}{{{escape_tag(conversation_id)}}}"
            return [
                f"{tagged}:queue",
                f"{tagged}:expiries",
                f"{tagged}:last_issued_ticket_number",
                f"{tagged}:",
                f"{tagged}:epoch",
                f"{tagged}:changes",
            ]
        lock_key = f"{self.key_prefix}{conversation_id}"
        if hash_part(lock_key.encode()) == lock_key.encode() and "}" not in lock_key:
            suffix = f"{{{lock_key}}}"
        else:
            suffix = f"{{{tag_for_slot(key_slot(lock_key.encode()))}}}:{conversation_id}"
        return [
            lock_key,
            f"{self.base}ticketlock:next:{suffix}",
            f"{self.base}ticketlock:changes:{suffix}",
        ]

    def channel(self, conversation_id: str) -> str:
        return self.keys(conversation_id)[-1]
