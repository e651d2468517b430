"""RedisLockStore and ConcurrentRedisLockStore: ticket locks shared by every replica.

Each operation is one Lua script (``stores/lua/<family>/<operation>.lua``, with
the shared ``prelude.lua`` files in front), registered at start and called by
SHA: one round trip, atomic on Redis, reloaded by redis-py when the server
answers NOSCRIPT (a restart, or a failover to a replica that never saw it).
Expiry is decided inside the scripts by the Redis server's ``TIME``, and no
script scans: each touches only the keys of one conversation, which share a
hash slot (``redis_keys``).

The two stores differ only in their key layout and script family; this module
turns script replies into the model and Redis errors into the store errors.

No script takes effect after the server gave up on it: each call carries a
deadline in Redis's clock (the offset to it measured by every health probe), a
little before the call's own timeout, and a script that starts later (Redis was
paused, the command waited in a socket buffer) changes nothing. Without it, an
``issue`` that failed with UNAVAILABLE would leave a ticket nobody holds, and the
next session would wait out its whole lifetime.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import re
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError, RedisClusterException, RedisError, ResponseError
from ticketlock.model import Position, Ticket, TicketLock

from ticketlock_server.config import ConfigError, RedisConfig, StoreConfig, StoreLimits
from ticketlock_server.stores.base import (
    ChangeListener,
    Issued,
    LockStore,
    StoreDataError,
    StoreLimitExceeded,
    StoreUnavailable,
)
from ticketlock_server.stores.redis_connection import connect
from ticketlock_server.stores.redis_feed import ChangeFeed
from ticketlock_server.stores.redis_keys import RedisKeyLayout
from ticketlock_server.stores.redis_mux import Multiplexer

log = logging.getLogger(__name__)

# Redis down, failing over, refusing us, or answering an error that is none of the
# store's own: the call may be retried; the message says which.
UNAVAILABLE_ERRORS = (RedisError, RedisClusterException, OSError)
# Errors of Redis itself about a conversation's keys holding other data.
_DATA_ERRORS = ("WRONGTYPE", "value is not an integer", "not a valid float")

CLOSE_TIMEOUT = 2.0
# ZMSCORE and SET ... PXAT need Redis 6.2; SPUBLISH (cluster mode) needs 7.0.
MIN_VERSION = (6, 2)
MIN_CLUSTER_VERSION = (7, 0)

OPERATIONS = (
    "issue", "position", "finish", "cleanup", "refresh", "waiting", "get", "save", "delete",
)  # fmt: skip


def script_text(family: str, operation: str, limits: StoreLimits | None = None) -> str:
    """The full text of one script: limits, shared prelude, family prelude, operation."""
    limits = limits or StoreLimits()
    folder = resources.files("ticketlock_server.stores") / "lua"
    parts = [
        f"local NUMBER_RETENTION = {int(limits.number_retention_seconds)}\n"
        f"local MAX_TICKETS = {int(limits.max_tickets_per_conversation)}",
        (folder / "prelude.lua").read_text(encoding="utf-8"),
        (folder / family / "prelude.lua").read_text(encoding="utf-8"),
        (folder / family / f"{operation}.lua").read_text(encoding="utf-8"),
    ]
    return "\n".join(parts)


def version_error(versions: Sequence[str], sharded: bool) -> str | None:
    """Why Redis servers of these versions cannot hold the stores; None if they can."""
    minimum = MIN_CLUSTER_VERSION if sharded else MIN_VERSION
    for version in versions:
        parts = tuple(int(p) for p in re.findall(r"\d+", version)[:2])
        if parts < minimum:
            need = ".".join(map(str, minimum))
            why = "SPUBLISH in cluster mode" if sharded else "ZMSCORE and SET ... PXAT"
            return f"Redis {version} is too old: ticketlock needs Redis {need} or newer ({why})"
    return None


@dataclass(frozen=True, slots=True)
class _ClockOffset:
    """Redis's clock minus ours, and how far off that may be (half a round trip)."""

    offset: float
    error: float
    # When it was measured (monotonic), so that a stale sample gives way.
    taken: float


# A sample of the clock offset is replaced by a less exact one after this long.
CLOCK_SAMPLE_TTL = 60.0


class _RedisStore(LockStore):
    family = ""

    def __init__(self, config: RedisConfig, limits: StoreLimits | None = None) -> None:
        super().__init__()
        limits = limits or StoreLimits()
        self._config = config
        self.max_lifetime = limits.max_lifetime
        self._layout = RedisKeyLayout(config.key_prefix, config.concurrent)
        self._connection = connect(config)
        self._client = self._connection.client
        self.name = f"{type(self).__name__} ({self._connection.where})"
        self._server_id = uuid.uuid4().hex
        self._epochs = itertools.count()
        self._sharded = "1" if self._connection.sharded else "0"
        # A script must start this long before the call times out, so that its reply
        # is in before the server gives up.
        self._deadline_margin = min(1.0, config.socket_timeout / 4)
        self._clock: _ClockOffset | None = None
        self._scripts: dict[str, AsyncScript] = {
            operation: self._client.register_script(script_text(self.family, operation, limits))
            for operation in OPERATIONS
        }
        self._feed: ChangeFeed | None = None
        # Script calls share one pipelined connection, except in cluster mode,
        # where redis-py routes each to the node of its slot.
        self._mux = (
            Multiplexer(self._client.connection_pool, config.socket_timeout)
            if isinstance(self._client, Redis)
            else None
        )

    # -- plumbing -------------------------------------------------------------

    async def _run(
        self, operation: str, conversation_id: str, *args: str | float | int, epoch: str = ""
    ) -> Any:
        keys = self._layout.keys(conversation_id)
        try:
            deadline = await self._deadline()
            argv = (self._sharded, self._server_id, conversation_id, epoch, deadline, *args)
            return await self._eval(self._scripts[operation], keys, argv)
        except ResponseError as error:
            raise self._refusal(error, keys) from None
        except UNAVAILABLE_ERRORS as error:
            raise StoreUnavailable(self.name, _reason(error)) from None

    def _refusal(self, error: ResponseError, keys: list[str]) -> Exception:
        """The store error for an error reply of a script."""
        reason = _reason(error)
        word, _, rest = reason.partition(" ")
        if word == "BADLOCK":
            key, _, why = rest.partition(" ")
            return StoreDataError(key, why)
        if word in ("TOOMANY", "RANGE", "BADSAVE"):
            return StoreLimitExceeded(f"{self.name}: {rest if word != 'BADSAVE' else reason}")
        if any(marker in reason for marker in _DATA_ERRORS):
            # Redis's own error does not say which key: name the conversation's.
            return StoreDataError(", ".join(keys[:-1]), reason)
        return StoreUnavailable(self.name, reason)

    @contextlib.contextmanager
    def _decoding(self, operation: str, reply: object) -> Iterator[None]:
        """Turn a reply of a shape the script never returns into StoreUnavailable.

        Only a fault between the script and here can cause one (a reply handed to the
        wrong call, a client library's placeholder for a timed-out read): the call's
        outcome is unknown, as when the connection drops, and retrying is right.
        """
        try:
            yield
        except (TypeError, ValueError, IndexError, KeyError, AttributeError) as error:
            shown = repr(reply)
            shown = shown if len(shown) <= 80 else shown[:77] + "..."
            log.error(
                "store %s: unexpected reply to %s: %s (%s)", self.name, operation, shown, error
            )
            raise StoreUnavailable(self.name, f"unexpected reply to {operation}: {shown}") from None

    async def _deadline(self) -> str:
        """When the call's script must have started, in Redis's clock (see the module)."""
        if self._clock is None:
            await self._measure_clock()
        assert self._clock is not None
        timeout = self._config.socket_timeout - self._deadline_margin - self._clock.error
        # A busy loop can make the offset's error large: never refuse every call for it.
        timeout = max(timeout, self._config.socket_timeout / 2)
        return f"{time.time() + self._clock.offset + timeout:.6f}"

    async def _measure_clock(self) -> None:
        """The offset to Redis's clock, from ``TIME`` (before the first probe)."""
        before = time.time()
        seconds, micros = await self._client.time()
        self._clock_sample(before, seconds + micros / 1e6, time.time())

    def _clock_sample(self, before: float, redis_time: float, after: float) -> None:
        error = (after - before) / 2
        sample = _ClockOffset(redis_time - (before + error), error, time.monotonic())
        # A slow answer (a busy loop) says less than the sample it would replace,
        # unless that one is old (clocks drift, and get stepped).
        current = self._clock
        if (
            current is None
            or sample.error <= max(current.error * 2, 0.005)
            or sample.taken - current.taken > CLOCK_SAMPLE_TTL
        ):
            self._clock = sample

    def _new_epoch(self) -> str:
        """A candidate epoch, used only when a conversation's numbering starts afresh:
        unique without a system call per issue (this server's random id, a count)."""
        return f"{self._server_id[:16]}-{next(self._epochs)}"

    async def _eval(self, script: AsyncScript, keys: list[str], argv: tuple[Any, ...]) -> Any:
        if self._mux is None:
            return await script(keys, argv)
        command = ("EVALSHA", script.sha, len(keys), *keys, *argv)
        try:
            return await self._mux.execute(*command)
        except NoScriptError:
            # Redis restarted or failed over since the scripts were loaded.
            await self._client.script_load(script.script)
            return await self._mux.execute(*command)

    async def start(self, on_remote_change: ChangeListener) -> None:
        self._feed = ChangeFeed(
            self._connection, self._server_id, on_remote_change, self._config.socket_timeout
        )
        try:
            versions = list((await self._server_info()).values())
        except UNAVAILABLE_ERRORS as error:
            # Not fatal: the health check reports it and the scripts load on first use.
            log.warning("store %s is not reachable yet: %s", self.name, _reason(error))
            return
        problem = version_error([version for version, _ in versions], self._connection.sharded)
        if problem is not None:
            raise ConfigError(f"lock store {self.name}: {problem}")
        try:
            for script in self._scripts.values():
                await self._client.script_load(script.script)
        except UNAVAILABLE_ERRORS as error:
            log.warning("store %s is not reachable yet: %s", self.name, _reason(error))

    async def _server_info(self) -> dict[str, tuple[str, str]]:
        """``(redis_version, run_id)`` of every Redis server holding data, by node.

        Its ``server_time_usec`` also gives the offset to Redis's clock (of one node:
        a cluster's are kept in step by NTP like any other machines').
        """
        before = time.time()
        if isinstance(self._client, RedisCluster):
            replies = await self._client.info("server", target_nodes=RedisCluster.PRIMARIES)
            # One node's reply comes alone, several come by node name.
            infos = {"": replies} if "run_id" in replies else dict(replies)
        else:
            infos = {"": await self._client.info("server")}
        after = time.time()
        micros = next(iter(infos.values())).get("server_time_usec")
        if micros is not None:
            self._clock_sample(before, int(micros) / 1e6, after)
        return {
            node: (str(info.get("redis_version", "")), str(info.get("run_id", "")))
            for node, info in infos.items()
        }

    async def close(self) -> None:
        # Each step bounded: shutdown must finish even when a connection will not close.
        steps = [self._feed.close()] if self._feed is not None else []
        if self._mux is not None:
            steps.append(self._mux.close())
        steps.append(self._client.aclose())
        for step in steps:
            try:
                await asyncio.wait_for(step, CLOSE_TIMEOUT)
            except (asyncio.TimeoutError, *UNAVAILABLE_ERRORS) as error:
                log.warning("store %s did not close cleanly: %r", self.name, error)

    async def watch(self, conversation_id: str) -> None:
        if self._feed is not None:
            await self._feed.watch(conversation_id, self._layout.channel(conversation_id))

    def unwatch(self, conversation_id: str) -> None:
        if self._feed is not None:
            self._feed.unwatch(self._layout.channel(conversation_id))

    async def ping(self) -> object:
        """Each server's run id: a Redis that restarted (and may have lost its data)
        or a failover to another server changes it."""
        try:
            servers = await self._server_info()
        except UNAVAILABLE_ERRORS as error:
            raise StoreUnavailable(self.name, _reason(error)) from None
        problem = version_error([v for v, _ in servers.values()], self._connection.sharded)
        if problem is not None:
            raise StoreUnavailable(self.name, problem)
        return tuple(sorted(run_id for _, run_id in servers.values()))

    # -- the store interface ---------------------------------------------------

    async def issue_ticket(self, conversation_id: str, lifetime: float) -> Issued:
        reply = await self._run("issue", conversation_id, lifetime, epoch=self._new_epoch())
        with self._decoding("issue", reply):
            number, expires, now_serving, epoch = reply
            return Issued(Ticket(int(number), float(expires)), int(now_serving), epoch.decode())

    async def position(
        self,
        conversation_id: str,
        ticket_number: int,
        with_lock: bool = False,
        next_change: bool = True,
        epoch: str = "",
    ) -> Position | None:
        reply = await self._run(
            "position",
            conversation_id,
            ticket_number,
            "1" if with_lock else "0",
            "1" if next_change else "0",
            epoch=epoch,
        )
        if reply is None:
            return None
        with self._decoding("position", reply):
            now_serving, ahead, change, expires_in, lock = reply
            return Position(
                int(now_serving),
                int(ahead),
                float(change) if change else None,
                TicketLock.loads(lock) if lock else None,
                float(expires_in),
            )

    async def finish_serving(self, conversation_id: str, ticket_number: int) -> bool:
        return bool(await self._run("finish", conversation_id, ticket_number))

    async def cleanup(self, conversation_id: str, ticket_number: int, epoch: str = "") -> bool:
        return bool(await self._run("cleanup", conversation_id, ticket_number, epoch=epoch))

    async def refresh_ticket(
        self, conversation_id: str, ticket_number: int, lifetime: float, epoch: str = ""
    ) -> Ticket | None:
        reply = await self._run("refresh", conversation_id, ticket_number, lifetime, epoch=epoch)
        if reply is None:
            return None
        with self._decoding("refresh", reply):
            number, expires = reply
            return Ticket(int(number), float(expires))

    async def is_someone_waiting(self, conversation_id: str) -> bool:
        return bool(await self._run("waiting", conversation_id))

    async def get_lock(self, conversation_id: str) -> TicketLock | None:
        reply = await self._run("get", conversation_id)
        if reply is None:
            return None
        with self._decoding("get", reply):
            return TicketLock.loads(reply)

    async def save_lock(self, lock: TicketLock) -> None:
        flat: list[str] = []
        for ticket in lock.tickets:
            flat += [str(ticket.number), repr(float(ticket.expires))]
        await self._run("save", lock.conversation_id, *flat, epoch=self._new_epoch())

    async def delete_lock(self, conversation_id: str) -> bool:
        return bool(await self._run("delete", conversation_id))


class RedisLockStore(_RedisStore):
    """Rasa's layout: the whole lock as one JSON value at ``lock:<conversation_id>``."""

    family = "json"


class ConcurrentRedisLockStore(_RedisStore):
    """One key per ticket, with its own expiry, and a ``last_issued_ticket_number``."""

    family = "concurrent"


def create_redis_store(config: StoreConfig) -> LockStore:
    if config.redis is None:
        raise ConfigError("lock_store: Redis settings are missing")
    cls = ConcurrentRedisLockStore if config.redis.concurrent else RedisLockStore
    return cls(config.redis, config.limits)


def _reason(error: BaseException) -> str:
    text = str(error) or type(error).__name__
    # Redis error replies can be long (a script's traceback); the first line says it,
    # without where in which script (Redis 7 appends that).
    text = _SCRIPT_SUFFIX.sub("", text.splitlines()[0])
    return text[:300]


_SCRIPT_SUFFIX = re.compile(r"\s*script: [0-9a-f]+, on @user_script:\d+\.?$")


__all__: Sequence[str] = ["ConcurrentRedisLockStore", "RedisLockStore", "create_redis_store"]
