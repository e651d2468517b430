"""Wake-ups across replicas: the store scripts publish, one subscriber per server listens.

Every script that can move a queue (finish, cleanup, refresh, save, delete)
publishes the calling server's id on the conversation's channel (SPUBLISH to the
conversation's own slot in cluster mode). A server subscribes to a conversation's
channel while it has waiters there, on one connection (one per shard in cluster
mode), and reports each message from another server to the wake hub. Its own
messages are skipped: the servicer has already woken its local waiters.

Subscriptions linger ``LINGER`` seconds after the last waiter leaves, so a busy
conversation is not re-subscribed on every handoff. A waiter reads its position
only after its subscription is confirmed (or ``MAX_CONFIRM_WAIT`` passed), so no
change can fall between the read and the subscription. One task sends every
(UN)SUBSCRIBE, in order: waiters never queue behind a slow connection, and an
UNSUBSCRIBE never overtakes the SUBSCRIBE after it.

When the subscriber's connection breaks, messages may be lost: once it is back,
every watched conversation is reported as changed. A connection that dies
silently (a dropped NAT entry) is found by a PING every ``LINGER / 2`` seconds
that must be answered within the socket timeout.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
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
    failed: bool = False
    # monotonic times of the last PING sent on this connection and of its answer.
    pinged: float = 0.0
    ponged: float = 0.0


@dataclass(frozen=True, slots=True)
class _Request:
    subscribe: bool
    key: bytes
    conversation_id: str


class ChangeFeed:
    """The subscriptions of one server to the change channels of its waiters."""

    def __init__(
        self,
        connection: Connection,
        server_id: str,
        on_change: Callable[[str], None],
        socket_timeout: float,
    ) -> None:
        self._sharded = connection.sharded
        self._server_id = server_id.encode()
        self._on_change = on_change
        self._socket_timeout = socket_timeout
        self._confirm_timeout = min(socket_timeout, MAX_CONFIRM_WAIT)
        self._subscriptions: dict[bytes, _Subscription] = {}
        self._pubsub: PubSub | ClusterPubSub = connection.client.pubsub()
        self._readers: dict[int, _Reader] = {}
        self._requests: collections.deque[_Request] = collections.deque()
        self._requested = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False

    async def watch(self, conversation_id: str, channel: str) -> None:
        """Subscribe (or keep) ``channel``; return once Redis has confirmed it."""
        key = channel.encode()
        subscription = self._subscriptions.get(key)
        if subscription is None:
            confirmed = asyncio.get_running_loop().create_future()
            subscription = self._subscriptions[key] = _Subscription(conversation_id, confirmed)
            self._request(_Request(True, key, conversation_id))
        subscription.idle_since = None
        if subscription.confirmed.done():
            return
        with contextlib.suppress(asyncio.TimeoutError):
            # Waiting goes on with its timers meanwhile; the confirmation may still come.
            await asyncio.wait_for(asyncio.shield(subscription.confirmed), self._confirm_timeout)

    def unwatch(self, channel: str) -> None:
        """The last waiter left; unsubscribe after ``LINGER`` unless one comes back."""
        subscription = self._subscriptions.get(channel.encode())
        if subscription is not None:
            subscription.idle_since = time.monotonic()

    @property
    def channels(self) -> int:
        """How many channels this server is subscribed to (for tests and metrics)."""
        return len(self._subscriptions)

    # -- the one task that writes (un)subscriptions -----------------------------

    def _request(self, request: _Request) -> None:
        if not self._tasks and not self._closed:
            self._tasks = [
                asyncio.create_task(self._send_requests()),
                asyncio.create_task(self._sweep()),
            ]
        self._requests.append(request)
        self._requested.set()

    async def _send_requests(self) -> None:
        while True:
            if not self._requests:
                self._requested.clear()
                await self._requested.wait()
                continue
            # Consecutive requests of one kind go in one command, in their order.
            batch = [self._requests.popleft()]
            while (
                self._requests
                and self._requests[0].subscribe == batch[0].subscribe
                and len(batch) < 100
            ):
                batch.append(self._requests.popleft())
            keys = [request.key for request in batch]
            try:
                if batch[0].subscribe:
                    if isinstance(self._pubsub, ClusterPubSub):
                        await self._pubsub.ssubscribe(*keys)
                    else:
                        await self._pubsub.subscribe(*keys)
                    self._start_readers()
                elif isinstance(self._pubsub, ClusterPubSub):
                    await self._pubsub.sunsubscribe(*keys)
                else:
                    await self._pubsub.unsubscribe(*keys)
            except Exception as error:  # the writer must outlive any error
                log.warning("change feed: %s failed: %s", "subscribing" if batch[0].subscribe
                            else "unsubscribing", error)  # fmt: skip
                for request in batch:
                    self._failed(request)

    def _failed(self, request: _Request) -> None:
        subscription = self._subscriptions.get(request.key)
        if request.subscribe:
            # Not subscribed: let the next waiter ask again (this one has its timers).
            if subscription is not None and not subscription.confirmed.done():
                del self._subscriptions[request.key]
                subscription.confirmed.set_result(None)
        elif subscription is None:
            # Still subscribed at Redis: remember it as idle, so a sweep tries again.
            done = asyncio.get_running_loop().create_future()
            done.set_result(None)
            self._subscriptions[request.key] = _Subscription(request.conversation_id, done, 0.0)

    # -- reading ------------------------------------------------------------------

    def _node_pubsubs(self) -> list[PubSub]:
        if isinstance(self._pubsub, ClusterPubSub):
            return list(self._pubsub.node_pubsub_mapping.values())
        return [self._pubsub]

    def _start_readers(self) -> None:
        for pubsub in self._node_pubsubs():
            reader = self._readers.get(id(pubsub))
            if reader is None or reader.task is None or reader.task.done():
                reader = self._readers[id(pubsub)] = _Reader(pubsub)
                reader.task = asyncio.create_task(self._read(reader))

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
                reader.pinged = 0.0
                log.warning("change feed is back; waking every watched conversation")
                for subscription in list(self._subscriptions.values()):
                    self._on_change(subscription.conversation_id)
            if message is not None:
                self._dispatch(reader, message)
            if not reader.pubsub.subscribed:
                self._readers.pop(id(reader.pubsub), None)
                return

    def _dispatch(self, reader: _Reader, message: dict[str, Any]) -> None:
        kind = message["type"]
        kind = kind.decode() if isinstance(kind, bytes) else kind
        if kind == "pong":
            reader.ponged = time.monotonic()
            return
        subscription = self._subscriptions.get(message["channel"])
        if subscription is None:
            return
        if kind in ("subscribe", "ssubscribe"):
            if not subscription.confirmed.done():
                subscription.confirmed.set_result(None)
        elif kind in ("message", "smessage") and message["data"] != self._server_id:
            self._on_change(subscription.conversation_id)

    # -- upkeep -------------------------------------------------------------------

    async def _sweep(self) -> None:
        while not self._closed:
            await asyncio.sleep(LINGER / 2)
            cutoff = time.monotonic() - LINGER
            for key, subscription in list(self._subscriptions.items()):
                if subscription.idle_since is not None and subscription.idle_since < cutoff:
                    del self._subscriptions[key]
                    self._request(_Request(False, key, subscription.conversation_id))
            await self._check_connections()

    async def _check_connections(self) -> None:
        """Drop a subscriber connection that did not answer the last PING in time."""
        now = time.monotonic()
        for reader in list(self._readers.values()):
            if reader.failed or not reader.pubsub.subscribed:
                continue
            if reader.pinged > reader.ponged:
                if now - reader.pinged > self._socket_timeout:
                    log.warning("change feed: no answer to PING; reconnecting")
                    reader.pinged = 0.0
                    connection = reader.pubsub.connection
                    if connection is not None:
                        with contextlib.suppress(Exception):
                            await connection.disconnect(nowait=True)
                continue  # its answer is still due
            with contextlib.suppress(Exception):
                await reader.pubsub.ping()
                reader.pinged = now

    async def close(self) -> None:
        self._closed = True
        tasks = [r.task for r in self._readers.values() if r.task is not None] + self._tasks
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        with contextlib.suppress(Exception):
            await self._pubsub.aclose()
