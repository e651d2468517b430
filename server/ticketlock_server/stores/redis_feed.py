"""Wake-ups across replicas: the store scripts publish, one subscriber per server listens.

Every script that can move a queue (finish, cleanup, refresh, save, delete)
publishes the calling server's id on the conversation's channel (SPUBLISH to the
conversation's own slot in cluster mode). A server subscribes to a conversation's
channel while it has waiters there, on one connection (one per shard in cluster
mode), and reports each message from another server to the wake hub. Its own
messages are skipped: the servicer has already woken its local waiters.

Subscriptions linger ``LINGER`` seconds after the last waiter leaves, so a busy
conversation is not re-subscribed on every handoff. A waiter reads its position
only after its subscription is confirmed, so no change can fall between the read
and the subscription. When the subscriber's connection breaks, messages may be
lost: once it is back, every watched conversation is reported as changed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio.client import PubSub
from redis.asyncio.cluster import ClusterPubSub

from ticketlock_server.stores.redis_connection import Connection

log = logging.getLogger(__name__)

LINGER = 10.0
RECONNECT_DELAYS = (0.02, 0.05, 0.1, 0.25, 0.5)
# A waiter waits this long at most for its subscription before it reads anyway.
MAX_CONFIRM_WAIT = 1.0


@dataclass(slots=True)
class _Subscription:
    conversation_id: str
    confirmed: asyncio.Future[None]
    # monotonic time since when no waiter watches it; None while watched.
    idle_since: float | None = None


@dataclass(slots=True)
class _Reader:
    pubsub: PubSub
    task: asyncio.Task[None] | None = None
    failed: bool = field(default=False)


class ChangeFeed:
    """The subscriptions of one server to the change channels of its waiters."""

    def __init__(
        self,
        connection: Connection,
        server_id: str,
        on_change: Callable[[str], None],
        confirm_timeout: float,
    ) -> None:
        self._connection = connection
        self._sharded = connection.sharded
        self._server_id = server_id.encode()
        self._on_change = on_change
        self._confirm_timeout = min(confirm_timeout, MAX_CONFIRM_WAIT)
        self._subscriptions: dict[bytes, _Subscription] = {}
        self._pubsub: PubSub | ClusterPubSub = connection.client.pubsub()
        self._readers: dict[int, _Reader] = {}
        self._sweeper: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._closed = False

    async def watch(self, conversation_id: str, channel: str) -> None:
        """Subscribe (or keep) ``channel``; return once Redis has confirmed it."""
        key = channel.encode()
        subscription = self._subscriptions.get(key)
        if subscription is None:
            subscription = await self._subscribe(conversation_id, key)
            if subscription is None:
                return
        subscription.idle_since = None
        if subscription.confirmed.done():
            return
        try:
            await asyncio.wait_for(asyncio.shield(subscription.confirmed), self._confirm_timeout)
        except asyncio.TimeoutError:
            # Waiting goes on with its timers; the next waiter subscribes afresh.
            log.warning("subscription to %r not confirmed in time", channel)
            if self._subscriptions.get(key) is subscription:
                del self._subscriptions[key]

    async def _subscribe(self, conversation_id: str, key: bytes) -> _Subscription | None:
        # One (un)subscription at a time: redis-py's PubSub opens its connection on the
        # first command without a lock (two at once would open two, one never read),
        # and an UNSUBSCRIBE must not overtake the SUBSCRIBE that follows it.
        async with self._lock:
            subscription = self._subscriptions.get(key)
            if subscription is not None:
                return subscription
            loop = asyncio.get_running_loop()
            subscription = _Subscription(conversation_id, loop.create_future())
            self._subscriptions[key] = subscription
            try:
                if self._sharded:
                    assert isinstance(self._pubsub, ClusterPubSub)
                    await self._pubsub.ssubscribe(key)
                else:
                    await self._pubsub.subscribe(key)
            except Exception as error:  # a wake-up path never fails a wait
                # Waiting goes on with its timers; the next waiter tries again.
                log.warning("subscribing to %r failed: %s", key, error)
                del self._subscriptions[key]
                subscription.confirmed.set_result(None)
                return None
            self._start_readers()
            return subscription

    def unwatch(self, channel: str) -> None:
        """The last waiter left; unsubscribe after ``LINGER`` unless one comes back."""
        subscription = self._subscriptions.get(channel.encode())
        if subscription is not None:
            subscription.idle_since = time.monotonic()

    def _node_pubsubs(self) -> list[PubSub]:
        if isinstance(self._pubsub, ClusterPubSub):
            return list(self._pubsub.node_pubsub_mapping.values())
        return [self._pubsub]

    def _start_readers(self) -> None:
        if self._closed:
            return
        for pubsub in self._node_pubsubs():
            reader = self._readers.get(id(pubsub))
            if reader is None or reader.task is None or reader.task.done():
                reader = self._readers[id(pubsub)] = _Reader(pubsub)
                reader.task = asyncio.create_task(self._read(reader))
        if self._sweeper is None:
            self._sweeper = asyncio.create_task(self._sweep())

    async def _read(self, reader: _Reader) -> None:
        attempt = 0
        while not self._closed:
            try:
                message = await reader.pubsub.get_message(timeout=None)
            except asyncio.CancelledError:
                raise
            except Exception as error:  # the reader must outlive any error
                if not reader.failed:
                    log.warning("change feed lost its connection: %s", error)
                reader.failed = True
                await asyncio.sleep(RECONNECT_DELAYS[min(attempt, len(RECONNECT_DELAYS) - 1)])
                attempt += 1
                if not reader.pubsub.subscribed:
                    # Its last channel was dropped while it was broken: nothing to read.
                    self._readers.pop(id(reader.pubsub), None)
                    return
                continue
            attempt = 0
            if reader.failed:
                reader.failed = False
                log.warning("change feed is back; waking every watched conversation")
                for subscription in list(self._subscriptions.values()):
                    self._on_change(subscription.conversation_id)
            if message is not None:
                self._dispatch(message)
            if not reader.pubsub.subscribed:
                self._readers.pop(id(reader.pubsub), None)
                return

    def _dispatch(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        kind = kind.decode() if isinstance(kind, bytes) else kind
        channel = message["channel"]
        subscription = self._subscriptions.get(channel)
        if subscription is None:
            return
        if kind in ("subscribe", "ssubscribe"):
            if not subscription.confirmed.done():
                subscription.confirmed.set_result(None)
        elif kind in ("message", "smessage") and message["data"] != self._server_id:
            log.debug("change of %r from %r", subscription.conversation_id, message["data"])
            self._on_change(subscription.conversation_id)

    async def _sweep(self) -> None:
        while not self._closed:
            await asyncio.sleep(LINGER / 2)
            async with self._lock:
                cutoff = time.monotonic() - LINGER
                idle = [
                    key
                    for key, s in self._subscriptions.items()
                    if s.idle_since is not None and s.idle_since < cutoff
                ]
                if not idle:
                    continue
                for key in idle:
                    del self._subscriptions[key]
                try:
                    if self._sharded:
                        assert isinstance(self._pubsub, ClusterPubSub)
                        for key in idle:
                            await self._pubsub.sunsubscribe(key)
                    else:
                        await self._pubsub.unsubscribe(*idle)
                except Exception as error:  # retried at the next sweep
                    log.debug("unsubscribing failed: %s", error)

    @property
    def channels(self) -> int:
        """How many channels this server is subscribed to (for tests and metrics)."""
        return len(self._subscriptions)

    async def close(self) -> None:
        self._closed = True
        tasks = [r.task for r in self._readers.values() if r.task is not None]
        if self._sweeper is not None:
            tasks.append(self._sweeper)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        with contextlib.suppress(Exception):
            await self._pubsub.aclose()
