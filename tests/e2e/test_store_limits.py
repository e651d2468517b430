"""The limits every store keeps, through real servers on real Redis.

Ticket numbers are exact and end at 2**53 - 1 (issuing past it fails with
RESOURCE_EXHAUSTED, never repeats a number); a conversation holds at most
``max_tickets_per_conversation`` tickets; lifetimes stay within
``number_retention_seconds``; every reply at the largest configurable limit fits
gRPC's default 4 MiB message size; data under a lock's key that is not a ticket
lock is FAILED_PRECONDITION naming the key.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from ticketlock.v1 import lock_service_pb2 as pb
from ticketlock.v1 import lock_service_pb2_grpc as pb_grpc
from ticketlock_server.config import MAX_MAX_TICKETS_PER_CONVERSATION
from ticketlock_server.stores.redis_keys import RedisKeyLayout

from tests.support.redis_servers import RedisDeployment
from tests.support.server import ServerProcess
from tests.support.store_servers import StoreServers

STORES = ("in_memory", "redis", "concurrent_redis")
MAX_NUMBER = 2**53 - 1
CALL_TIMEOUT = 10.0
GRPC_DEFAULT_MAX_MESSAGE = 4 * 1024 * 1024
NO_RETRIES = [("grpc.enable_retries", 0)]
_EOF: Any = grpc.aio.EOF  # type: ignore[attr-defined]
RESOURCE_EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED


def new_cid(tag: str) -> str:
    return f"{tag}-{uuid.uuid4().hex}"


@contextlib.contextmanager
def server_on(
    tmp_path: Path, deployment: RedisDeployment, store_type: str, **settings: Any
) -> Iterator[ServerProcess]:
    """A ticketlock server of its own on ``store_type`` with these ``lock_store`` settings."""
    if store_type == "in_memory":
        section: dict[str, Any] = {"type": "in_memory", **settings}
    else:
        section = deployment.lock_store_section(store_type, **settings)
    path = tmp_path / f"{store_type}-{uuid.uuid4().hex[:8]}.yml"
    path.write_text(yaml.safe_dump({"lock_store": section}), encoding="utf-8")
    with ServerProcess(["--endpoints", str(path), "--log-level", "warning"]) as server:
        yield server


@contextlib.asynccontextmanager
async def stub_for(server: ServerProcess) -> AsyncIterator[Any]:
    # Default options: the client's 4 MiB receive limit is part of what is tested.
    async with grpc.aio.insecure_channel(server.target, options=NO_RETRIES) as channel:
        yield pb_grpc.LockServiceStub(channel)


def acquire(cid: str, lifetime: float = 30) -> pb.LockRequest:
    return pb.LockRequest(acquire=pb.Acquire(conversation_id=cid, lifetime_seconds=lifetime))


async def numbers_of(stub: Any, cid: str) -> list[int]:
    reply = await stub.GetLock(pb.GetLockRequest(conversation_id=cid), timeout=CALL_TIMEOUT)
    return [t.number for t in reply.lock.tickets]


# --------------------------------------------------------------------------- exact numbers


@dataclass
class HolderChecker:
    """Records who holds a conversation; more than one at a time is a failure."""

    holding: int = 0
    most_at_once: int = 0
    numbers: list[int] = field(default_factory=list)

    def enter(self, number: int) -> None:
        self.holding += 1
        self.numbers.append(number)
        self.most_at_once = max(self.most_at_once, self.holding)

    def leave(self) -> None:
        self.holding -= 1


async def hold_once(stub: Any, cid: str, checker: HolderChecker) -> int | grpc.aio.AioRpcError:
    """One ``Lock`` session: acquire, hold briefly, release; the number or the error."""
    call = stub.Lock(timeout=3 * CALL_TIMEOUT)
    await call.write(acquire(cid))
    try:
        while True:
            message = await call.read()
            assert message is not _EOF, "the stream ended without acquiring"
            if message.WhichOneof("event") == "acquired":
                break
    except grpc.aio.AioRpcError as error:
        return error
    number = int(message.acquired.ticket.number)
    checker.enter(number)
    await asyncio.sleep(0.05)
    checker.leave()
    await call.write(pb.LockRequest(release=pb.Release()))
    released = await call.read()
    assert released.WhichOneof("event") == "released"
    await call.done_writing()
    return number


@pytest.mark.parametrize("store_type", STORES)
async def test_numbers_end_at_2_53_minus_1_and_are_never_handed_out_twice(
    store_servers: StoreServers, store_type: str
) -> None:
    """Sessions race for the last six numbers: six hold in turn with distinct numbers
    up to 2**53 - 1, the others are told RESOURCE_EXHAUSTED naming the limit."""
    server = store_servers(store_type)
    cid = new_cid("top")
    start = MAX_NUMBER - 6
    async with stub_for(server) as stub:
        saved = pb.TicketLock(
            conversation_id=cid, tickets=[pb.Ticket(number=start, expires=time.time() + 60)]
        )
        await stub.SaveLock(pb.SaveLockRequest(lock=saved), timeout=CALL_TIMEOUT)
        # The saved number is kept after the lock is gone.
        await stub.DeleteLock(pb.DeleteLockRequest(conversation_id=cid), timeout=CALL_TIMEOUT)
        checker = HolderChecker()
        results = await asyncio.wait_for(
            asyncio.gather(*(hold_once(stub, cid, checker) for _ in range(10))), 60
        )
        numbers = sorted(r for r in results if isinstance(r, int))
        refusals = [r for r in results if not isinstance(r, int)]
        assert checker.most_at_once == 1
        assert len(set(checker.numbers)) == len(checker.numbers), checker.numbers
        assert numbers == list(range(start + 1, MAX_NUMBER + 1)), numbers
        assert len(refusals) == 4
        for refusal in refusals:
            assert refusal.code() == RESOURCE_EXHAUSTED, refusal
            assert str(MAX_NUMBER) in (refusal.details() or "")

        request = pb.IssueTicketRequest(conversation_id=cid, lifetime_seconds=5)
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stub.IssueTicket(request, timeout=CALL_TIMEOUT)
        assert raised.value.code() == RESOURCE_EXHAUSTED
        assert await numbers_of(stub, cid) == []


@pytest.mark.parametrize("store_type", STORES)
async def test_a_saved_number_that_leaves_no_room_to_issue_is_refused(
    store_servers: StoreServers, store_type: str
) -> None:
    server = store_servers(store_type)
    cid = new_cid("no-room")
    async with stub_for(server) as stub:
        for number in (MAX_NUMBER, MAX_NUMBER + 1):
            lock = pb.TicketLock(
                conversation_id=cid, tickets=[pb.Ticket(number=number, expires=time.time() + 60)]
            )
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await stub.SaveLock(pb.SaveLockRequest(lock=lock), timeout=CALL_TIMEOUT)
            assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "lock.tickets[0].number" in (raised.value.details() or "")
        issued = await stub.IssueTicket(
            pb.IssueTicketRequest(conversation_id=cid, lifetime_seconds=5), timeout=CALL_TIMEOUT
        )
        assert issued.ticket.number in (0, 1)  # from 0 (in-memory, redis) or 1 (concurrent)


# --------------------------------------------------------------------------- tickets per queue


@pytest.mark.parametrize("store_type", STORES)
async def test_a_conversation_holds_at_most_max_tickets_per_conversation(
    tmp_path: Path, redis_standalone: RedisDeployment, store_type: str
) -> None:
    """Beyond the limit IssueTicket, Lock acquire and SaveLock are RESOURCE_EXHAUSTED,
    naming the limit, and change nothing; other conversations are not affected."""
    with server_on(
        tmp_path, redis_standalone, store_type, max_tickets_per_conversation=5
    ) as server:
        async with stub_for(server) as stub:
            cid = new_cid("full")
            request = pb.IssueTicketRequest(conversation_id=cid, lifetime_seconds=30)
            issued = [await stub.IssueTicket(request, timeout=CALL_TIMEOUT) for _ in range(5)]
            held = [i.ticket.number for i in issued]
            assert await numbers_of(stub, cid) == held

            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await stub.IssueTicket(request, timeout=CALL_TIMEOUT)
            assert raised.value.code() == RESOURCE_EXHAUSTED
            assert "max_tickets_per_conversation (5)" in (raised.value.details() or "")

            call = stub.Lock(timeout=CALL_TIMEOUT)
            await call.write(acquire(cid))
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await call.read()
            assert raised.value.code() == RESOURCE_EXHAUSTED
            assert "max_tickets_per_conversation (5)" in (raised.value.details() or "")

            expires = time.time() + 30
            six = pb.TicketLock(
                conversation_id=cid,
                tickets=[pb.Ticket(number=n, expires=expires) for n in range(6)],
            )
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await stub.SaveLock(pb.SaveLockRequest(lock=six), timeout=CALL_TIMEOUT)
            assert raised.value.code() == RESOURCE_EXHAUSTED
            assert "max_tickets_per_conversation (5)" in (raised.value.details() or "")
            assert await numbers_of(stub, cid) == held

            # Room again once a ticket leaves; other conversations never noticed.
            await stub.FinishServing(
                pb.FinishServingRequest(conversation_id=cid, ticket_number=held[0]),
                timeout=CALL_TIMEOUT,
            )
            again = await stub.IssueTicket(request, timeout=CALL_TIMEOUT)
            assert again.ticket.number == held[-1] + 1
            other = pb.IssueTicketRequest(conversation_id=new_cid("other"), lifetime_seconds=5)
            assert (await stub.IssueTicket(other, timeout=CALL_TIMEOUT)).now_serving >= 0


@pytest.mark.parametrize("store_type", STORES)
async def test_replies_at_the_largest_ticket_limit_fit_the_default_message_size(
    tmp_path: Path, redis_standalone: RedisDeployment, store_type: str
) -> None:
    """At the largest limit that can be configured, with the longest conversation id
    and the widest numbers, GetLock and the holder's WaitForTicket fit in 4 MiB."""
    limit = MAX_MAX_TICKETS_PER_CONVERSATION
    settings: dict[str, Any] = {"max_tickets_per_conversation": limit}
    if store_type != "in_memory":
        # Saving and reading 100,000 tickets takes Redis seconds (hence the default).
        settings["socket_timeout"] = 60
    with server_on(tmp_path, redis_standalone, store_type, **settings) as server:
        async with stub_for(server) as stub:
            cid = new_cid("x" * 991)
            assert len(cid.encode()) == 1024
            first = MAX_NUMBER - limit - 1
            expires = time.time() + 120
            lock = pb.TicketLock(
                conversation_id=cid,
                tickets=[pb.Ticket(number=first + i, expires=expires + i) for i in range(limit)],
            )
            await stub.SaveLock(pb.SaveLockRequest(lock=lock), timeout=60)
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await stub.IssueTicket(
                    pb.IssueTicketRequest(conversation_id=cid, lifetime_seconds=5), timeout=60
                )
            assert raised.value.code() == RESOURCE_EXHAUSTED

            got = await stub.GetLock(pb.GetLockRequest(conversation_id=cid), timeout=60)
            assert len(got.lock.tickets) == limit
            assert got.ByteSize() < GRPC_DEFAULT_MAX_MESSAGE
            print(f"\n{store_type}: GetLock of {limit} tickets is {got.ByteSize():,} bytes")

            stream = stub.WaitForTicket(
                pb.WaitForTicketRequest(conversation_id=cid, ticket_number=first), timeout=60
            )
            message = await stream.read()
            assert message.acquired and len(message.lock.tickets) == limit
            assert message.ByteSize() < GRPC_DEFAULT_MAX_MESSAGE
            stream.cancel()
            await stub.DeleteLock(pb.DeleteLockRequest(conversation_id=cid), timeout=60)


# --------------------------------------------------------------------------- number retention


@pytest.mark.parametrize("store_type", STORES)
async def test_lifetimes_never_outlast_the_number_retention(
    tmp_path: Path, redis_standalone: RedisDeployment, store_type: str
) -> None:
    retention = 120
    settings = {"number_retention_seconds": retention}
    with server_on(tmp_path, redis_standalone, store_type, **settings) as server:
        async with stub_for(server) as stub:
            cid = new_cid("retention")
            too_long = pb.IssueTicketRequest(conversation_id=cid, lifetime_seconds=retention + 1)
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await stub.IssueTicket(too_long, timeout=CALL_TIMEOUT)
            assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            details = raised.value.details() or ""
            assert "lifetime_seconds" in details and "number_retention_seconds" in details
            fits = pb.IssueTicketRequest(conversation_id=cid, lifetime_seconds=retention)
            await stub.IssueTicket(fits, timeout=CALL_TIMEOUT)
    if store_type != "in_memory":
        layout = RedisKeyLayout(
            "concurrent_lock:" if store_type == "concurrent_redis" else "lock:",
            store_type == "concurrent_redis",
        )
        keys = layout.keys(cid)
        counter = keys[2] if store_type == "concurrent_redis" else keys[1]
        admin = redis_standalone.client()
        try:
            ttl = admin.ttl(counter)
        finally:
            admin.close()
        assert retention - 10 < ttl <= retention


# --------------------------------------------------------------------------- not a ticket lock


@pytest.mark.parametrize("store_type", ["redis", "concurrent_redis"])
async def test_data_that_is_not_a_ticket_lock_is_failed_precondition_naming_the_key(
    store_servers: StoreServers, redis_standalone: RedisDeployment, store_type: str
) -> None:
    server = store_servers(store_type)
    cid = new_cid("foreign")
    if store_type == "redis":
        key = f"lock:{cid}"
        value = "not a ticket lock"
    else:
        key = RedisKeyLayout("concurrent_lock:", True).keys(cid)[1]  # the expiries index
        value = "a string where a sorted set belongs"
    admin = redis_standalone.client()
    admin.set(key, value)
    try:
        async with stub_for(server) as stub:
            calls = {
                "GetLock": stub.GetLock(pb.GetLockRequest(conversation_id=cid), timeout=5),
                "IssueTicket": stub.IssueTicket(
                    pb.IssueTicketRequest(conversation_id=cid, lifetime_seconds=5), timeout=5
                ),
            }
            for name, call in calls.items():
                with pytest.raises(grpc.aio.AioRpcError) as raised:
                    await call
                assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION, name
                assert key in (raised.value.details() or ""), raised.value.details()
            lock_call = stub.Lock(timeout=5)
            await lock_call.write(acquire(cid))
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await lock_call.read()
            assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert admin.get(key) == value.encode(), "the foreign data was left as it was"
    finally:
        admin.delete(key)
        admin.close()
