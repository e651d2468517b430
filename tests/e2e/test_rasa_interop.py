"""Rasa and ticketlock share one Redis: the same locks, in Rasa's own format.

Rasa's RedisLockStore keeps each conversation's lock as one JSON value at
``lock:<conversation_id>`` (``<key_prefix>:lock:<conversation_id>`` with a key
prefix), written by ``TicketLock.dumps()`` with no TTL, each ticket itself a JSON
string. Rasa is not installed here: its parsing and writing (``rasa.core.lock``)
are re-implemented below, as they are in Rasa, and the Redis values are read and
written with redis-py, exactly where Rasa would.

Also: conversation ids full of Redis Cluster hash-tag braces, glob characters,
colons, spaces, newlines and emoji work end to end on the Cluster, for both stores.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis
from ticketlock import AsyncLockClient, LockClient, Ticket, TicketLock

from tests.support.redis_servers import RedisDeployment
from tests.support.server import ServerProcess, start_servers, stop_servers

LIFETIME = 30.0
TIMEOUT = 10.0


# --------------------------------------------------------------------------- Rasa's lock


@dataclass
class RasaTicket:
    """``rasa.core.lock.Ticket``."""

    number: int
    expires: float

    def as_dict(self) -> dict[str, Any]:
        return dict(number=self.number, expires=self.expires)

    def dumps(self) -> str:
        return json.dumps(self.as_dict())

    @staticmethod
    def from_dict(data: dict[str, Any]) -> RasaTicket:
        return RasaTicket(number=data["number"], expires=data["expires"])

    def has_expired(self) -> bool:
        return time.time() > self.expires


@dataclass
class RasaTicketLock:
    """``rasa.core.lock.TicketLock``: what Rasa reads from and writes to Redis."""

    conversation_id: str
    tickets: deque[RasaTicket] = field(default_factory=deque)

    @staticmethod
    def from_dict(data: dict[str, Any]) -> RasaTicketLock:
        tickets = [RasaTicket.from_dict(json.loads(d)) for d in data.get("tickets", [])]
        return RasaTicketLock(data["conversation_id"], deque(tickets))

    def dumps(self) -> str:
        return json.dumps(self.as_dict())

    def as_dict(self) -> dict[str, Any]:
        return dict(conversation_id=self.conversation_id, tickets=[t.dumps() for t in self.tickets])

    def remove_expired_tickets(self) -> None:
        self.tickets = deque(t for t in self.tickets if not t.has_expired())

    @property
    def last_issued(self) -> int:
        return self.tickets[-1].number if self.tickets else -1

    @property
    def now_serving(self) -> int:
        self.remove_expired_tickets()
        return self.tickets[0].number if self.tickets else 0

    def is_locked(self, ticket_number: int) -> bool:
        return self.now_serving != ticket_number

    def issue_ticket(self, lifetime: float) -> int:
        self.remove_expired_tickets()
        number = self.last_issued + 1
        self.tickets.append(RasaTicket(number, time.time() + lifetime))
        return number


class RasaRedisLockStore:
    """The Redis side of Rasa's ``RedisLockStore``: GET and SET of ``TicketLock.dumps()``."""

    def __init__(self, client: redis.Redis, key_prefix: str | None = None) -> None:
        self.red = client
        self.key_prefix = f"{key_prefix}:lock:" if key_prefix else "lock:"

    def get_lock(self, conversation_id: str) -> RasaTicketLock | None:
        serialised = self.red.get(self.key_prefix + conversation_id)
        if serialised:
            return RasaTicketLock.from_dict(json.loads(serialised))
        return None

    def save_lock(self, lock: RasaTicketLock) -> None:
        self.red.set(self.key_prefix + lock.conversation_id, lock.dumps())

    def issue_ticket(self, conversation_id: str, lifetime: float) -> int:
        lock = self.get_lock(conversation_id) or RasaTicketLock(conversation_id)
        number = lock.issue_ticket(lifetime)
        self.save_lock(lock)
        return number


# What json.dumps writes for one ticket: the same keys, order and separators.
TICKET_TEXT = re.compile(r'\{"number": (-?\d+), "expires": (-?\d+\.\d+(?:[eE][-+]?\d+)?)\}')


def assert_rasa_format(value: str, conversation_id: str) -> RasaTicketLock:
    """``value`` is exactly what Rasa's ``TicketLock.dumps()`` writes, up to float digits."""
    document = json.loads(value)
    assert isinstance(document, dict)
    assert list(document) == ["conversation_id", "tickets"], document
    assert document["conversation_id"] == conversation_id
    assert isinstance(document["tickets"], list)
    for text in document["tickets"]:
        assert isinstance(text, str), f"a ticket must be a JSON string, not {text!r}"
        assert TICKET_TEXT.fullmatch(text), f"not Rasa's ticket form: {text!r}"
        ticket = json.loads(text)
        assert list(ticket) == ["number", "expires"], ticket
        assert type(ticket["number"]) is int, ticket
        assert type(ticket["expires"]) is float, ticket
    # The outer level is byte for byte json.dumps of the same dict (ids without escapes).
    if conversation_id.isascii() and "/" not in conversation_id:
        assert value == json.dumps(document), value
    lock = RasaTicketLock.from_dict(document)
    # Rasa writes back what it read: the same document, ticket for ticket.
    rewritten = json.loads(lock.dumps())
    assert rewritten["conversation_id"] == conversation_id
    assert [json.loads(t) for t in rewritten["tickets"]] == [
        json.loads(t) for t in document["tickets"]
    ]
    return lock


# --------------------------------------------------------------------------- servers


@dataclass
class RasaSide:
    """A ticketlock server on the standalone Redis, and Rasa's view of the same db."""

    target: str
    store: RasaRedisLockStore
    key_prefix: str  # the full prefix of lock keys, as Rasa builds it


def rasa_side(
    deployment: RedisDeployment,
    folder: Path,
    **extra: Any,
) -> Iterator[RasaSide]:
    section = deployment.lock_store_section("redis", **extra)
    assert section["db"] == deployment.db  # the db Rasa and ticketlock both use (1 by default)
    endpoints = deployment.write_endpoints(folder / "endpoints.yml", "redis", **extra)
    processes = start_servers(endpoints)
    client = deployment.client(db=section["db"], decode_responses=True)
    assert isinstance(client, redis.Redis)
    try:
        store = RasaRedisLockStore(client, extra.get("key_prefix"))
        yield RasaSide(processes[0].target, store, store.key_prefix)
    finally:
        client.close()
        stop_servers(processes)


@pytest.fixture(scope="module")
def rasa(
    redis_standalone: RedisDeployment, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RasaSide]:
    """RedisLockStore with the default key prefix: keys ``lock:<conversation_id>``."""
    yield from rasa_side(redis_standalone, tmp_path_factory.mktemp("rasa-default"))


@pytest.fixture(scope="module")
def rasa_app(
    redis_standalone: RedisDeployment, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RasaSide]:
    """RedisLockStore with ``key_prefix: app``: keys ``app:lock:<conversation_id>``."""
    yield from rasa_side(redis_standalone, tmp_path_factory.mktemp("rasa-app"), key_prefix="app")


@pytest.fixture(params=["default", "app"])
def side(request: pytest.FixtureRequest) -> RasaSide:
    name = "rasa" if request.param == "default" else "rasa_app"
    value: RasaSide = request.getfixturevalue(name)
    return value


# --------------------------------------------------------------------------- Rasa writes


def test_a_lock_written_by_rasa_is_read_queued_behind_and_served(side: RasaSide, cid: str) -> None:
    now = time.time()
    rasa_lock = RasaTicketLock(cid, deque([RasaTicket(0, now + 60), RasaTicket(1, now + 61.25)]))
    key = side.key_prefix + cid
    side.store.red.set(key, rasa_lock.dumps())  # exactly Rasa's save_lock: no TTL
    assert side.store.red.ttl(key) == -1

    with LockClient(side.target, timeout=TIMEOUT) as client:
        lock = client.get_lock(cid)
        assert lock is not None and lock.conversation_id == cid
        # The expiries come back as the very doubles Rasa wrote.
        assert [(t.number, t.expires) for t in lock.tickets] == [(0, now + 60), (1, now + 61.25)]
        assert lock.now_serving == 0 and lock.last_issued == 1

        issued = client.issue(cid, LIFETIME)
        assert issued.ticket.number == 2
        assert issued.now_serving == 0 and not issued.acquired

        # Rasa sees ticketlock's ticket queued after its own.
        seen = side.store.get_lock(cid)
        assert seen is not None
        assert [t.number for t in seen.tickets] == [0, 1, 2]
        assert seen.is_locked(1) and seen.is_locked(2) and not seen.is_locked(0)

        client.finish_serving(cid, 0)
        held = client.wait_for_ticket(cid, 1, timeout=TIMEOUT)
        assert held.now_serving == 1
        assert [t.number for t in held.tickets] == [1, 2]
        assert held.tickets[0].expires == now + 61.25

        seen = side.store.get_lock(cid)
        assert seen is not None and not seen.is_locked(1)
        assert [t.number for t in seen.tickets] == [1, 2]
        assert seen.tickets[0].expires == now + 61.25  # untouched by ticketlock

        # A mixed fleet keeps one numbering: Rasa issues after ticketlock, then ticketlock.
        assert side.store.issue_ticket(cid, LIFETIME) == 3
        assert client.issue_ticket(cid, LIFETIME) == 4
        lock = client.get_lock(cid)
        assert lock is not None and [t.number for t in lock.tickets] == [1, 2, 3, 4]
        for number in (1, 2, 3):
            client.finish_serving(cid, number)
        assert client.cleanup(cid, 4) is True
    assert side.store.get_lock(cid) is None


def test_expired_tickets_written_by_rasa_are_dropped(side: RasaSide, cid: str) -> None:
    now = time.time()
    rasa_lock = RasaTicketLock(cid, deque([RasaTicket(0, now - 5), RasaTicket(1, now + 60)]))
    side.store.save_lock(rasa_lock)
    with LockClient(side.target, timeout=TIMEOUT) as client:
        lock = client.get_lock(cid)
        assert lock is not None and [t.number for t in lock.tickets] == [1]
        issued = client.issue(cid, LIFETIME)
        assert (issued.ticket.number, issued.now_serving) == (2, 1)
        client.cleanup(cid, 1)
        client.cleanup(cid, 2)


# --------------------------------------------------------------------------- ticketlock writes


def test_what_ticketlock_writes_is_rasas_format(side: RasaSide, cid: str) -> None:
    key = side.key_prefix + cid
    with LockClient(side.target, timeout=TIMEOUT) as client:
        lifetimes = [LIFETIME, 45.5, 60.0]
        started = time.time()
        issued = [client.issue(cid, lifetime) for lifetime in lifetimes]
        value = side.store.red.get(key)
        assert isinstance(value, str), f"no lock at {key!r}"
        lock = assert_rasa_format(value, cid)

        # Rasa reads the queue ticketlock built, with its own semantics.
        assert [t.number for t in lock.tickets] == [0, 1, 2]
        assert lock.now_serving == 0 and lock.last_issued == 2
        assert not lock.is_locked(0) and lock.is_locked(1)
        assert [t.expires for t in lock.tickets] == [i.ticket.expires for i in issued]
        for ticket, lifetime in zip(lock.tickets, lifetimes, strict=True):
            assert ticket.expires == pytest.approx(started + lifetime, abs=2)
        # And ticketlock reads back exactly what is in Redis.
        served = client.get_lock(cid)
        assert served is not None
        assert [(t.number, t.expires) for t in served.tickets] == [
            (t.number, t.expires) for t in lock.tickets
        ]

        # After a finish and a refresh the value is still Rasa's.
        client.finish_serving(cid, 0)
        client.refresh_ticket(cid, 2, 90)
        value = side.store.red.get(key)
        assert isinstance(value, str)
        lock = assert_rasa_format(value, cid)
        assert [t.number for t in lock.tickets] == [1, 2]
        assert lock.now_serving == 1

        # An empty lock (every ticket finished) is Rasa's empty lock.
        client.finish_serving(cid, 1)
        client.finish_serving(cid, 2)
        value = side.store.red.get(key)
        assert isinstance(value, str)
        assert assert_rasa_format(value, cid).tickets == deque()
        assert client.cleanup(cid, 2) is True
    assert side.store.red.get(key) is None


def test_saved_lock_with_whole_second_expiry_is_written_with_a_float(
    side: RasaSide, cid: str
) -> None:
    """Rasa writes ``time.time() + lifetime`` as a JSON float, even when it is whole."""
    whole = float(int(time.time()) + 60)
    with LockClient(side.target, timeout=TIMEOUT) as client:
        client.save_lock(TicketLock(cid, [Ticket(0, whole), Ticket(1, whole + 0.5)]))
        value = side.store.red.get(side.key_prefix + cid)
        assert isinstance(value, str)
        lock = assert_rasa_format(value, cid)
        assert [(t.number, t.expires) for t in lock.tickets] == [(0, whole), (1, whole + 0.5)]
        client.delete_lock(cid)


def test_key_prefix_app_puts_locks_where_rasa_looks(rasa_app: RasaSide, cid: str) -> None:
    assert rasa_app.key_prefix == "app:lock:"
    with LockClient(rasa_app.target, timeout=TIMEOUT) as client:
        number = client.issue_ticket(cid, LIFETIME)
        assert rasa_app.store.red.exists(f"app:lock:{cid}") == 1
        assert rasa_app.store.red.exists(f"lock:{cid}") == 0
        lock = rasa_app.store.get_lock(cid)
        assert lock is not None and [t.number for t in lock.tickets] == [number]
        assert client.cleanup(cid, number) is True
        assert rasa_app.store.red.exists(f"app:lock:{cid}") == 0


def test_non_ascii_conversation_id_round_trips_through_rasas_parser(
    rasa: RasaSide, cid: str
) -> None:
    conversation_id = f'{cid} 💬 ünïcode/"quoted"\\'
    with LockClient(rasa.target, timeout=TIMEOUT) as client:
        number = client.issue_ticket(conversation_id, LIFETIME)
        value = rasa.store.red.get("lock:" + conversation_id)
        assert isinstance(value, str)
        lock = assert_rasa_format(value, conversation_id)
        assert [t.number for t in lock.tickets] == [number]
        # And Rasa's own write of that id (ASCII escapes) reads back through ticketlock.
        rasa.store.save_lock(lock)
        served = client.get_lock(conversation_id)
        assert served is not None and served.conversation_id == conversation_id
        assert [t.number for t in served.tickets] == [number]
        assert client.cleanup(conversation_id, number) is True


# --------------------------------------------------------------------------- the Cluster

ODD_IDS = [
    "{user}:*  🎉 chat {",
    "}{",
    "{}",
    "a}b{c}d*",
    "[x]*?:\n🙂 {{ }}",
]


@pytest.fixture(scope="module")
def cluster_servers(
    redis_cluster: RedisDeployment, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[[str], list[ServerProcess]]]:
    """Two servers per store type on the Cluster, started when first asked for."""
    started: dict[str, list[ServerProcess]] = {}
    folder = tmp_path_factory.mktemp("rasa-cluster")

    def get(store_type: str) -> list[ServerProcess]:
        if store_type not in started:
            endpoints = redis_cluster.write_endpoints(folder / f"{store_type}.yml", store_type)
            started[store_type] = start_servers(endpoints, 2)
        return started[store_type]

    try:
        yield get
    finally:
        for processes in started.values():
            stop_servers(processes)


@pytest.mark.parametrize("store_type", ["redis", "concurrent_redis"])
@pytest.mark.parametrize("odd", ODD_IDS, ids=[f"id{n}" for n in range(len(ODD_IDS))])
async def test_odd_conversation_ids_work_end_to_end_on_the_cluster(
    cluster_servers: Callable[[str], list[ServerProcess]],
    redis_cluster: RedisDeployment,
    store_type: str,
    odd: str,
) -> None:
    # Unique, and the odd characters both before and after the unique part.
    conversation_id = f"{odd}{uuid.uuid4().hex}{odd}"
    a_server, b_server = cluster_servers(store_type)
    async with (
        AsyncLockClient(a_server.target, timeout=TIMEOUT) as a,
        AsyncLockClient(b_server.target, timeout=TIMEOUT) as b,
    ):
        first = await a.issue(conversation_id, LIFETIME)
        assert first.acquired
        second = await b.issue(conversation_id, LIFETIME)
        assert not second.acquired and second.now_serving == first.ticket.number
        assert second.ticket.number == first.ticket.number + 1

        lock = await b.get_lock(conversation_id)
        assert lock is not None and lock.conversation_id == conversation_id
        assert [t.number for t in lock.tickets] == [first.ticket.number, second.ticket.number]
        if store_type == "redis":
            # Rasa's key, found by any Cluster client at the slot of `lock:<id>`.
            with redis_cluster.client(decode_responses=True) as cluster:
                value = cluster.get("lock:" + conversation_id)
            assert isinstance(value, str)
            rasa_lock = assert_rasa_format(value, conversation_id)
            assert [t.number for t in rasa_lock.tickets] == [t.number for t in lock.tickets]

        # The second waits on the other server and is let in by a release here.
        waiter = asyncio.ensure_future(
            b.wait_for_ticket(conversation_id, second.ticket.number, timeout=TIMEOUT)
        )
        await asyncio.sleep(0.2)
        assert not waiter.done()
        assert await a.is_someone_waiting(conversation_id)
        assert await a.cleanup(conversation_id, first.ticket.number) is False
        held = await asyncio.wait_for(waiter, TIMEOUT)
        assert held.conversation_id == conversation_id
        assert held.now_serving == second.ticket.number
        assert await a.cleanup(conversation_id, second.ticket.number) is True
        assert await b.get_lock(conversation_id) is None

        # And the Lock stream, queued behind a ticket held through the other server.
        third = await b.issue(conversation_id, LIFETIME)
        session = asyncio.ensure_future(hold_session(a, conversation_id))
        await asyncio.sleep(0.2)
        assert not session.done()
        await b.cleanup(conversation_id, third.ticket.number)
        number = await asyncio.wait_for(session, TIMEOUT)
        assert number == third.ticket.number + 1
        # The block's exit does not wait for `released`; a's own next call does.
        assert await a.get_lock(conversation_id) is None
        assert await b.get_lock(conversation_id) is None


async def hold_session(client: AsyncLockClient, conversation_id: str) -> int:
    async with client.lock(conversation_id, LIFETIME, timeout=TIMEOUT) as held:
        lock = await client.get_lock(conversation_id)
        assert lock is not None and lock.now_serving == held.ticket.number
        return held.ticket.number
