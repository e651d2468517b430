"""The Redis stores: round trips, cycle rate, cost against keyspace size, handoff across replicas.

For each store, ``redis`` (RedisLockStore, Rasa's JSON value) and ``concurrent_redis``
(ConcurrentRedisLockStore, one key per ticket), on a standalone ``redis-server`` that
this benchmark starts on a free loopback port (never the machine's own Redis), with
two ``ticketlock-server`` processes per store, A and B, on that Redis:

1. **Redis round trips per uncontended cycle.** ``CONFIG RESETSTAT``, then
   ``--count-cycles`` sequential cycles through server A, then ``INFO
   commandstats``; once for the ``Lock`` stream (``async with client.lock()``) and
   once for the unary protocol (IssueTicket, acquired at once, then Cleanup).
   Round trips are the top-level commands: the script calls (EVALSHA, EVAL,
   SCRIPT LOAD) and any other command a server sends outside a script (pub/sub,
   connection setup). Every other command in the stats ran inside the scripts
   (GET, SET, ZADD, TIME, PUBLISH, ...): the Lua work, reported separately. Not
   counted: the PINGs of the servers' health probes (about one a second each,
   background traffic, shown apart), the handshake of a new pooled connection
   (HELLO, SELECT: once per connection, shown apart) and this benchmark's own
   INFO and CONFIG.
   Rasa's stores make 7 and 9 commands per cycle, each a round trip.
2. **Cycles per second at ``--tasks`` concurrent tasks** (64) through server A,
   each cycle on a conversation id of its own (uncontended), interleaved round by
   round with three baselines of the same run: the no-op RPC rate (health ``Check``
   on the same server and channel); the same ``Lock`` stream cycle at the same
   concurrency on one more ticketlock server, on the in-memory store (what the
   cycle costs without Redis: the Redis store's share of it is the Redis round
   trips' cost, apart from gRPC's, and the ratio holds better than absolute
   rates on a machine whose neighbours' load comes and goes); and the raw
   redis-py asyncio PING rate at the same concurrency against the same
   redis-server (what the Redis connection alone can carry). Medians of
   ``--rounds`` rounds.
3. **Cost against keyspace size.** Median latency of sequential uncontended cycles
   through server A with ``--small-keyspace`` (1e3) and with ``--keyspace`` (1e6)
   other keys in Redis, as in Rasa's own figures (1e3 -> 1e6 other keys).
   Both keyspaces are written up front, the large one into the next database, and
   ``SWAPDB`` puts one or the other under the servers between blocks of cycles
   (small, large, large, small, ...), so that the two are timed side by side and
   not minutes apart on a machine whose load drifts. The keys are realistic locks
   of both layouts, alternating by conversation: RedisLockStore's ``lock:<id>``
   JSON value and its ticket counter (2 keys), ConcurrentRedisLockStore's queue
   and expiry sorted sets, counter and ticket key (4 keys), all with TTLs; written
   by a Lua loop on the server, so a million keys take seconds, and checked
   against ``ticketlock_server.stores.redis_keys`` so the layout cannot drift from
   the stores'. A store that scans (Rasa's ``KEYS``) grows with the keyspace;
   these must not (target: ratio ≤ 1.2).
4. **Handoff latency across replicas.** A holder on server A holds a fresh
   conversation's lock (``AsyncLockClient.lock()``); a waiter opens a ``Lock``
   stream on server B and is queued (its ``queued`` message, which the server
   sends after its pub/sub subscription is confirmed); the holder releases. The
   handoff is from just before the holder's release call to the moment the
   waiter reads ``acquired``: A's cleanup script publishes, B's subscriber hears
   it, B re-reads the waiter's position. Baseline in the same run, interleaved
   round by round: the same handoff with the waiter on server A too (in-process
   wake-up, no pub/sub).

Nothing here asserts a speed; targets are printed as met or MISSED.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import itertools
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import redis
import redis.asyncio as aioredis
from ticketlock import AsyncLockClient
from ticketlock.v1 import lock_service_pb2 as pb
from ticketlock.v1 import lock_service_pb2_grpc as pb_grpc
from ticketlock_server.config import DEFAULT_CONCURRENT_KEY_PREFIX, DEFAULT_REDIS_KEY_PREFIX
from ticketlock_server.stores.redis_keys import RedisKeyLayout

from bench.baseline import (
    SERVER_ARGS,
    Distribution,
    add_timeout,
    benchmark_main,
    channel_of,
    command_line,
    environment,
    latencies,
    measure_rate,
    median,
    ms,
    non_negative_float,
    per_second,
    positive_float,
    positive_int,
    run_bounded,
    table,
)
from bench.cycles import TARGET_RATIO, lock_cycle, noop_op, unary_cycle
from bench.redis_reaper import Reaper
from harness.redis_servers import RedisDeployment, redis_server_version, start_standalone
from harness.server import ServerProcess

STORES = ("redis", "concurrent_redis")
STORE_LABELS = {"redis": "RedisLockStore", "concurrent_redis": "ConcurrentRedisLockStore"}
CYCLES = ("lock", "unary")
CYCLE_LABELS = {"lock": "`Lock` stream cycle", "unary": "unary cycle (IssueTicket + Cleanup)"}
# Timed in this order in every round: the in-memory store's cycle just before the Redis one.
RATE_VARIANTS = ("noop", "memory_lock", "lock", "unary", "redis_ping")
RATE_LABELS = {
    "noop": "no-op Check (baseline)",
    "memory_lock": "in-memory store `Lock` cycle (baseline)",
    "lock": CYCLE_LABELS["lock"],
    "unary": CYCLE_LABELS["unary"],
    "redis_ping": "redis-py asyncio PING (baseline)",
}
SIZES = ("small", "large")
HANDOFFS = ("cross", "single")
HANDOFF_LABELS = {
    "cross": "holder on A, waiter on B (across replicas)",
    "single": "holder and waiter on A (baseline)",
}

TARGET_ROUND_TRIPS = 2.0
TARGET_KEYSPACE_RATIO = 1.2
TARGET_HANDOFF_P99 = 0.015
QUEUED_TIMEOUT = 10.0  # a waiter not queued by then means something is broken

# Rasa Pro 3.21's stores in process on these machines: context, not measured here.
RASA_COMMANDS = {"redis": 7, "concurrent_redis": 9}
RASA_RATE_64 = {"redis": 1506.0, "concurrent_redis": 1244.0}
RASA_KEYSPACE = {"redis": (0.00068, 0.00066), "concurrent_redis": (0.00081, 0.285)}

# INFO commandstats names. Script calls are the round trips of a store operation.
SCRIPT_CALLS = frozenset(
    {"evalsha", "eval", "evalsha_ro", "eval_ro", "fcall", "fcall_ro", "script|load"}
)
# Sent by a server outside any script: round trips too, though none belongs in a cycle.
TOP_LEVEL = frozenset(
    {
        "subscribe", "unsubscribe", "ssubscribe", "sunsubscribe", "psubscribe", "punsubscribe",
        "script|exists",
    }
)  # fmt: skip
# A new pooled connection's handshake: once per connection, not per cycle (the pool
# opens one when the health probe's PING finds the only connection busy).
SETUP = frozenset({"hello", "auth", "select", "client|setinfo", "client|setname"})
# The health probe of every server on this Redis (INFO server: version, run id,
# clock), and the feed's PING; INFO is also this benchmark's own read.
PROBES = frozenset({"ping", "info"})
OWN = frozenset({"config|resetstat"})  # this benchmark's own reads

# Fills ARGV[1]..ARGV[2] (conversation numbers) with locks of both layouts, the
# exact key names and values the stores write (checked by ``check_fill_layout``).
# Even numbers: RedisLockStore (lock JSON + numbering hash); odd:
# ConcurrentRedisLockStore (ticket key, queue, expiries, counter, and the numbering
# epoch when ARGV[4] is set: layouts that have one). One ticket each, expiring in
# ARGV[3] s; the numbering kept 24 h, as the stores keep it.
FILL_SCRIPT = r"""
local first, last = tonumber(ARGV[1]), tonumber(ARGV[2])
local t = redis.call('TIME')
local expires = tonumber(t[1]) + tonumber(t[2]) / 1000000 + tonumber(ARGV[3])
local e = string.format('%.17g', expires)
local at = string.format('%d', math.ceil(expires * 1000))
for i = first, last do
  local cid = 'fill-' .. i
  if i % 2 == 0 then
    redis.call('SET', 'lock:' .. cid, '{"conversation_id": "' .. cid ..
      '", "tickets": ["{\\"number\\": 0, \\"expires\\": ' .. e .. '}"]}', 'PXAT', at)
    local numbering = 'ticketlock:next:{lock:' .. cid .. '}'
    redis.call('HSET', numbering, 'next', '1', 'epoch', 'fill')
    redis.call('EXPIRE', numbering, 86400)
  else
    local tagged = 'concurrent_lock:{' .. cid .. '}:'
    redis.call('SET', tagged .. '1', '{"number": 1, "expires": ' .. e .. '}', 'PXAT', at)
    redis.call('ZADD', tagged .. 'queue', 1, '1')
    redis.call('PEXPIREAT', tagged .. 'queue', at)
    redis.call('ZADD', tagged .. 'expiries', e, '1', '+inf', 'lock')
    redis.call('PEXPIREAT', tagged .. 'expiries', at)
    redis.call('SET', tagged .. 'last_issued_ticket_number', '1', 'EX', 86400)
    if ARGV[4] ~= '' then
      redis.call('SET', tagged .. 'epoch', 'fill', 'EX', 86400)
    end
  end
end
return last - first + 1
"""
FILL_BATCH = 5000  # conversations per script call: ~0.1 s of Redis time, not seconds
FILL_LIFETIME = 3600  # seconds: nothing expires during the run
KEYSPACE_IDS = "rs-keys"  # how the conversation ids of the keyspace cycles begin

# grpc.aio's end-of-stream marker (missing from the type stubs).
_EOF: Any = grpc.aio.EOF  # type: ignore[attr-defined]
_RELEASE = pb.LockRequest(release=pb.Release())


# -- results -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Commands:
    """INFO commandstats calls over ``cycles`` sequential cycles (``seconds`` long)."""

    cycles: int
    seconds: float
    calls: dict[str, int]

    def _per_cycle(self, keep: Callable[[str], bool]) -> dict[str, float]:
        return {n: c / self.cycles for n, c in sorted(self.calls.items()) if keep(n)}

    @property
    def round_trips(self) -> dict[str, float]:
        return self._per_cycle(lambda n: n in SCRIPT_CALLS or n in TOP_LEVEL)

    @property
    def inside_scripts(self) -> dict[str, float]:
        outside = SCRIPT_CALLS | TOP_LEVEL | SETUP | PROBES | OWN
        return self._per_cycle(lambda n: n not in outside)

    @property
    def connections(self) -> int:
        """New connections during the count (their handshakes are not cycle round trips)."""
        return max((c for n, c in self.calls.items() if n in SETUP), default=0)

    @property
    def probes(self) -> int:
        return sum(c for n, c in self.calls.items() if n in PROBES)


@dataclass(slots=True)
class StoreResult:
    commands: dict[str, Commands] = field(default_factory=dict)  # cycle -> counts
    rates: dict[str, list[float]] = field(
        default_factory=lambda: {v: [] for v in RATE_VARIANTS}
    )  # variant -> rate per round
    keyspace: dict[str, dict[str, list[float]]] = field(
        default_factory=lambda: {size: {c: [] for c in CYCLES} for size in SIZES}
    )  # keyspace size -> cycle -> latencies
    # keyspace size -> [microseconds, calls] of the script calls, as Redis timed them
    script_time: dict[str, list[int]] = field(default_factory=lambda: {s: [0, 0] for s in SIZES})
    handoffs: dict[str, list[float]] = field(default_factory=lambda: {h: [] for h in HANDOFFS})
    handoff_errors: list[str] = field(default_factory=list)

    def rate(self, variant: str) -> float:
        return median(self.rates[variant])

    def latency(self, size: str, cycle: str) -> Distribution:
        return Distribution.of(self.keyspace[size][cycle])

    def keyspace_ratio(self, cycle: str) -> float:
        return self.latency("large", cycle).p50 / self.latency("small", cycle).p50

    def script_usec(self, size: str) -> float:
        """Mean time Redis spent in one script call of the keyspace cycles, microseconds."""
        usec, calls = self.script_time[size]
        return usec / calls if calls else 0.0

    def handoff(self, where: str) -> Distribution:
        return Distribution.of(self.handoffs[where])


@dataclass(frozen=True, slots=True)
class RedisStoresResult:
    stores: dict[str, StoreResult]
    redis_version: str
    servers: int
    keys: dict[str, tuple[int, int]]  # keyspace size -> (fewest, most) keys while timed
    fill_seconds: float  # writing the large keyspace
    tasks: int
    seconds: float
    command: str

    @property
    def correct(self) -> bool:
        return not any(s.handoff_errors for s in self.stores.values())


# -- Redis side ----------------------------------------------------------------


def command_stats(admin: redis.Redis, figure: str = "calls") -> dict[str, int]:
    """INFO commandstats as ``{"evalsha": calls, ...}`` (or another figure: ``usec``)."""
    info = admin.info("commandstats")
    return {
        name.removeprefix("cmdstat_"): int(stats[figure])
        for name, stats in info.items()
        if name.startswith("cmdstat_")
    }


def dbsize(admin: redis.Redis) -> int:
    return int(admin.dbsize())


def layout_keys(conversation_id: str, concurrent: bool) -> list[str]:
    """The keys of a conversation holding one ticket, by the stores' own layout.

    Every key of ``RedisKeyLayout`` but the change channel (not a key), with the
    ticket key prefix as ticket 1's key.
    """
    prefix = DEFAULT_CONCURRENT_KEY_PREFIX if concurrent else DEFAULT_REDIS_KEY_PREFIX
    names = RedisKeyLayout(prefix, concurrent).keys(conversation_id)[:-1]
    return [f"{name}1" if name.endswith("}:") else name for name in names]


def conversations_for(keys: int) -> int:
    """How many fill conversations (alternating layouts) make at least ``keys`` keys."""
    json_keys = len(layout_keys("fill-0", concurrent=False))
    pair = json_keys + len(layout_keys("fill-1", concurrent=True))
    pairs, rest = divmod(keys, pair)
    # At least one of each layout, so that ``check_fill_layout`` can check both.
    return max(2, 2 * pairs + (0 if rest == 0 else 1 if rest <= json_keys else 2))


def fill(admin: redis.Redis, keys: int) -> None:
    """Write at least ``keys`` keys of fill conversations (see ``FILL_SCRIPT``)."""
    script = admin.register_script(FILL_SCRIPT)
    last = conversations_for(keys)
    epoch = any(k.endswith(":epoch") for k in layout_keys("fill-1", concurrent=True))
    for start in range(0, last, FILL_BATCH):
        end = min(start + FILL_BATCH, last) - 1
        script(args=[start, end, FILL_LIFETIME, "1" if epoch else ""])
    check_fill_layout(admin)


class Keyspaces:
    """A small and a large keyspace, swapped into the servers' database in an instant.

    The large one waits in the next database; ``SWAPDB`` exchanges the two for
    every connected client at once, so the two sizes can be timed in alternating
    blocks, on the same servers, rather than minutes apart on a shared machine
    whose load drifts.
    """

    def __init__(self, admin: redis.Redis, db: int) -> None:
        self.admin = admin
        self._db = db
        self._spare = db + 1
        self._current = "small"

    def fill(self, small: int, large: int) -> float:
        """Fill both; the seconds the large fill took."""
        self.admin.flushdb()
        started = time.perf_counter()
        fill(self.admin, large)
        seconds = time.perf_counter() - started
        self.admin.swapdb(self._db, self._spare)
        self.admin.flushdb()  # whatever the spare database held
        fill(self.admin, small)
        self._current = "small"
        return seconds

    def use(self, size: str) -> int:
        """Put keyspace ``size`` in the servers' database; how many keys it holds."""
        if size != self._current:
            self.admin.swapdb(self._db, self._spare)
            self._current = size
        return self.count()

    def count(self) -> int:
        return dbsize(self.admin)

    def tidy(self) -> None:
        """Drop the ticket counters that timed cycles left in the small keyspace.

        The stores keep a conversation's counter for 24 h after its last ticket
        (the README's Redis stores); a block's hundreds of them would otherwise be a
        good share of a 1,000-key keyspace by the next block. (A SCAN by the benchmark, between
        blocks, over the small keyspace only.)
        """
        if self._current == "small":
            stale = list(self.admin.scan_iter(match=f"*{KEYSPACE_IDS}-*", count=1000))
            for start in range(0, len(stale), 1000):
                self.admin.delete(*stale[start : start + 1000])


def check_fill_layout(admin: redis.Redis) -> None:
    """The fill wrote every key of the stores' own layout (``redis_keys``), by name.

    Fails loudly when the layout gains or renames a key, rather than timing a
    keyspace that no longer looks like the stores'.
    """
    expected = [*layout_keys("fill-0", concurrent=False), *layout_keys("fill-1", concurrent=True)]
    missing = [key for key in expected if not admin.exists(key)]
    if missing:
        raise RuntimeError(
            f"bench.redis_stores FILL_SCRIPT does not write these keys of the stores' "
            f"layout (ticketlock_server.stores.redis_keys): {missing}"
        )


# -- servers ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Deployment:
    redis_server: RedisDeployment
    admin: redis.Redis
    servers: dict[str, tuple[ServerProcess, ServerProcess]]  # store -> (A, B)
    in_memory: ServerProcess  # the rates' in-memory store baseline


@contextlib.contextmanager
def deployment(stores: Sequence[str], directory: Path) -> Iterator[Deployment]:
    """A fresh redis-server, servers A and B per store on it, one on the in-memory store.

    All stopped afterwards, or by the ``Reaper`` should the benchmark be killed.
    """
    with contextlib.ExitStack() as stack:
        reaper = stack.enter_context(Reaper(directory))

        def spawn(*args: str) -> ServerProcess:
            # Not waited for here: the servers start in parallel, waited for below.
            process = ServerProcess([*SERVER_ARGS, *args])
            stack.callback(process.__exit__, None, None, None)
            reaper.watch(process.process.pid)
            return process

        redis_deployment = start_standalone(directory)
        stack.callback(redis_deployment.stop)
        for redis_process in redis_deployment.processes:
            reaper.watch(redis_process.pid)
        admin = redis_deployment.processes[0].client(db=redis_deployment.db, socket_timeout=30.0)
        stack.callback(admin.close)
        servers: dict[str, tuple[ServerProcess, ServerProcess]] = {}
        for store in stores:
            endpoints = redis_deployment.write_endpoints(directory / f"{store}.yml", store)
            servers[store] = (
                spawn("--endpoints", str(endpoints)),
                spawn("--endpoints", str(endpoints)),
            )
        in_memory = spawn()  # no --endpoints: the in-memory store
        for process in [*itertools.chain.from_iterable(servers.values()), in_memory]:
            process.wait_serving()
        yield Deployment(redis_deployment, admin, servers, in_memory)


# -- measurements ------------------------------------------------------------------


def cycle_ops(client: AsyncLockClient, prefix: str) -> dict[str, Callable[[int], Awaitable[None]]]:
    """Both cycles of ``bench.cycles``, on ids ``<prefix>-<cycle>-<n>`` (never reused)."""
    return {
        "lock": lock_cycle(client, f"{prefix}-lock"),
        "unary": unary_cycle(client, f"{prefix}-unary"),
    }


def sequential(op: Callable[[int], Awaitable[None]]) -> Callable[[], Awaitable[None]]:
    """``op`` with a fresh sequence number on every call, for ``latencies``."""
    numbers = itertools.count()
    return lambda: op(next(numbers))


async def count_commands(
    admin: redis.Redis, client: AsyncLockClient, store: str, cycles: int
) -> dict[str, Commands]:
    counts: dict[str, Commands] = {}
    # Warm: connections in the server's pool open, scripts cached by SHA.
    for op in cycle_ops(client, f"rs-warm-count-{store}").values():
        await latencies(sequential(op), 5)
    for cycle, op in cycle_ops(client, f"rs-count-{store}").items():
        admin.config_resetstat()
        started = time.perf_counter()
        await latencies(sequential(op), cycles)
        seconds = time.perf_counter() - started
        counts[cycle] = Commands(cycles, seconds, command_stats(admin))
    return counts


async def measure_rates(
    result: StoreResult,
    client: AsyncLockClient,
    in_memory_client: AsyncLockClient,
    redis_client: aioredis.Redis,
    store: str,
    args: argparse.Namespace,
) -> None:
    """Each of ``RATE_VARIANTS`` once per round, in that order; medians are taken later.

    Through ``client`` (server A of ``store``), but ``memory_lock`` through the
    in-memory store's server and ``redis_ping`` straight to Redis.
    """

    async def redis_ping(_: int) -> None:
        await redis_client.ping()

    def ops(prefix: str) -> dict[str, Callable[[int], Awaitable[None]]]:
        return {
            "noop": noop_op(client),
            "memory_lock": lock_cycle(in_memory_client, f"{prefix}-memory-lock"),
            **cycle_ops(client, prefix),
            "redis_ping": redis_ping,
        }

    for op in ops(f"rs-warm-rate-{store}").values():
        await measure_rate(op, args.tasks, 0.2)  # connections up to --tasks, code paths
    for index in range(args.rounds):
        round_ops = ops(f"rs-rate-{store}-r{index}")
        for variant in RATE_VARIANTS:
            rate = await measure_rate(round_ops[variant], args.tasks, args.duration, args.warmup)
            result.rates[variant].append(rate.per_second)


async def measure_keyspaces(
    results: dict[str, StoreResult],
    clients: dict[str, AsyncLockClient],
    keyspaces: Keyspaces,
    args: argparse.Namespace,
) -> dict[str, tuple[int, int]]:
    """Sequential cycle latency, blocks alternating small, large, large, small, ...

    Returns the fewest and most keys in each keyspace while timed.
    """
    for store, client in clients.items():
        for op in cycle_ops(client, f"{KEYSPACE_IDS}-warm-{store}").values():
            await latencies(sequential(op), args.latency_warmup)
    keyspaces.tidy()
    keys: dict[str, list[int]] = {size: [] for size in SIZES}
    per_block = -(-args.latency_cycles // args.keyspace_rounds)
    for index in range(args.keyspace_rounds):
        for size in SIZES if index % 2 == 0 else SIZES[::-1]:
            keys[size].append(keyspaces.use(size))
            for store, client in clients.items():
                keyspaces.admin.config_resetstat()
                prefix = f"{KEYSPACE_IDS}-{store}-{size}-r{index}"
                for cycle, op in cycle_ops(client, prefix).items():
                    samples = await latencies(sequential(op), per_block)
                    results[store].keyspace[size][cycle].extend(samples)
                # Redis's own timing of the scripts, apart from the client and servers.
                usec = command_stats(keyspaces.admin, "usec")
                calls = command_stats(keyspaces.admin)
                totals = results[store].script_time[size]
                totals[0] += sum(usec.get(name, 0) for name in SCRIPT_CALLS)
                totals[1] += sum(calls.get(name, 0) for name in SCRIPT_CALLS)
            keys[size].append(keyspaces.count())
            keyspaces.tidy()
    return {size: (min(k), max(k)) for size, k in keys.items()}


async def _waiter(
    stub: pb_grpc.LockServiceStub, cid: str, queued: asyncio.Future[bool]
) -> tuple[int, float]:
    """A ``Lock`` stream that queues: sets ``queued`` (False if it acquired at once).

    Returns its ticket number and when it read ``acquired``; then releases.
    """
    call = stub.Lock()
    try:
        await call.write(pb.LockRequest(acquire=pb.Acquire(conversation_id=cid)))
        while True:
            message = await call.read()
            if message is _EOF:
                raise RuntimeError(f"the waiter's Lock stream on {cid!r} ended early")
            event = message.WhichOneof("event")
            if event == "queued" and not queued.done():
                queued.set_result(True)
            elif event == "acquired":
                acquired_at = time.perf_counter()
                if not queued.done():
                    queued.set_result(False)
                break
        await call.write(_RELEASE)
        await call.read()
        return int(message.acquired.ticket.number), acquired_at
    finally:
        call.cancel()  # a no-op after the release; frees the ticket otherwise


async def handoff_round(
    holder: AsyncLockClient, waiter_channel: grpc.aio.Channel, cid: str
) -> tuple[float, str | None]:
    """One handoff: seconds from the holder's release to the waiter's ``acquired``."""
    queued: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
    async with holder.lock(cid) as held:
        waiter = asyncio.ensure_future(
            _waiter(pb_grpc.LockServiceStub(waiter_channel), cid, queued)
        )
        try:
            either: list[asyncio.Future[Any]] = [queued, waiter]
            await asyncio.wait(either, timeout=QUEUED_TIMEOUT, return_when=asyncio.FIRST_COMPLETED)
            if not queued.done():
                if waiter.done():
                    waiter.result()  # raises why the waiter ended
                raise RuntimeError(f"{cid}: waiter not queued within {QUEUED_TIMEOUT} s")
        except BaseException:
            waiter.cancel()
            raise
        released_at = time.perf_counter()
    was_queued = queued.result()
    number, acquired_at = await waiter
    error = None
    if not was_queued or acquired_at < released_at:
        error = f"{cid}: the waiter acquired while the holder held the lock"
    elif number <= held.fencing_token:
        error = f"{cid}: waiter's ticket {number} not after the holder's {held.fencing_token}"
    return acquired_at - released_at, error


async def measure_handoffs(
    result: StoreResult, a: AsyncLockClient, b: AsyncLockClient, store: str, rounds: int
) -> None:
    channels = {"cross": channel_of(b), "single": channel_of(a)}
    for index in range(-3, rounds):  # three untimed rounds first: warm both paths
        for where, channel in channels.items():
            seconds, error = await handoff_round(a, channel, f"rs-handoff-{store}-{where}-{index}")
            if error is not None:
                result.handoff_errors.append(error)
            elif index >= 0:
                result.handoffs[where].append(seconds)


async def measure(dep: Deployment, args: argparse.Namespace) -> RedisStoresResult:
    results = {store: StoreResult() for store in args.stores}
    clients: dict[str, tuple[AsyncLockClient, AsyncLockClient]] = {}
    in_memory_client = AsyncLockClient(dep.in_memory.target)
    redis_client = aioredis.Redis(
        host=dep.redis_server.host,
        port=dep.redis_server.port,
        db=dep.redis_server.db,
        socket_timeout=10.0,
    )
    try:
        for store, (a, b) in dep.servers.items():
            clients[store] = (AsyncLockClient(a.target), AsyncLockClient(b.target))
        # Phase by phase, both stores in each: pub/sub left over from the handoffs
        # (subscriptions linger) cannot fall into another store's command count.
        for store, (a_client, _) in clients.items():
            results[store].commands = await count_commands(
                dep.admin, a_client, store, args.count_cycles
            )
        for store, (a_client, _) in clients.items():
            await measure_rates(
                results[store], a_client, in_memory_client, redis_client, store, args
            )
        for store, (a_client, b_client) in clients.items():
            await measure_handoffs(results[store], a_client, b_client, store, args.handoff_rounds)
        keyspaces = Keyspaces(dep.admin, dep.redis_server.db)
        fill_seconds = keyspaces.fill(args.small_keyspace, args.keyspace)
        a_clients = {store: a for store, (a, _) in clients.items()}
        keys = await measure_keyspaces(results, a_clients, keyspaces, args)
    finally:
        for a_client, b_client in clients.values():
            await a_client.close()
            await b_client.close()
        await in_memory_client.close()
        await redis_client.aclose()
    major, minor, patch = redis_server_version()
    return RedisStoresResult(
        stores=results,
        redis_version=f"{major}.{minor}.{patch}",
        servers=2 * len(dep.servers),  # on Redis; plus the in-memory store's
        keys=keys,
        fill_seconds=fill_seconds,
        tasks=args.tasks,
        seconds=0.0,  # set by run()
        command=command_line("bench.redis_stores", parser(), args),
    )


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench.redis_stores",
        description="Redis stores: round trips per cycle, cycles/s, keyspace cost, handoff "
        "across replicas, on a redis-server started for the run.",
    )
    p.add_argument("--stores", nargs="+", choices=STORES, default=list(STORES))
    p.add_argument(
        "--count-cycles", type=positive_int, default=200, help="cycles for counting commands"
    )
    p.add_argument("--tasks", type=positive_int, default=64, help="concurrent tasks for rates")
    p.add_argument("--rounds", type=positive_int, default=5, help="interleaved rate rounds")
    p.add_argument("--duration", type=positive_float, default=0.8, help="seconds per rate run")
    p.add_argument(
        "--warmup", type=non_negative_float, default=0.2, help="untimed seconds before each"
    )
    p.add_argument(
        "--latency-cycles", type=positive_int, default=300, help="sequential cycles timed"
    )
    p.add_argument(
        "--latency-warmup", type=positive_int, default=50, help="untimed cycles before them"
    )
    p.add_argument(
        "--small-keyspace", type=positive_int, default=1000, help="other keys, first figure"
    )
    p.add_argument(
        "--keyspace", type=positive_int, default=1_000_000, help="other keys, second figure"
    )
    p.add_argument(
        "--keyspace-rounds", type=positive_int, default=6, help="blocks of each keyspace size"
    )
    p.add_argument(
        "--handoff-rounds", type=positive_int, default=200, help="handoffs per placement"
    )
    add_timeout(p)
    return p


def run(args: argparse.Namespace) -> RedisStoresResult:
    started = time.monotonic()
    with (
        tempfile.TemporaryDirectory(prefix="bench-redis-") as directory,
        deployment(args.stores, Path(directory)) as dep,
    ):
        result = run_bounded("redis_stores", args.timeout, measure(dep, args))
    # Wall time including the start and stop of every server, as a user would wait.
    return dataclasses.replace(result, seconds=time.monotonic() - started)


# -- reporting -------------------------------------------------------------------


def _num(value: float) -> str:
    return f"{value:,.2f}".rstrip("0").rstrip(".")


def _breakdown(per_cycle: dict[str, float]) -> str:
    return ", ".join(f"{name.upper()} {_num(n)}" for name, n in per_cycle.items()) or "none"


def _met(ok: bool) -> str:
    return "met" if ok else "MISSED"


def _keys(span: tuple[int, int]) -> str:
    """A keyspace size while timed: it grows by the counters the timed cycles leave."""
    fewest, most = span
    return f"{fewest:,}" if fewest == most else f"{fewest:,}-{most:,}"


def summary_rows(result: RedisStoresResult) -> list[list[str]]:
    """Rows for the combined table: figure, measured, baseline (same run), target."""
    rows: list[list[str]] = []
    for store, s in result.stores.items():
        label = STORE_LABELS[store]
        for cycle in CYCLES:
            c = s.commands[cycle]
            trips = sum(c.round_trips.values())
            rows.append(
                [
                    f"{label}: Redis round trips per {CYCLE_LABELS[cycle]}",
                    f"{_num(trips)} ({_breakdown(c.round_trips)}); "
                    f"{_num(sum(c.inside_scripts.values()))} commands inside the scripts",
                    "",
                    f"≤ {TARGET_ROUND_TRIPS:g} (Rasa: {RASA_COMMANDS[store]}): "
                    f"{_met(trips <= TARGET_ROUND_TRIPS)}",
                ]
            )
        noop, in_memory = s.rate("noop"), s.rate("memory_lock")
        baselines = (
            f"no-op Check {per_second(noop)}; in-memory store Lock cycle {per_second(in_memory)}; "
            f"redis-py PING {per_second(s.rate('redis_ping'))}"
        )
        for cycle in CYCLES:
            rate = s.rate(cycle)
            shares = f"{rate / noop:.0%} of no-op"
            target = ""
            if cycle == "lock":
                # The same cycle on the in-memory store: what Redis adds, apart from gRPC.
                shares += f", {rate / in_memory:.0%} of in-memory"
                target = (
                    f"≥ {TARGET_RATIO:.0%} of no-op (Rasa in process: "
                    f"{per_second(RASA_RATE_64[store])}): {_met(rate / noop >= TARGET_RATIO)}"
                )
            rows.append(
                [
                    f"{label}: {CYCLE_LABELS[cycle]}, cycles/s at {result.tasks} tasks "
                    "(distinct ids)",
                    f"{per_second(rate)} ({shares})",
                    baselines,
                    target,
                ]
            )
        for cycle in CYCLES:
            ratio = s.keyspace_ratio(cycle)
            rasa_small, rasa_large = RASA_KEYSPACE[store]
            small, large = s.latency("small", cycle), s.latency("large", cycle)
            rows.append(
                [
                    f"{label}: {CYCLE_LABELS[cycle]} median, {_keys(result.keys['small'])} -> "
                    f"{_keys(result.keys['large'])} keys in Redis",
                    f"{ms(small.p50)} -> {ms(large.p50)} (ratio {ratio:.2f})",
                    "",
                    f"ratio ≤ {TARGET_KEYSPACE_RATIO:g} (Rasa: {ms(rasa_small)} -> "
                    f"{ms(rasa_large)}): {_met(ratio <= TARGET_KEYSPACE_RATIO)}",
                ]
            )
        small_usec, large_usec = s.script_usec("small"), s.script_usec("large")
        rows.append(
            [
                f"{label}: Redis time per script call (INFO commandstats), same blocks",
                f"{small_usec:,.1f} µs -> {large_usec:,.1f} µs "
                f"(ratio {large_usec / small_usec if small_usec else 0:.2f})",
                "",
                "context: Redis's side of the cycles above",
            ]
        )
        cross, single = s.handoff("cross"), s.handoff("single")
        rows.append(
            [
                f"{label}: handoff across replicas (A -> B), p50 / p99",
                f"{ms(cross.p50)} / {ms(cross.p99)}",
                f"one replica {ms(single.p50)} / {ms(single.p99)}",
                f"p99 ≤ {ms(TARGET_HANDOFF_P99)}: {_met(cross.p99 <= TARGET_HANDOFF_P99)}"
                + (f"; {len(s.handoff_errors)} ERRORS" if s.handoff_errors else ""),
            ]
        )
    return rows


def _environment(result: RedisStoresResult) -> str:
    return environment(
        f"Redis stores on redis-server {result.redis_version} (standalone, loopback, "
        f"no persistence, started for this run; redis-py {redis.__version__}), "
        f"{result.servers} ticketlock servers on it and one on the in-memory store (the "
        "rates' baseline)"
    )


def report(result: RedisStoresResult) -> str:
    command_rows = []
    for store, s in result.stores.items():
        for cycle in CYCLES:
            c = s.commands[cycle]
            command_rows.append(
                [
                    STORE_LABELS[store],
                    CYCLE_LABELS[cycle],
                    _num(sum(c.round_trips.values())),
                    _breakdown(c.round_trips),
                    _num(sum(c.inside_scripts.values())),
                    _breakdown(c.inside_scripts),
                    f"probes: {c.probes}, new connections: {c.connections} (in {c.seconds:.2f} s)",
                    str(RASA_COMMANDS[store]),
                ]
            )
    rate_rows = []
    for store, s in result.stores.items():
        noop, in_memory = s.rate("noop"), s.rate("memory_lock")
        for variant in RATE_VARIANTS:
            rate = s.rate(variant)
            rate_rows.append(
                [
                    STORE_LABELS[store],
                    RATE_LABELS[variant],
                    per_second(rate),
                    f"{rate / noop:.0%}",
                    f"{rate / in_memory:.0%}" if variant == "lock" else "",
                    ", ".join(f"{r:,.0f}" for r in s.rates[variant]),
                ]
            )
    keyspace_rows = []
    for store, s in result.stores.items():
        for cycle in CYCLES:
            for size in SIZES:
                d = s.latency(size, cycle)
                keyspace_rows.append(
                    [
                        STORE_LABELS[store],
                        CYCLE_LABELS[cycle],
                        _keys(result.keys[size]),
                        ms(d.p50),
                        ms(d.p90),
                        ms(d.p99),
                        str(d.count),
                        f"{s.script_usec(size):,.1f} µs",
                    ]
                )
    handoff_rows = []
    for store, s in result.stores.items():
        for where in HANDOFFS:
            d = s.handoff(where)
            handoff_rows.append(
                [
                    STORE_LABELS[store],
                    HANDOFF_LABELS[where],
                    ms(d.p50),
                    ms(d.p90),
                    ms(d.p99),
                    ms(d.maximum),
                    str(d.count),
                ]
            )
    errors = [e for s in result.stores.values() for e in s.handoff_errors]
    first = next(iter(result.stores.values()))
    count_cycles = first.commands["lock"].cycles
    return "\n".join(
        [
            "## Redis stores: round trips, cycle rate, keyspace cost, handoff across replicas",
            "",
            table(["figure", "measured", "baseline (same run)", "target"], summary_rows(result)),
            "",
            f"### Redis commands per uncontended cycle (INFO commandstats, {count_cycles} "
            "sequential cycles through server A)",
            "",
            "Round trips are the top-level commands (script calls, and any command sent "
            "outside a script); the other commands ran inside the scripts. The health "
            f"probes' PINGs of all {result.servers} servers are background, and the handshake "
            "of a new pooled connection (HELLO, SELECT) happens once per connection: neither "
            "is counted.",
            "",
            table(
                [
                    "store",
                    "cycle",
                    "round trips",
                    "which",
                    "inside scripts",
                    "which",
                    "not counted: health probes, connection handshakes",
                    "Rasa's commands",
                ],
                command_rows,
            ),
            "",
            f"### Cycles per second, {result.tasks} concurrent tasks, one conversation id per "
            "cycle (uncontended), interleaved rounds",
            "",
            table(
                [
                    "store",
                    "operation",
                    "median rate",
                    "of no-op",
                    "of in-memory `Lock` cycle",
                    "rounds",
                ],
                rate_rows,
            ),
            "",
            "### Sequential uncontended cycle latency against the number of keys in Redis",
            "",
            "Both keyspaces live on the one redis-server and are swapped into the servers' "
            "database by SWAPDB between blocks of cycles (small, large, large, small, ...). "
            "The other keys are locks of both stores' layouts with TTLs, alternating by "
            f"conversation; the large keyspace took {result.fill_seconds:.1f} s to write.",
            "",
            table(
                [
                    "store",
                    "cycle",
                    "keys in Redis",
                    "p50",
                    "p90",
                    "p99",
                    "cycles",
                    "Redis time per script call (both cycles)",
                ],
                keyspace_rows,
            ),
            "",
            "### Handoff: holder's release call -> waiter reads `acquired` (`Lock` streams)",
            "",
            table(["store", "placement", "p50", "p90", "p99", "max", "handoffs"], handoff_rows),
            "",
            *(f"ERROR: {e}" for e in errors[:10]),
            f"total time: {result.seconds:,.0f} s",
            _environment(result),
            f"reproduce: {result.command}",
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    return benchmark_main(argv, parser, run, report, lambda result: result.correct)


if __name__ == "__main__":
    sys.exit(main())
