"""Three ticketlock replicas on one Redis behave as one FIFO lock per conversation.

Real server processes on real ports, on a standalone Redis and on a 3-master Redis
Cluster, for both Redis stores. Clients issue a ticket on one replica, wait for their
turn on another and clean up on a third, and mix in the session-bound ``Lock`` stream.
Inside the critical section they do a deliberately non-atomic read-modify-write of a
shared counter and an in-use flag, so that two holders at once show up as an overlap
and as a lost update. The checker itself is shown to fail on broken locks first.

The tests assert behaviour only, never speed; every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import pytest
from ticketlock import AsyncLockClient, LockError

from harness.redis_servers import RedisDeployment
from harness.server import ServerProcess, start_servers, stop_servers

REPLICAS = 3
CONVERSATIONS = 6
CLIENTS_PER_CONVERSATION = 4
CYCLES = 10
LIFETIME = 30.0  # long enough that no ticket expires during a test: only releases move queues
MAX_HOLD = 0.003  # seconds a critical section sleeps between its read and its write
RPC_TIMEOUT = 10.0
RUN_TIMEOUT = 60.0

# (store type, deployment mode)
KINDS = [
    ("redis", "standalone"),
    ("concurrent_redis", "standalone"),
    ("redis", "cluster"),
    ("concurrent_redis", "cluster"),
]
DEPLOYMENT_FIXTURES = {"standalone": "redis_standalone", "cluster": "redis_cluster"}


def unique_cid(tag: str) -> str:
    return f"replicas-{tag}-{uuid.uuid4().hex}"


# --------------------------------------------------------------------------- the checker


@dataclass
class Ledger:
    """What the critical sections saw, per conversation, and what must hold of it."""

    counters: defaultdict[str, int] = field(default_factory=lambda: defaultdict(int))
    holder: dict[str, int | None] = field(default_factory=dict)
    acquisitions: defaultdict[str, list[int]] = field(default_factory=lambda: defaultdict(list))
    issued: defaultdict[str, list[int]] = field(default_factory=lambda: defaultdict(list))
    completed: defaultdict[str, int] = field(default_factory=lambda: defaultdict(int))
    # Tickets that were queued behind another at issue (the wait had to be woken).
    queued: defaultdict[str, int] = field(default_factory=lambda: defaultdict(int))
    overlaps: list[str] = field(default_factory=list)

    async def critical_section(self, cid: str, number: int, hold: float) -> None:
        """Non-atomic on purpose: read, sleep, write; flag in use, check, clear."""
        self.acquisitions[cid].append(number)
        current = self.holder.get(cid)
        if current is not None:
            self.overlaps.append(f"{cid}: ticket {number} entered while ticket {current} held")
        self.holder[cid] = number
        value = self.counters[cid]
        await asyncio.sleep(hold)
        self.counters[cid] = value + 1
        if self.holder[cid] == number:
            self.holder[cid] = None
        else:
            self.overlaps.append(
                f"{cid}: ticket {self.holder[cid]} entered while ticket {number} held"
            )
        self.completed[cid] += 1

    def problems(self, expected_sections: dict[str, int]) -> list[str]:
        """Every violation of mutual exclusion, lost update or FIFO order found."""
        found = list(self.overlaps)
        for cid, expected in expected_sections.items():
            done = self.completed[cid]
            if done != expected:
                found.append(f"{cid}: {done} critical sections ran, expected {expected}")
            if self.counters[cid] != done:
                lost = done - self.counters[cid]
                counter = self.counters[cid]
                found.append(
                    f"{cid}: counter is {counter} after {done} sections ({lost} lost updates)"
                )
            order = self.acquisitions[cid]
            backwards = [(a, b) for a, b in itertools.pairwise(order) if b <= a]
            if backwards:
                found.append(
                    f"{cid}: acquisitions not in ticket order, e.g. {backwards[:3]}; "
                    f"order was {order}"
                )
            issued = self.issued[cid]
            if len(set(issued)) != len(issued):
                duplicates = sorted({n for n in issued if issued.count(n) > 1})
                found.append(f"{cid}: ticket numbers issued twice: {duplicates}")
            never_served = sorted(set(issued) - set(order))
            if never_served:
                found.append(f"{cid}: issued tickets never acquired: {never_served}")
        return found


class Backend(Protocol):
    """One client's view of the replicas (``replica`` is an index, rotated by the worker)."""

    async def issue(self, replica: int, cid: str) -> tuple[int, bool]:
        """The ticket's number, and whether it holds the lock at once."""
        ...

    async def wait(self, replica: int, cid: str, number: int) -> None: ...

    async def cleanup(self, replica: int, cid: str, number: int) -> None: ...

    def session(self, replica: int, cid: str) -> contextlib.AbstractAsyncContextManager[int]: ...


async def worker(
    backend: Backend,
    ledger: Ledger,
    cid: str,
    index: int,
    cycles: int,
    rng: random.Random,
    use_stream: bool,
) -> None:
    """``cycles`` lock cycles; each puts issue, wait and cleanup on three different replicas.

    With ``use_stream`` every other cycle holds the lock through the ``Lock`` stream
    (on a rotating replica) instead.
    """
    for cycle in range(cycles):
        await asyncio.sleep(rng.uniform(0, MAX_HOLD))
        first = (index + cycle) % REPLICAS
        hold = rng.uniform(0, MAX_HOLD)
        if use_stream and cycle % 2 == 1:
            async with backend.session(first, cid) as number:
                await ledger.critical_section(cid, number, hold)
            continue
        number, acquired = await backend.issue(first, cid)
        ledger.issued[cid].append(number)
        if not acquired:
            ledger.queued[cid] += 1
        await backend.wait((first + 1) % REPLICAS, cid, number)
        await ledger.critical_section(cid, number, hold)
        await backend.cleanup((first + 2) % REPLICAS, cid, number)


async def run_bounded(jobs: Sequence[Awaitable[Any]], timeout: float) -> None:
    """Run ``jobs`` concurrently; raise the first failure, or fail if any outlives ``timeout``."""
    tasks = [asyncio.ensure_future(job) for job in jobs]
    done, pending = await asyncio.wait(tasks, timeout=timeout, return_when=asyncio.FIRST_EXCEPTION)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    for task in done:
        error = task.exception()
        if error is not None:
            raise error
    if pending:
        raise AssertionError(f"{len(pending)} of {len(tasks)} workers still ran after {timeout} s")


async def run_scenario(
    backends: Sequence[Backend], cycles: int, seed: int, tag: str
) -> tuple[Ledger, dict[str, int]]:
    """``len(backends)`` workers, ``CLIENTS_PER_CONVERSATION`` to a conversation."""
    rng = random.Random(seed)
    ledger = Ledger()
    conversations = [unique_cid(f"{tag}-{n}") for n in range(CONVERSATIONS)]
    expected: dict[str, int] = defaultdict(int)
    jobs = []
    for index, backend in enumerate(backends):
        cid = conversations[index % CONVERSATIONS]
        expected[cid] += cycles
        use_stream = index % CLIENTS_PER_CONVERSATION == CLIENTS_PER_CONVERSATION - 1
        worker_rng = random.Random(rng.getrandbits(64))
        jobs.append(worker(backend, ledger, cid, index, cycles, worker_rng, use_stream))
    await run_bounded(jobs, RUN_TIMEOUT)
    return ledger, dict(expected)


# --------------------------------------------------------------------------- local locks


class LocalLocks:
    """In-process ticket locks for the checker's self-test; ``mode`` picks how they break.

    ``fifo``: correct. ``no_wait``: every waiter is let in at once. ``any_order``:
    one holder at a time, but a release hands the lock to a random waiter.
    """

    def __init__(self, mode: str, rng: random.Random) -> None:
        self.mode = mode
        self.rng = rng
        self.next_number: defaultdict[str, int] = defaultdict(int)
        self.queues: defaultdict[str, list[int]] = defaultdict(list)
        self.granted: dict[str, int | None] = {}
        self.changed = asyncio.Condition()

    def backend(self) -> LocalBackend:
        return LocalBackend(self)

    def _grant(self, cid: str) -> None:
        queue = self.queues[cid]
        if self.granted.get(cid) in queue:
            return
        if not queue:
            self.granted[cid] = None
        elif self.mode == "any_order":
            self.granted[cid] = self.rng.choice(queue)
        else:
            self.granted[cid] = queue[0]

    async def issue(self, cid: str) -> tuple[int, bool]:
        number = self.next_number[cid]
        self.next_number[cid] += 1
        self.queues[cid].append(number)
        self._grant(cid)
        await asyncio.sleep(0)
        return number, self.granted.get(cid) == number

    async def wait(self, cid: str, number: int) -> None:
        if self.mode == "no_wait":
            await asyncio.sleep(0)
            return
        async with self.changed:
            await self.changed.wait_for(lambda: self.granted.get(cid) == number)

    async def cleanup(self, cid: str, number: int) -> None:
        self.queues[cid].remove(number)
        self._grant(cid)
        async with self.changed:
            self.changed.notify_all()


class LocalBackend:
    def __init__(self, locks: LocalLocks) -> None:
        self.locks = locks

    async def issue(self, replica: int, cid: str) -> tuple[int, bool]:
        return await self.locks.issue(cid)

    async def wait(self, replica: int, cid: str, number: int) -> None:
        await self.locks.wait(cid, number)

    async def cleanup(self, replica: int, cid: str, number: int) -> None:
        await self.locks.cleanup(cid, number)

    @contextlib.asynccontextmanager
    async def session(self, replica: int, cid: str) -> AsyncIterator[int]:
        number, _ = await self.locks.issue(cid)
        await self.locks.wait(cid, number)
        try:
            yield number
        finally:
            await self.locks.cleanup(cid, number)


def local_backends(mode: str, seed: int) -> list[Backend]:
    locks = LocalLocks(mode, random.Random(seed))
    return [locks.backend() for _ in range(CONVERSATIONS * CLIENTS_PER_CONVERSATION)]


async def test_checker_passes_a_correct_fifo_lock() -> None:
    ledger, expected = await run_scenario(local_backends("fifo", 1), CYCLES, 1, "local-fifo")
    assert ledger.problems(expected) == []


async def test_checker_sees_overlaps_and_lost_updates_without_waiting() -> None:
    ledger, expected = await run_scenario(local_backends("no_wait", 2), CYCLES, 2, "local-nowait")
    problems = ledger.problems(expected)
    assert ledger.overlaps, "a lock that never waits must show overlapping holders"
    assert any("lost updates" in p for p in problems), problems


async def test_checker_sees_acquisitions_out_of_ticket_order() -> None:
    ledger, expected = await run_scenario(local_backends("any_order", 3), CYCLES, 3, "local-any")
    problems = ledger.problems(expected)
    assert not ledger.overlaps  # one holder at a time ...
    assert any("not in ticket order" in p for p in problems), problems  # ... but not FIFO


# --------------------------------------------------------------------------- real replicas


@dataclass
class Replicas:
    store_type: str
    mode: str
    processes: list[ServerProcess]

    @property
    def targets(self) -> list[str]:
        return [process.target for process in self.processes]

    @property
    def first(self) -> int:
        """The number of a fresh conversation's first ticket."""
        return 1 if self.store_type == "concurrent_redis" else 0


@pytest.fixture(scope="module", params=KINDS, ids=[f"{s}-{m}" for s, m in KINDS])
def replicas(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Replicas]:
    """Three servers on the same Redis, sharing one endpoints file."""
    store_type, mode = request.param
    deployment: RedisDeployment = request.getfixturevalue(DEPLOYMENT_FIXTURES[mode])
    folder = tmp_path_factory.mktemp("replicas")
    endpoints = deployment.write_endpoints(folder / f"{store_type}-{mode}.yml", store_type)
    processes = start_servers(endpoints, REPLICAS)
    try:
        yield Replicas(store_type, mode, processes)
    finally:
        stop_servers(processes)


class ReplicaBackend:
    """One client's channels, one to each replica."""

    def __init__(self, targets: Sequence[str]) -> None:
        self.clients = [AsyncLockClient(target, timeout=RPC_TIMEOUT) for target in targets]

    async def close(self) -> None:
        for client in self.clients:
            await client.close()

    async def issue(self, replica: int, cid: str) -> tuple[int, bool]:
        issued = await self.clients[replica].issue(cid, LIFETIME)
        return issued.ticket.number, issued.acquired

    async def wait(self, replica: int, cid: str, number: int) -> None:
        try:
            await self.clients[replica].wait_for_ticket(cid, number, timeout=RPC_TIMEOUT)
        except LockError as error:
            what = f"WaitForTicket {number}"
            raise AssertionError(await self.stuck(what, replica, cid, error)) from error

    async def cleanup(self, replica: int, cid: str, number: int) -> None:
        await self.clients[replica].cleanup(cid, number)

    @contextlib.asynccontextmanager
    async def session(self, replica: int, cid: str) -> AsyncIterator[int]:
        lock = self.clients[replica].lock(cid, LIFETIME, timeout=RPC_TIMEOUT)
        try:
            async with lock as held:
                yield held.ticket.number
        except LockError as error:
            raise AssertionError(await self.stuck("Lock stream", replica, cid, error)) from error

    async def stuck(self, what: str, replica: int, cid: str, error: LockError) -> str:
        """Why a wait failed, with the queue as every replica reads it then."""
        queues = []
        for client in self.clients:
            lock = await client.get_lock(cid)
            queues.append(None if lock is None else [t.number for t in lock.tickets])
        return (
            f"{what} of {cid} on replica {replica} failed ({error!r}); "
            f"the queue as replicas 0..{len(queues) - 1} read it now: {queues}"
        )


@contextlib.asynccontextmanager
async def replica_backends(targets: Sequence[str], count: int) -> AsyncIterator[list[Backend]]:
    backends = [ReplicaBackend(targets) for _ in range(count)]
    try:
        yield list(backends)
    finally:
        for backend in backends:
            await backend.close()


async def test_replicas_serve_each_conversation_one_holder_at_a_time_in_ticket_order(
    replicas: Replicas,
) -> None:
    seed = random.randrange(2**32)
    count = CONVERSATIONS * CLIENTS_PER_CONVERSATION
    async with replica_backends(replicas.targets, count) as backends:
        try:
            ledger, expected = await run_scenario(backends, CYCLES, seed, replicas.store_type)
        except AssertionError as error:
            raise AssertionError(f"seed {seed}: {error}") from None
    problems = ledger.problems(expected)
    assert problems == [], f"seed {seed}: " + "\n".join(problems)
    # The clients really contended: in every conversation some waits had to be woken.
    assert all(ledger.queued[cid] > 0 for cid in expected), dict(ledger.queued)
    # Every ticket was released: no conversation is left locked.
    async with AsyncLockClient(replicas.targets[0], timeout=RPC_TIMEOUT) as client:
        for cid in expected:
            lock = await client.get_lock(cid)
            assert lock is None or list(lock.tickets) == [], (cid, lock)


async def test_two_servers_issuing_at_the_same_instant_get_one_order(replicas: Replicas) -> None:
    first = replicas.first
    a, b = (AsyncLockClient(t, timeout=RPC_TIMEOUT) for t in replicas.targets[:2])
    anomalies: list[str] = []
    try:
        await asyncio.gather(a.get_lock(unique_cid("warm")), b.get_lock(unique_cid("warm")))
        for round_ in range(200):
            cid = unique_cid(f"pair-{round_}")
            one, two = await asyncio.gather(a.issue(cid, LIFETIME), b.issue(cid, LIFETIME))
            numbers = sorted([one.ticket.number, two.ticket.number])
            holders = [issued for issued in (one, two) if issued.acquired]
            lock = await (a if round_ % 2 else b).get_lock(cid)
            listed = None if lock is None else [t.number for t in lock.tickets]
            seen = f"round {round_} {cid}: via A {one}, via B {two}, lock lists {listed}"
            if numbers != [first, first + 1]:
                anomalies.append(f"{seen}: numbers are not {first} and {first + 1}")
            if len(holders) != 1:
                anomalies.append(f"{seen}: {len(holders)} tickets acquired at issue, not 1")
            else:
                holder = holders[0]
                other = two if holder is one else one
                if holder.ticket.number != first or other.now_serving != holder.ticket.number:
                    anomalies.append(f"{seen}: the other ticket does not see the holder serving")
            if listed != numbers:
                anomalies.append(f"{seen}: get_lock does not list both tickets in number order")
            await asyncio.gather(
                a.cleanup(cid, one.ticket.number), b.cleanup(cid, two.ticket.number)
            )
        assert anomalies == [], "\n".join(anomalies[:10])

        for round_ in range(25):
            cid = unique_cid(f"eight-{round_}")
            clients = [a, b] * 4
            issued = await asyncio.gather(*(c.issue(cid, LIFETIME) for c in clients))
            numbers = [i.ticket.number for i in issued]
            seen = f"round {round_} {cid}: issued {numbers}"
            if sorted(numbers) != list(range(first, first + 8)):
                anomalies.append(f"{seen}: not 8 distinct consecutive numbers from {first}")
            acquired = [i.ticket.number for i in issued if i.acquired]
            if acquired != [first]:
                anomalies.append(f"{seen}: acquired at issue: {acquired}, expected [{first}]")
            serving = {i.now_serving for i in issued}
            if serving != {first}:
                anomalies.append(f"{seen}: now_serving seen {sorted(serving)}, expected {first}")
            lock = await a.get_lock(cid)
            listed = None if lock is None else [t.number for t in lock.tickets]
            if listed != sorted(numbers):
                anomalies.append(f"{seen}: get_lock lists {listed}")
            await asyncio.gather(
                *(c.cleanup(cid, n) for c, n in zip(clients, numbers, strict=True))
            )
        assert anomalies == [], "\n".join(anomalies[:10])
    finally:
        await a.close()
        await b.close()
