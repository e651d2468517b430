"""The Redis stores in process, against real redis-servers: what the contract tests cannot see.

Key layout and TTLs, Redis's clock, sub-second lifetimes, numbers never reused,
no scans, one script call per operation, and wake-ups between two store
instances (two replicas) through pub/sub.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from ticketlock import Ticket, TicketLock
from ticketlock.model import Position
from ticketlock_server.config import load_store_config
from ticketlock_server.stores import create_store
from ticketlock_server.stores.base import StoreDataError, StoreLimitExceeded, StoreUnavailable
from ticketlock_server.stores.redis_feed import ChangeFeed
from ticketlock_server.stores.redis_store import _RedisStore

from harness.redis_servers import RedisDeployment
from tests.support.conditions import eventually

STORE_TYPES = ["redis", "concurrent_redis"]
MODES = ["standalone", "cluster"]

StoreFactory = Callable[..., _RedisStore]


@pytest.fixture(params=MODES)
def deployment(request: pytest.FixtureRequest) -> RedisDeployment:
    name = {"standalone": "redis_standalone", "cluster": "redis_cluster"}[request.param]
    result: RedisDeployment = request.getfixturevalue(name)
    return result


@pytest.fixture
async def make_store(
    deployment: RedisDeployment, tmp_path: Path
) -> AsyncIterator[Callable[..., Any]]:
    """``await make_store(store_type, on_change=..., **section)``: a started store."""
    stores: list[_RedisStore] = []

    async def make(
        store_type: str, on_change: Callable[[str], None] = lambda _: None, **extra: Any
    ) -> _RedisStore:
        path = deployment.write_endpoints(tmp_path / f"{len(stores)}.yml", store_type, **extra)
        store = create_store(load_store_config(str(path), {}))
        assert isinstance(store, _RedisStore)
        await store.start(on_change)
        stores.append(store)
        return store

    yield make
    for store in stores:
        await store.close()


def _cid() -> str:
    return f"store-{uuid.uuid4().hex}"


@pytest.mark.parametrize("store_type", STORE_TYPES)
async def test_sub_second_lifetimes_expire_by_redis_clock(
    make_store: Callable[..., Any], store_type: str
) -> None:
    store = await make_store(store_type)
    cid = _cid()
    lifetime = 0.8
    before = time.monotonic()
    holder = await store.issue_ticket(cid, lifetime)
    waiter = await store.issue_ticket(cid, 30)
    position = await store.position(cid, waiter.ticket.number)
    elapsed = time.monotonic() - before
    assert position is not None and position.tickets_ahead == 1
    # What is left of the holder's lifetime, to the millisecond, by Redis's clock.
    assert position.next_change_in is not None
    assert lifetime - elapsed - 0.002 <= position.next_change_in <= lifetime
    acquired = await eventually(
        lambda: _acquired(store, cid, waiter.ticket.number),
        "the waiter to hold the lock once the holder's sub-second lifetime ran out",
    )
    assert time.monotonic() - before >= lifetime - 0.002
    assert acquired.tickets_ahead == 0
    assert await store.position(cid, holder.ticket.number) is None


async def _acquired(store: _RedisStore, cid: str, number: int) -> Position | None:
    position = await store.position(cid, number)
    assert position is not None, "the waiter's own ticket vanished"
    return position if position.acquired else None


@pytest.mark.parametrize("store_type", STORE_TYPES)
async def test_numbers_are_never_reused_after_expiry_or_delete(
    make_store: Callable[..., Any], store_type: str
) -> None:
    store = await make_store(store_type)
    cid = _cid()
    first = (await store.issue_ticket(cid, 0.05)).ticket.number
    # The lock expires with its only ticket.
    await eventually(
        lambda: _is_none(store.get_lock(cid)), "the lock to expire with its only ticket"
    )
    second = (await store.issue_ticket(cid, 30)).ticket.number
    assert await store.delete_lock(cid)
    third = (await store.issue_ticket(cid, 30)).ticket.number
    assert first < second < third


@pytest.mark.parametrize("store_type", STORE_TYPES)
async def test_every_key_expires_and_the_counter_outlives_the_lock(
    make_store: Callable[..., Any], deployment: RedisDeployment, store_type: str
) -> None:
    store = await make_store(store_type)
    cid = _cid()
    await store.issue_ticket(cid, 30)
    await store.issue_ticket(cid, 40)
    client = deployment.client()
    keys = store._layout.keys(cid)[:-1]  # the last one is the channel
    ttls = {key: client.pttl(key) for key in keys if not key.endswith(":")}
    ttls = {key: ttl for key, ttl in ttls.items() if ttl != -2}
    assert ttls, "no keys written"
    assert all(ttl > 0 for ttl in ttls.values()), f"a key without expiry: {ttls}"
    # The numbering (counter, and its epoch) is kept 24 h; everything else expires
    # with the last ticket.
    numbering = {keys[2], keys[4]} if store_type == "concurrent_redis" else {keys[1]}
    counter = keys[2] if store_type == "concurrent_redis" else keys[1]
    assert all(86_000_000 < ttls[key] <= 86_400_000 for key in numbering), ttls
    assert all(ttl <= 40_500 for key, ttl in ttls.items() if key not in numbering), ttls
    assert await store.cleanup(cid, 999) is False
    lock = await store.get_lock(cid)
    assert lock is not None
    for ticket in lock.tickets:
        await store.cleanup(cid, ticket.number)
    assert await store.get_lock(cid) is None
    assert client.exists(counter) == 1
    client.close()


@pytest.mark.parametrize("store_type", STORE_TYPES)
async def test_saved_lock_reads_back_exactly_and_numbering_continues(
    make_store: Callable[..., Any], store_type: str
) -> None:
    store = await make_store(store_type)
    cid = "odd {id} with } and { and * [x] : \n \U0001f600"
    cid += uuid.uuid4().hex
    now = time.time()
    saved = TicketLock(cid, [Ticket(5, now - 1), Ticket(6, now + 30.123456789), Ticket(8, now + 9)])
    await store.save_lock(saved)
    lock = await store.get_lock(cid)
    assert lock is not None and lock.conversation_id == cid
    assert [(t.number, t.expires) for t in lock.tickets] == [(6, now + 30.123456789), (8, now + 9)]
    assert (await store.issue_ticket(cid, 10)).ticket.number == 9
    position = await store.position(cid, 6, with_lock=True)
    assert position is not None and position.acquired and position.lock is not None
    assert [t.number for t in position.lock.tickets] == [6, 8, 9]


async def test_no_scans_and_one_script_call_per_operation(
    make_store: Callable[..., Any], deployment: RedisDeployment
) -> None:
    if deployment.mode != "standard":
        pytest.skip("command statistics of one server are enough")
    stores = [await make_store(t) for t in STORE_TYPES]
    client = deployment.client()
    for store in stores:
        cid = _cid()
        client.config_resetstat()
        issued = await store.issue_ticket(cid, 30)
        await store.position(cid, issued.ticket.number, with_lock=True)
        await store.refresh_ticket(cid, issued.ticket.number, 30)
        await store.is_someone_waiting(cid)
        await store.get_lock(cid)
        await store.finish_serving(cid, issued.ticket.number)
        await store.cleanup(cid, issued.ticket.number)
        await store.save_lock(TicketLock(cid, [Ticket(1, time.time() + 5)]))
        await store.delete_lock(cid)
        stats = client.info("commandstats")
        calls = {name.removeprefix("cmdstat_"): value["calls"] for name, value in stats.items()}
        assert calls.get("evalsha") == 9, calls
        # Commands run inside scripts count here too: none of them may scan.
        assert not {"keys", "scan", "eval"} & set(calls), calls
    client.close()


@pytest.mark.parametrize("store_type", STORE_TYPES)
async def test_a_change_on_one_replica_wakes_the_other_but_not_itself(
    make_store: Callable[..., Any], store_type: str
) -> None:
    seen_a: list[str] = []
    seen_b: list[str] = []
    a = await make_store(store_type, on_change=seen_a.append)
    b = await make_store(store_type, on_change=seen_b.append)
    cid = _cid()
    holder = await a.issue_ticket(cid, 30)
    await b.issue_ticket(cid, 30)
    await b.watch(cid)
    await a.watch(cid)
    await a.finish_serving(cid, holder.ticket.number)
    await _until(lambda: seen_b == [cid])
    # Messages reach a subscriber in the order they were published, so once A has
    # heard of B's later change it has heard everything it would of its own.
    await b.refresh_ticket(cid, holder.ticket.number + 1, 30)
    await _until(lambda: len(seen_a) >= 1)
    assert seen_a == [cid]
    # Refresh, save and delete wake too; a finish of a missing ticket does not.
    await a.finish_serving(cid, 12345)
    await a.refresh_ticket(cid, holder.ticket.number + 1, 30)
    await a.save_lock(TicketLock(cid, []))
    await a.delete_lock(cid)
    # A last change published after all of them: B has heard of everything before it
    # once it has heard of this one.
    await a.save_lock(TicketLock(cid, []))
    await _until(lambda: len(seen_b) >= 5)
    assert seen_b == [cid] * 5


@pytest.mark.parametrize("store_type", STORE_TYPES)
async def test_subscriptions_linger_then_go(
    make_store: Callable[..., Any], store_type: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("ticketlock_server.stores.redis_feed.LINGER", 0.2)
    store = await make_store(store_type)
    feed = store._feed
    assert isinstance(feed, ChangeFeed)
    cids = [_cid() for _ in range(3)]
    for cid in cids:
        await store.watch(cid)
    assert feed.channels == 3
    store.unwatch(cids[0])
    store.unwatch(cids[1])
    await store.watch(cids[1])  # came back: stays
    await _until(lambda: feed.channels == 2)


async def test_corrupt_lock_value_is_an_error_naming_the_key(
    make_store: Callable[..., Any], deployment: RedisDeployment
) -> None:
    store = await make_store("redis")
    cid = _cid()
    client = deployment.client()
    client.set(f"lock:{cid}", "not json")
    with pytest.raises(StoreDataError, match=f"'lock:{cid}' is not a ticket lock") as raised:
        await store.get_lock(cid)
    assert raised.value.key == f"lock:{cid}"
    client.close()


@pytest.mark.parametrize("store_type", STORE_TYPES)
async def test_a_reply_of_an_unexpected_shape_is_unavailable_naming_the_store(
    make_store: Callable[..., Any], store_type: str
) -> None:
    """A reply the script never returns (handed to the wrong call, or a client
    library's placeholder) is UNAVAILABLE, never an unhandled TypeError."""
    store = await make_store(store_type)
    cid = _cid()
    calls = [
        ("issue", None, lambda: store.issue_ticket(cid, 10)),
        ("issue", [b"1", b"2"], lambda: store.issue_ticket(cid, 10)),
        ("position", b"OK", lambda: store.position(cid, 1)),
        ("refresh", [b"1"], lambda: store.refresh_ticket(cid, 1, 10)),
        ("get", b"[1, 2]", lambda: store.get_lock(cid)),
    ]
    for operation, reply, call in calls:

        async def eval_returning(*_: Any, reply: Any = reply) -> Any:
            return reply

        store._eval = eval_returning  # type: ignore[method-assign]
        with pytest.raises(StoreUnavailable, match=f"unexpected reply to {operation}") as raised:
            await call()
        assert raised.value.store == store.name
        assert store.name in str(raised.value)


async def _until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    await eventually(condition, "the condition", timeout)


async def _is_none(value: Awaitable[object]) -> bool:
    return await value is None


@pytest.mark.parametrize("store_type", STORE_TYPES)
async def test_a_ticket_of_a_lost_numbering_run_never_touches_its_namesake(
    make_store: Callable[..., Any], deployment: RedisDeployment, store_type: str
) -> None:
    """Redis lost the conversation's data (a restart without persistence): numbering
    starts again, and the old holder's number now names someone else's ticket."""
    store = await make_store(store_type)
    cid = _cid()
    old = await store.issue_ticket(cid, 30)
    client = deployment.client()
    client.delete(*[k for k in store._layout.keys(cid)[:-1] if not k.endswith(":")])
    client.close()
    new = await store.issue_ticket(cid, 30)
    assert new.ticket.number == old.ticket.number and new.epoch != old.epoch
    number = old.ticket.number
    assert await store.position(cid, number, epoch=old.epoch) is None
    assert await store.refresh_ticket(cid, number, 60, epoch=old.epoch) is None
    assert await store.cleanup(cid, number, epoch=old.epoch) is False
    lock = await store.get_lock(cid)
    assert lock is not None and [t.expires for t in lock.tickets] == [new.ticket.expires]
    position = await store.position(cid, number, epoch=new.epoch)
    assert position is not None and position.acquired
    assert await store.cleanup(cid, number, epoch=new.epoch) is True


async def test_a_queue_longer_than_lua_can_unpack_is_read_in_chunks(
    make_store: Callable[..., Any], deployment: RedisDeployment
) -> None:
    if deployment.mode != "standard":
        pytest.skip("one deployment is enough")
    store = await make_store("concurrent_redis", max_tickets_per_conversation=10_000)
    cid = _cid()
    now = time.time()
    count = 8_500  # Lua 5.1's unpack stops near 8,000 values
    await store.save_lock(TicketLock(cid, [Ticket(n, now + 60) for n in range(1, count + 1)]))
    lock = await store.get_lock(cid)
    assert lock is not None and len(lock.tickets) == count
    head = await store.position(cid, 1, with_lock=True)
    assert head is not None and head.lock is not None and len(head.lock.tickets) == count
    last = await store.position(cid, count, next_change=True)
    assert last is not None and last.tickets_ahead == count - 1 and last.next_change_in


@pytest.mark.parametrize("store_type", STORE_TYPES)
async def test_a_lost_counter_never_hands_out_a_queued_number(
    make_store: Callable[..., Any], deployment: RedisDeployment, store_type: str
) -> None:
    """Redis may evict the counter (it has a TTL): numbering resumes above the queue."""
    store = await make_store(store_type)
    cid = _cid()
    first = await store.issue_ticket(cid, 30)
    second = await store.issue_ticket(cid, 30)
    keys = store._layout.keys(cid)
    client = deployment.client()
    client.delete(keys[2] if store_type == "concurrent_redis" else keys[1])
    client.close()
    third = await store.issue_ticket(cid, 30)
    assert third.ticket.number > second.ticket.number > first.ticket.number
    assert not third.acquired


@pytest.mark.parametrize("store_type", STORE_TYPES)
async def test_a_save_the_store_cannot_hold_exactly_changes_nothing(
    make_store: Callable[..., Any], store_type: str
) -> None:
    """The servicer rejects these first; the scripts check too, before any write."""
    store = await make_store(store_type)
    cid = _cid()
    held = await store.issue_ticket(cid, 30)
    with pytest.raises(StoreLimitExceeded, match="BADSAVE"):
        await store.save_lock(TicketLock(cid, [Ticket(0, 1e20)]))
    lock = await store.get_lock(cid)
    assert lock is not None and [t.number for t in lock.tickets] == [held.ticket.number]


async def test_a_subscriber_that_stops_answering_is_replaced(
    fresh_standalone: RedisDeployment,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A connection that dies silently (here: Redis stopped, no reset) is found by the
    feed's PING; once Redis answers again, every watched conversation is woken and
    wake-ups flow again."""
    monkeypatch.setattr("ticketlock_server.stores.redis_feed.LINGER", 0.4)
    path = fresh_standalone.write_endpoints(tmp_path / "e.yml", "redis", socket_timeout=0.3)
    seen: list[str] = []
    watcher = create_store(load_store_config(str(path), {}))
    other = create_store(load_store_config(str(path), {}))
    await watcher.start(seen.append)
    await other.start(lambda _: None)
    try:
        cid = _cid()
        await other.issue_ticket(cid, 30)
        await watcher.watch(cid)
        fresh_standalone.processes[0].pause()
        # The PING goes unanswered; the feed gives the connection up.
        await eventually(
            lambda: "no answer to PING" in caplog.text, "the feed to miss a PING answer"
        )
        fresh_standalone.processes[0].resume()
        await _until(lambda: cid in seen)  # woken once it is back
        seen.clear()
        await other.finish_serving(cid, 0)
        await _until(lambda: seen == [cid])
    finally:
        fresh_standalone.processes[0].resume()
        await watcher.close()
        await other.close()


@pytest.mark.parametrize("store_type", STORE_TYPES)
async def test_one_subscriber_connection_per_server_whatever_the_waiters(
    fresh_standalone: RedisDeployment, tmp_path: Path, store_type: str
) -> None:
    """Forty conversations watched at once: one connection carries every subscription
    (two subscribing at once once opened a second connection, never read)."""
    path = fresh_standalone.write_endpoints(tmp_path / "e.yml", store_type)
    store = create_store(load_store_config(str(path), {}))
    await store.start(lambda _: None)
    try:
        cids = [_cid() for _ in range(40)]
        await asyncio.gather(*(store.watch(cid) for cid in cids))
        client = fresh_standalone.client()
        subscribers = [c for c in client.client_list() if int(c.get("sub", 0)) > 0]
        client.close()
        assert [int(c["sub"]) for c in subscribers] == [len(cids)]
    finally:
        await store.close()
