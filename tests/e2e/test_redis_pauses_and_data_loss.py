"""A paused, restarted or emptied Redis, through real ticketlock servers on real ports.

- A script call that failed with UNAVAILABLE (Redis paused past ``socket_timeout``)
  never takes effect when Redis resumes: no ticket without an owner, and the next
  session does not wait out a lifetime.
- Holders are told when Redis lost their data: at once when it restarted empty,
  within the recheck interval when the data vanished without a restart.
- SIGTERM while Redis is hung ends cleanly, without unretrieved task exceptions.

Each test has its own redis-server (``fresh_standalone``), free to pause and kill.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc
import yaml
from ticketlock.v1 import lock_service_pb2 as pb
from ticketlock.v1 import lock_service_pb2_grpc as pb_grpc

from tests.support.redis_servers import RedisDeployment
from tests.support.server import ServerProcess

STORE_TYPES = ("redis", "concurrent_redis")
SOCKET_TIMEOUT = 1.0
CALL_TIMEOUT = 10.0
# The health probe runs every second; a restart is seen on the probe after it.
TOLD_WITHIN = 4.0
# A holder re-checks its ticket at least this often (the server's recheck interval).
RECHECK_INTERVAL = 5.0
NO_RETRIES = [("grpc.enable_retries", 0)]
_EOF: Any = grpc.aio.EOF  # type: ignore[attr-defined]


def new_cid(tag: str) -> str:
    return f"{tag}-{uuid.uuid4().hex}"


@contextlib.contextmanager
def servers_on(
    tmp_path: Path,
    deployment: RedisDeployment,
    socket_timeout: float = SOCKET_TIMEOUT,
    args: Sequence[str] = (),
) -> Iterator[list[ServerProcess]]:
    """One ticketlock server per Redis store, each SERVING."""
    servers = []
    with contextlib.ExitStack() as stack:
        for store_type in STORE_TYPES:
            section = deployment.lock_store_section(store_type, socket_timeout=socket_timeout)
            path = tmp_path / f"{store_type}.yml"
            path.write_text(yaml.safe_dump({"lock_store": section}), encoding="utf-8")
            server = ServerProcess(["--endpoints", str(path), "--log-level", "info", *args])
            stack.callback(server.__exit__, None, None, None)
            servers.append(server)
        for server in servers:
            server.wait_serving()
        yield servers


@contextlib.asynccontextmanager
async def stubs_for(servers: Sequence[ServerProcess]) -> AsyncIterator[list[Any]]:
    async with contextlib.AsyncExitStack() as stack:
        channels = [
            await stack.enter_async_context(grpc.aio.insecure_channel(s.target, options=NO_RETRIES))
            for s in servers
        ]
        yield [pb_grpc.LockServiceStub(channel) for channel in channels]


def acquire(cid: str, lifetime: float) -> pb.LockRequest:
    return pb.LockRequest(acquire=pb.Acquire(conversation_id=cid, lifetime_seconds=lifetime))


async def open_session(stub: Any, cid: str, lifetime: float) -> tuple[Any, Any]:
    call = stub.Lock(timeout=60)
    await call.write(acquire(cid, lifetime))
    return call, await asyncio.wait_for(call.read(), CALL_TIMEOUT)


async def status_of(call: Any) -> tuple[grpc.StatusCode, str, float]:
    """Read a stream until it fails: its status, details and when (monotonic)."""
    try:
        while True:
            message = await call.read()
            assert message is not _EOF, "the stream ended OK"
    except grpc.aio.AioRpcError as error:
        return error.code(), error.details() or "", time.monotonic()


async def acquired_within(stub: Any, cid: str, timeout: float) -> float:
    """A new session on ``cid`` acquires within ``timeout``; how long it took."""
    started = time.monotonic()
    call, first = await open_session(stub, cid, 5)
    try:
        while first.WhichOneof("event") != "acquired":
            first = await asyncio.wait_for(call.read(), timeout - (time.monotonic() - started))
        return time.monotonic() - started
    finally:
        await call.write(pb.LockRequest(release=pb.Release()))
        with contextlib.suppress(grpc.aio.AioRpcError, asyncio.TimeoutError):
            await asyncio.wait_for(call.read(), CALL_TIMEOUT)
        call.cancel()


def redis_stats(deployment: RedisDeployment) -> tuple[int, int]:
    """Script calls Redis ran (EVALSHA, refused ones included) and refused as LATE."""
    client = deployment.client()
    try:
        commands = client.info("commandstats")
        errors = client.info("errorstats")
    finally:
        client.close()
    calls = int(commands.get("cmdstat_evalsha", {}).get("calls", 0))
    late = int(errors.get("errorstat_LATE", {}).get("count", 0))
    return calls, late


# --------------------------------------------------------------------------- paused Redis


async def test_a_call_that_failed_unavailable_never_takes_effect_later(
    tmp_path: Path, fresh_standalone: RedisDeployment
) -> None:
    """Redis paused: a ``Lock`` acquire and an ``IssueTicket`` fail with UNAVAILABLE
    after the socket timeout. When Redis resumes, their scripts (still in its socket
    buffers) must change nothing: the conversations hold no ticket, and the next
    session acquires at once instead of after the 20 s lifetime."""
    redis_process = fresh_standalone.processes[0]
    with servers_on(tmp_path, fresh_standalone) as servers:
        async with stubs_for(servers) as stubs:
            session_cids = [new_cid("paused-lock") for _ in stubs]
            unary_cids = [new_cid("paused-issue") for _ in stubs]
            scripts_before, _ = redis_stats(fresh_standalone)
            redis_process.pause()
            try:
                calls = []
                for stub, cid in zip(stubs, session_cids, strict=True):
                    call = stub.Lock(timeout=60)
                    await call.write(acquire(cid, 20))
                    calls.append(status_of(call))
                for stub, cid in zip(stubs, unary_cids, strict=True):
                    request = pb.IssueTicketRequest(conversation_id=cid, lifetime_seconds=20)
                    calls.append(stub.IssueTicket(request, timeout=CALL_TIMEOUT))
                results = await asyncio.wait_for(
                    asyncio.gather(*calls, return_exceptions=True), CALL_TIMEOUT
                )
                for result in results[: len(stubs)]:
                    assert isinstance(result, tuple), result
                    assert result[0] == grpc.StatusCode.UNAVAILABLE, result
                for result in results[len(stubs) :]:
                    assert isinstance(result, grpc.aio.AioRpcError), result
                    assert result.code() == grpc.StatusCode.UNAVAILABLE, result
            finally:
                redis_process.resume()

            # Redis runs what sat in its buffers as soon as it resumes.
            deadline = time.monotonic() + CALL_TIMEOUT
            while (scripts := redis_stats(fresh_standalone)[0]) < scripts_before + len(results):
                assert time.monotonic() < deadline, f"Redis ran {scripts - scripts_before} scripts"
                await asyncio.sleep(0.05)

            for stub, cid in zip(stubs * 2, session_cids + unary_cids, strict=True):
                got = await stub.GetLock(pb.GetLockRequest(conversation_id=cid), timeout=5)
                assert not got.HasField("lock") or not got.lock.tickets, got
                took = await acquired_within(stub, cid, 3.0)
                print(f"\nnext session on {cid} acquired in {took * 1000:.0f} ms")
            # Each was refused by its deadline, not lost on the way.
            assert redis_stats(fresh_standalone)[1] == len(results)
        for server in servers:
            assert "Traceback" not in server.log, server.log


# --------------------------------------------------------------------------- data loss


async def test_holders_are_told_at_once_when_redis_restarts_empty(
    tmp_path: Path, fresh_standalone: RedisDeployment
) -> None:
    """Redis killed and restarted empty within a moment, too fast for anyone to see it
    down: every holder's stream ends with NOT_FOUND within seconds, not at its exit."""
    redis_process = fresh_standalone.processes[0]
    with servers_on(tmp_path, fresh_standalone) as servers:
        async with stubs_for(servers) as stubs:
            holders = []
            for stub in stubs:
                for _ in range(2):
                    call, first = await open_session(stub, new_cid("restart"), 60)
                    assert first.WhichOneof("event") == "acquired"
                    holders.append(asyncio.ensure_future(status_of(call)))
            await asyncio.to_thread(redis_process.kill)
            await asyncio.to_thread(redis_process.restart)
            restarted = time.monotonic()
            ended = await asyncio.wait_for(asyncio.gather(*holders), TOLD_WITHIN + CALL_TIMEOUT)
            for code, details, when in ended:
                assert code == grpc.StatusCode.NOT_FOUND, details
                assert when - restarted < TOLD_WITHIN, when - restarted
            slowest = max(when for _, _, when in ended) - restarted
            print(f"\nall {len(ended)} holders told {slowest:.2f} s after the restart at most")


async def test_holders_are_told_when_their_data_vanishes_without_a_restart(
    tmp_path: Path, fresh_standalone: RedisDeployment
) -> None:
    """The data is gone while Redis stays up (FLUSHALL, a replica promoted without it):
    nothing disconnects, and yet every holder learns within the recheck interval."""
    with servers_on(tmp_path, fresh_standalone) as servers:
        async with stubs_for(servers) as stubs:
            holders = []
            for stub in stubs:
                call, first = await open_session(stub, new_cid("flushed"), 60)
                assert first.WhichOneof("event") == "acquired"
                holders.append(asyncio.ensure_future(status_of(call)))
            fresh_standalone.processes[0].execute("FLUSHALL")
            flushed = time.monotonic()
            ended = await asyncio.wait_for(
                asyncio.gather(*holders), RECHECK_INTERVAL + CALL_TIMEOUT
            )
            for code, details, when in ended:
                assert code == grpc.StatusCode.NOT_FOUND, details
                assert when - flushed < RECHECK_INTERVAL + 2.0, when - flushed


# --------------------------------------------------------------------------- SIGTERM


async def test_sigterm_while_redis_is_hung_ends_cleanly(
    tmp_path: Path, fresh_standalone: RedisDeployment
) -> None:
    """Queued sessions and calls hang on a paused Redis when SIGTERM comes; the grace
    period (1 s) ends before their calls time out (3 s): the server exits 0, and no
    task is left with an exception nobody retrieved."""
    redis_process = fresh_standalone.processes[0]
    with servers_on(tmp_path, fresh_standalone, 3.0, ["--grace", "1"]) as servers:
        async with stubs_for(servers) as stubs:
            calls = []
            for stub in stubs:
                cid = new_cid("sigterm")
                for _ in range(10):
                    call, _ = await open_session(stub, cid, 30)
                    calls.append(call)
            redis_process.pause()
            try:
                pending = [
                    asyncio.ensure_future(
                        stub.IssueTicket(
                            pb.IssueTicketRequest(conversation_id=new_cid("hung")), timeout=20
                        )
                    )
                    for stub in stubs
                    for _ in range(10)
                ]
                await asyncio.sleep(0.3)
                for server in servers:
                    server.process.send_signal(signal.SIGTERM)
                codes = [await asyncio.to_thread(server.process.wait, 30) for server in servers]
            finally:
                redis_process.resume()
            await asyncio.gather(*pending, return_exceptions=True)
            for call in calls:
                call.cancel()
        for server, code in zip(servers, codes, strict=True):
            assert code == 0, server.log
            assert "never retrieved" not in server.log, server.log
            assert "Traceback" not in server.log, server.log
