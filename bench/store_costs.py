"""What one conversation costs each store: memory, and Redis time at the ticket limit.

``python -m bench.store_costs`` (about a minute) starts its own ``redis-server`` on a
free loopback port (never the machine's), and drives the stores in process:

- **Memory per conversation**, for 36-byte ids (``str(uuid4())``): ``--conversations``
  conversations each get one ticket (lifetime one hour), then release it, after
  which only the numbering is kept (``number_retention_seconds``, 24 h by default).
  Redis: the change of ``used_memory``; in-memory: the change of the Python heap
  (``tracemalloc``).
- **How long one conversation blocks Redis**, for everyone else: with its queue
  at ``--tickets`` (default: the default ``max_tickets_per_conversation``), the
  Redis execution time of each script (``SLOWLOG`` with a threshold of 0: the time
  Redis spends in the command, during which it serves nobody else), the median
  and the most of ``--repeat`` calls. The conversation id is 1,024 bytes, the
  longest allowed.

Nothing here is asserted by a test.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import sys
import tempfile
import time
import tracemalloc
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import redis
from ticketlock.model import Ticket, TicketLock
from ticketlock_server.config import (
    DEFAULT_MAX_TICKETS_PER_CONVERSATION,
    StoreLimits,
    store_config_from_section,
)
from ticketlock_server.stores import create_store
from ticketlock_server.stores.base import LockStore
from ticketlock_server.stores.in_memory import InMemoryLockStore

from harness.redis_servers import RedisDeployment, redis_server_version, start_standalone

REDIS_STORES = ("redis", "concurrent_redis")


def redis_store(deployment: RedisDeployment, store_type: str, max_tickets: int) -> LockStore:
    section = deployment.lock_store_section(
        store_type, socket_timeout=30, max_tickets_per_conversation=max_tickets
    )
    return create_store(store_config_from_section(section, {}))


async def memory_per_conversation(
    store: LockStore, measure: Callable[[], int], count: int
) -> tuple[float, float]:
    """Bytes per conversation while it holds a ticket, and once only its number is kept."""
    ids = [str(uuid.uuid4()) for _ in range(count)]
    gc.collect()
    before = measure()
    numbers = [(await store.issue_ticket(cid, 3600)).ticket.number for cid in ids]
    gc.collect()
    held = measure()
    for cid, number in zip(ids, numbers, strict=True):
        await store.cleanup(cid, number)
    gc.collect()
    kept = measure()
    return (held - before) / count, (kept - before) / count


async def redis_time_at_limit(
    store: LockStore, client: redis.Redis, tickets: int, repeat: int
) -> dict[str, tuple[float, float]]:
    """Median and most Redis microseconds of each operation on a conversation
    holding ``tickets``."""
    cid = "x" * 1024
    now = time.time()
    full = TicketLock(cid, [Ticket(n, now + 3600 + n / 1000) for n in range(1, tickets + 1)])
    one_less = TicketLock(cid, list(full.tickets)[:-1])
    client.config_set("slowlog-log-slower-than", 0)
    client.config_set("slowlog-max-len", 1024)

    async def timed(
        operation: Callable[[], Awaitable[Any]], before: Callable[[], Awaitable[Any]]
    ) -> tuple[float, float]:
        durations = []
        for _ in range(repeat):
            await before()
            client.slowlog_reset()
            await operation()
            entries = [e for e in client.slowlog_get(16) if e["command"].startswith(b"EVALSHA")]
            durations.append(max(e["duration"] for e in entries))
        return statistics.median(durations), max(durations)

    async def save_full() -> None:
        await store.save_lock(full)

    async def save_one_less() -> None:
        await store.save_lock(one_less)

    async def nothing() -> None:
        return None

    last = tickets
    return {
        "SaveLock of the whole queue": await timed(save_full, nothing),
        "GetLock": await timed(lambda: store.get_lock(cid), save_full),
        "IssueTicket (the last one the limit allows)": await timed(
            lambda: store.issue_ticket(cid, 60), save_one_less
        ),
        "IssueTicket refused (at the limit)": await timed(
            lambda: _refused(store.issue_ticket(cid, 60)), save_full
        ),
        "position of the last waiter": await timed(lambda: store.position(cid, last), save_full),
        "position of the holder, with the lock (WaitForTicket)": await timed(
            lambda: store.position(cid, 1, with_lock=True, next_change=False), save_full
        ),
        "Cleanup of the holder's ticket (a release)": await timed(
            lambda: store.cleanup(cid, 1), save_full
        ),
    }


async def _refused(call: Awaitable[Any]) -> None:
    try:
        await call
    except Exception:
        return
    raise AssertionError("the issue at the limit was not refused")


async def run(args: argparse.Namespace) -> None:
    version = ".".join(map(str, redis_server_version()))
    print(f"Python {sys.version.split()[0]}, redis-server {version}")
    print(f"\nMemory per conversation, 36-byte ids, {args.conversations:,} conversations:")
    print("| store | holding one ticket | numbering kept only |\n|---|---|---|")
    tracemalloc.start()
    memory = InMemoryLockStore(limits=StoreLimits())
    held, kept = await memory_per_conversation(
        memory, lambda: tracemalloc.get_traced_memory()[0], args.conversations
    )
    tracemalloc.stop()
    print(f"| in_memory | {held:,.0f} B | {kept:,.0f} B |")
    with tempfile.TemporaryDirectory(prefix="bench-store-costs-") as directory:
        deployment = start_standalone(directory)
        try:
            client = deployment.client()
            assert isinstance(client, redis.Redis)
            results: dict[str, dict[str, tuple[float, float]]] = {}
            for store_type in REDIS_STORES:
                client.flushall()
                store = redis_store(deployment, store_type, args.tickets)
                await store.start(lambda _: None)
                try:
                    held, kept = await memory_per_conversation(
                        store, lambda: int(client.info("memory")["used_memory"]), args.conversations
                    )
                    print(f"| {store_type} | {held:,.0f} B | {kept:,.0f} B |")
                    client.flushall()
                    results[store_type] = await redis_time_at_limit(
                        store, client, args.tickets, args.repeat
                    )
                finally:
                    await store.close()
            client.close()
        finally:
            deployment.stop()
    print(
        f"\nRedis time per script in µs (median / most of {args.repeat}), one conversation "
        f"holding {args.tickets:,} tickets, 1,024-byte id:"
    )
    print("| operation | redis | concurrent_redis |\n|---|---|---|")
    for operation in results["redis"]:
        cells = " | ".join("{:,.0f} / {:,.0f}".format(*results[s][operation]) for s in REDIS_STORES)
        print(f"| {operation} | {cells} |")
    for s in REDIS_STORES:
        medians = [median for median, _ in results[s].values()]
        print(f"{s}: slowest operation's median {max(medians) / 1000:.2f} ms")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conversations", type=int, default=20_000)
    parser.add_argument("--tickets", type=int, default=DEFAULT_MAX_TICKETS_PER_CONVERSATION)
    parser.add_argument("--repeat", type=int, default=5)
    asyncio.run(run(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
