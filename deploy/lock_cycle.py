"""The compose client: one lock cycle through two replicas of one store.

A holder takes the lock through the first replica; a waiter queues through the
second and waits by stream; the holder's release on the first replica wakes the
waiter on the second (through the store's change feed), which then releases.
Exits 0 when the cycle completed, 1 otherwise.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time

from ticketlock import AsyncLockClient


async def cycle(first_target: str, second_target: str) -> None:
    conversation = f"compose-demo-{os.getpid()}-{time.time_ns()}"
    async with AsyncLockClient(first_target) as first, AsyncLockClient(second_target) as second:
        async with first.lock(conversation, 30) as held:
            print(f"{first_target}: holds ticket {held.ticket.number}", flush=True)
            waiter = await second.issue(conversation, 30)
            assert not waiter.acquired, "the second replica let a waiter in during the hold"
            print(f"{second_target}: queued ticket {waiter.ticket.number}", flush=True)
            waiting = asyncio.ensure_future(
                second.wait_for_ticket(conversation, waiter.ticket.number, timeout=30)
            )
            await asyncio.sleep(0.2)
            assert not waiting.done(), "the waiter acquired while the lock was held"
        await waiting
        print(f"{second_target}: acquired after the release on {first_target}", flush=True)
        await second.cleanup(conversation, waiter.ticket.number)
        assert await first.get_lock(conversation) is None


def main() -> int:
    targets = os.environ.get("TICKETLOCK_TARGETS", "").split(",")
    if len(targets) != 2 or not all(targets):
        print("TICKETLOCK_TARGETS must be two host:port addresses", file=sys.stderr)
        return 1
    try:
        asyncio.run(asyncio.wait_for(cycle(targets[0], targets[1]), 60))
    except Exception as error:
        print(f"lock cycle failed: {error!r}", file=sys.stderr)
        return 1
    print("lock cycle through both replicas: ok", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
