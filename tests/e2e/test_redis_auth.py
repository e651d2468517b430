"""Authenticated and encrypted Redis, through real ticketlock servers on real ports.

For each way of reaching a protected Redis (TLS, mutual TLS, ``requirepass``, an ACL
user restricted to ``app:*``, a ``${ENV}`` password) both Redis stores run a full lock
cycle through a ``ticketlock-server`` process: issue, get_lock, a contended
``WaitForTicket`` that is woken by a release made *by another process* (an in-process
store built from the same endpoints file, standing in for a second replica), so the
wake-up can only arrive over the server's pub/sub connection, then cleanup. Each wrong
credential makes the server report NOT_SERVING and fail calls with UNAVAILABLE naming
the store, never INTERNAL or UNKNOWN. ElastiCache IAM is checked in process: the store
built from the configuration signs its token with the provider, and a redis-server whose
ACL user has that token as its password accepts it.
"""

from __future__ import annotations

import asyncio
import calendar
import contextlib
import datetime
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from botocore.credentials import Credentials
from grpc_health.v1 import health_pb2, health_pb2_grpc
from ticketlock.v1 import lock_service_pb2 as pb
from ticketlock.v1 import lock_service_pb2_grpc as pb_grpc
from ticketlock_server.config import load_store_config
from ticketlock_server.stores import create_store
from ticketlock_server.stores import iam as iam_module
from ticketlock_server.stores.base import LockStore, StoreUnavailable
from ticketlock_server.stores.iam import ElastiCacheIAMCredentialProvider, presigned_connect_token

from harness.redis_servers import RedisDeployment
from harness.server import ServerProcess
from tests.support.redis_fixtures import ACL_USER, REDIS_PASSWORD

STORE_TYPES = ("redis", "concurrent_redis")
STORE_CLASSES = {"redis": "RedisLockStore", "concurrent_redis": "ConcurrentRedisLockStore"}
SOCKET_TIMEOUT = 1.0
# Bound on any single call: a failing call must fail within about socket_timeout.
CALL_TIMEOUT = 10.0
FAIL_WITHIN = 2 * SOCKET_TIMEOUT + 2.0
# A waiter re-checks on its own after 5 s at the latest; a pushed wake-up is far sooner.
PUSHED_WITHIN = 2.5
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
NO_RETRIES = [("grpc.enable_retries", 0)]


# --------------------------------------------------------------------------- helpers


def write_endpoints(path: Path, section: Mapping[str, Any]) -> Path:
    path.write_text(yaml.safe_dump({"lock_store": dict(section)}, sort_keys=False), "utf-8")
    return path


def section_for(deployment: RedisDeployment, store_type: str, **extra: Any) -> dict[str, Any]:
    return deployment.lock_store_section(store_type, socket_timeout=SOCKET_TIMEOUT, **extra)


def store_name(deployment: RedisDeployment, store_type: str) -> str:
    """How the store names itself in errors: class and address (never credentials)."""
    return f"{STORE_CLASSES[store_type]} ({deployment.host}:{deployment.port}/{deployment.db})"


def health_status(target: str) -> int | None:
    with grpc.insecure_channel(target) as channel:
        try:
            return int(
                health_pb2_grpc.HealthStub(channel)
                .Check(health_pb2.HealthCheckRequest(), timeout=1.0)
                .status
            )
        except grpc.RpcError:
            return None


def wait_health(server: ServerProcess, expected: int, timeout: float = 20.0) -> float:
    """Poll the health service until it reports ``expected``; return the seconds taken."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if server.process.poll() is not None:
            raise AssertionError(f"server exited with {server.process.returncode}:\n{server.log}")
        if health_status(server.target) == expected:
            return time.monotonic() - started
        time.sleep(0.05)
    raise AssertionError(f"health not {expected} within {timeout} s:\n{server.log}")


@contextlib.contextmanager
def ticketlock_servers(
    endpoints: list[Path], env: Mapping[str, str] | None = None, expect: int = SERVING
) -> Iterator[list[ServerProcess]]:
    """One ticketlock server per endpoints file, started in parallel, up and ``expect``."""
    with contextlib.ExitStack() as stack:
        servers = []
        for path in endpoints:
            server = ServerProcess(["--endpoints", str(path), "--log-level", "info"], env=env)
            stack.callback(server.__exit__, None, None, None)
            servers.append(server)
        for server in servers:
            wait_health(server, expect)
        yield servers


@contextlib.asynccontextmanager
async def stub_for(server: ServerProcess) -> Any:
    async with grpc.aio.insecure_channel(server.target, options=NO_RETRIES) as channel:
        yield pb_grpc.LockServiceStub(channel)


@contextlib.asynccontextmanager
async def replica(path: Path, env: Mapping[str, str] | None = None) -> Any:
    """An in-process store from the same endpoints file: a second replica on the same Redis."""
    store = create_store(load_store_config(str(path), dict(env or {})))
    try:
        yield store
    finally:
        await store.close()


Inspect = Callable[[str], Awaitable[None]]


async def lock_cycle(
    stub: Any, other: LockStore, cid: str, inspect: Inspect | None = None
) -> float:
    """A full cycle on ``cid``; returns the seconds from the release to the waiter's turn.

    The release is made by ``other`` (another process as far as the server knows), so
    the waiter is woken through the server's pub/sub subscription, not in process.
    """
    holder = await stub.IssueTicket(
        pb.IssueTicketRequest(conversation_id=cid, lifetime_seconds=30), timeout=CALL_TIMEOUT
    )
    assert holder.ticket.number == holder.now_serving, "the first ticket holds the lock"
    waiter = await stub.IssueTicket(
        pb.IssueTicketRequest(conversation_id=cid, lifetime_seconds=30), timeout=CALL_TIMEOUT
    )
    assert waiter.ticket.number > holder.ticket.number
    assert waiter.now_serving == holder.ticket.number
    got = await stub.GetLock(pb.GetLockRequest(conversation_id=cid), timeout=CALL_TIMEOUT)
    numbers = [t.number for t in got.lock.tickets]
    assert numbers == [holder.ticket.number, waiter.ticket.number]
    if inspect is not None:
        await inspect(cid)
    stream = stub.WaitForTicket(
        pb.WaitForTicketRequest(conversation_id=cid, ticket_number=waiter.ticket.number),
        timeout=CALL_TIMEOUT,
    )
    try:
        queued = await asyncio.wait_for(stream.read(), CALL_TIMEOUT)
        assert not queued.acquired and queued.tickets_ahead == 1
        released = time.monotonic()
        assert not await other.cleanup(cid, holder.ticket.number)  # someone still waits
        acquired = await asyncio.wait_for(stream.read(), CALL_TIMEOUT)
        woken = time.monotonic() - released
        assert acquired.acquired
        assert [t.number for t in acquired.lock.tickets] == [waiter.ticket.number]
    finally:
        stream.cancel()
    cleaned = await stub.Cleanup(
        pb.CleanupRequest(conversation_id=cid, ticket_number=waiter.ticket.number),
        timeout=CALL_TIMEOUT,
    )
    assert cleaned.lock_deleted
    gone = await stub.GetLock(pb.GetLockRequest(conversation_id=cid), timeout=CALL_TIMEOUT)
    assert not gone.HasField("lock")
    return woken


async def cycle_on_each(
    tmp_path: Path,
    deployment: RedisDeployment,
    env: Mapping[str, str] | None = None,
    inspect: Inspect | None = None,
    **extra: Any,
) -> None:
    """Both store types on ``deployment`` (``extra`` added to the section) run a cycle."""
    paths = [
        write_endpoints(tmp_path / f"{kind}.yml", section_for(deployment, kind, **extra))
        for kind in STORE_TYPES
    ]
    with ticketlock_servers(paths, env) as servers:
        for kind, path, server in zip(STORE_TYPES, paths, servers, strict=True):
            async with stub_for(server) as stub, replica(path, env) as other:
                woken = await lock_cycle(stub, other, f"auth-{uuid.uuid4().hex}", inspect)
            print(f"{kind}: waiter woken {woken * 1000:.1f} ms after the other replica's release")
            assert woken < PUSHED_WITHIN, f"wake-up not pushed over pub/sub:\n{server.log}"


async def assert_unavailable(
    call: Awaitable[Any], name: str, secret: str | None = None
) -> grpc.aio.AioRpcError:
    """The call fails with UNAVAILABLE naming the store, within about socket_timeout."""
    started = time.monotonic()
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await asyncio.wait_for(call, CALL_TIMEOUT)
    elapsed = time.monotonic() - started
    error = raised.value
    assert error.code() == grpc.StatusCode.UNAVAILABLE, (error.code(), error.details())
    details = error.details() or ""
    assert name in details, details
    if secret is not None:
        assert secret not in details
    assert elapsed < FAIL_WITHIN, f"took {elapsed:.2f} s"
    return error


async def assert_every_call_unavailable(
    server: ServerProcess, name: str, secret: str | None = None
) -> str:
    """Unary calls, a WaitForTicket and a Lock session all fail with UNAVAILABLE."""
    cid = f"auth-{uuid.uuid4().hex}"
    async with stub_for(server) as stub:
        error = await assert_unavailable(
            stub.IssueTicket(pb.IssueTicketRequest(conversation_id=cid), timeout=CALL_TIMEOUT),
            name,
            secret,
        )
        for call in (
            stub.GetLock(pb.GetLockRequest(conversation_id=cid), timeout=CALL_TIMEOUT),
            stub.Cleanup(pb.CleanupRequest(conversation_id=cid), timeout=CALL_TIMEOUT),
            stub.IsSomeoneWaiting(
                pb.IsSomeoneWaitingRequest(conversation_id=cid), timeout=CALL_TIMEOUT
            ),
        ):
            await assert_unavailable(call, name, secret)
        stream = stub.WaitForTicket(
            pb.WaitForTicketRequest(conversation_id=cid, ticket_number=0), timeout=CALL_TIMEOUT
        )
        await assert_unavailable(stream.read(), name, secret)
        session = stub.Lock(timeout=CALL_TIMEOUT)
        await session.write(pb.LockRequest(acquire=pb.Acquire(conversation_id=cid)))
        await assert_unavailable(session.read(), name, secret)
    return error.details() or ""


# --------------------------------------------------------------------------- TLS


async def test_tls_with_a_server_certificate(tmp_path: Path, redis_tls: RedisDeployment) -> None:
    assert redis_tls.use_ssl and redis_tls.ssl_ca_certs and not redis_tls.ssl_certfile
    await cycle_on_each(tmp_path, redis_tls)


async def test_mutual_tls_with_a_client_certificate(
    tmp_path: Path, redis_mtls: RedisDeployment
) -> None:
    assert redis_mtls.ssl_certfile and redis_mtls.ssl_keyfile
    await cycle_on_each(tmp_path, redis_mtls)


async def test_mutual_tls_without_the_client_certificate_is_unavailable(
    tmp_path: Path, redis_mtls: RedisDeployment
) -> None:
    paths = [
        write_endpoints(
            tmp_path / f"{kind}.yml",
            section_for(redis_mtls, kind, ssl_certfile=None, ssl_keyfile=None),
        )
        for kind in STORE_TYPES
    ]
    with ticketlock_servers(paths, expect=NOT_SERVING) as servers:
        for kind, server in zip(STORE_TYPES, servers, strict=True):
            details = await assert_every_call_unavailable(server, store_name(redis_mtls, kind))
            print(f"{kind}: {details}")
            assert health_status(server.target) == NOT_SERVING


# --------------------------------------------------------------------------- passwords


async def test_password(tmp_path: Path, redis_password: RedisDeployment) -> None:
    assert redis_password.password == REDIS_PASSWORD
    await cycle_on_each(tmp_path, redis_password)


async def test_wrong_password_is_unavailable_and_never_shown(
    tmp_path: Path, redis_password: RedisDeployment
) -> None:
    wrong = "not-the-redis-secret"
    paths = [
        write_endpoints(tmp_path / f"{kind}.yml", section_for(redis_password, kind, password=wrong))
        for kind in STORE_TYPES
    ]
    with ticketlock_servers(paths, expect=NOT_SERVING) as servers:
        for kind, server in zip(STORE_TYPES, servers, strict=True):
            name = store_name(redis_password, kind)
            details = await assert_every_call_unavailable(server, name, secret=wrong)
            print(f"{kind}: {details}")
            assert health_status(server.target) == NOT_SERVING
            assert wrong not in server.log and REDIS_PASSWORD not in server.log


async def test_password_from_the_environment(
    tmp_path: Path, redis_password: RedisDeployment
) -> None:
    """``password: ${REDIS_PASSWORD}`` stays literal in the file; the server fills it in."""
    env = {"REDIS_PASSWORD": REDIS_PASSWORD}
    paths = []
    for kind in STORE_TYPES:
        section = section_for(redis_password, kind, password=None)
        path = write_endpoints(tmp_path / f"{kind}.yml", section)
        text = path.read_text("utf-8") + "  password: ${REDIS_PASSWORD}\n"
        path.write_text(text, "utf-8")
        assert REDIS_PASSWORD not in text and "password: ${REDIS_PASSWORD}" in text
        paths.append(path)
    # Without the variable the server refuses to start, naming it.
    refused = ServerProcess(["--endpoints", str(paths[0])])
    try:
        assert await asyncio.to_thread(refused.process.wait, 20) == 2
        assert "REDIS_PASSWORD" in refused.log
    finally:
        refused.__exit__(None, None, None)
    with ticketlock_servers(paths, env) as servers:
        for kind, path, server in zip(STORE_TYPES, paths, servers, strict=True):
            async with stub_for(server) as stub, replica(path, env) as other:
                woken = await lock_cycle(stub, other, f"auth-{uuid.uuid4().hex}")
            print(f"{kind}: waiter woken {woken * 1000:.1f} ms after the release")
            assert woken < PUSHED_WITHIN
            assert REDIS_PASSWORD not in server.log


# --------------------------------------------------------------------------- ACL users


async def test_acl_user_limited_to_a_key_prefix(tmp_path: Path, redis_acl: RedisDeployment) -> None:
    assert redis_acl.username == ACL_USER
    admin = redis_acl.client(admin=True)

    async def keys_are_under_app(cid: str) -> None:
        found = [key.decode() for key in admin.keys(f"*{cid}*")]
        assert found, "the lock has keys in Redis"
        assert all(key.startswith("app:") for key in found), found

    try:
        await cycle_on_each(tmp_path, redis_acl, inspect=keys_are_under_app, key_prefix="app")
    finally:
        admin.close()


async def test_acl_user_outside_its_key_prefix_is_unavailable_and_the_server_keeps_serving(
    tmp_path: Path, redis_acl: RedisDeployment
) -> None:
    """The default prefix (``lock:``) is outside ``~app:*``: NOPERM on every lock call."""
    paths = [
        write_endpoints(tmp_path / f"{kind}.yml", section_for(redis_acl, kind))
        for kind in STORE_TYPES
    ]
    # PING needs no key: the store answers, so health stays SERVING.
    with ticketlock_servers(paths) as servers:
        for kind, server in zip(STORE_TYPES, servers, strict=True):
            details = await assert_every_call_unavailable(server, store_name(redis_acl, kind))
            print(f"{kind}: {details}")
            assert "NOPERM" in details or "permission" in details.lower(), details
            async with stub_for(server) as stub:
                # Other calls are still served: validation, then the store again.
                with pytest.raises(grpc.aio.AioRpcError) as raised:
                    await stub.GetLock(pb.GetLockRequest(conversation_id=""), timeout=5)
                assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                await assert_unavailable(
                    stub.GetLock(pb.GetLockRequest(conversation_id="again"), timeout=5),
                    store_name(redis_acl, kind),
                )
            assert health_status(server.target) == SERVING
            assert server.process.poll() is None


# --------------------------------------------------------------------------- ElastiCache IAM

AWS_ACCESS_KEY = "AKIDEXAMPLE"
AWS_SECRET_KEY = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
IAM_USER = "iam-bot"
IAM_CLUSTER = "ticketlock-cache"
IAM_REGION = "eu-central-1"
# The provider signs at this instant (whole seconds), so the token can be computed first.
PINNED = datetime.datetime(2024, 5, 1, 12, 34, 56, tzinfo=datetime.timezone.utc)


class PinnedClockProvider(ElastiCacheIAMCredentialProvider):
    """The provider the store builds, with its clock fixed at ``PINNED``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pinned = float(calendar.timegm(PINNED.utctimetuple()))
        super().__init__(*args, clock=lambda: pinned, **kwargs)


def iam_token(secret: str = AWS_SECRET_KEY) -> str:
    credentials = Credentials(AWS_ACCESS_KEY, secret)
    return presigned_connect_token(IAM_USER, IAM_CLUSTER, IAM_REGION, credentials, now=PINNED)


@pytest.mark.parametrize("store_type", STORE_TYPES)
async def test_elasticache_iam_token_is_the_acl_password(
    tmp_path: Path,
    fresh_standalone: RedisDeployment,
    monkeypatch: pytest.MonkeyPatch,
    store_type: str,
) -> None:
    env = {
        "IAM_CLOUD_PROVIDER": "aws",
        "ELASTICACHE_REDIS_AWS_IAM_ENABLED": "true",
        "AWS_ELASTICACHE_CLUSTER_NAME": IAM_CLUSTER,
        "AWS_DEFAULT_REGION": IAM_REGION,
        "AWS_ACCESS_KEY_ID": AWS_ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": AWS_SECRET_KEY,
    }
    for name, value in env.items():  # botocore's default chain reads the process environment
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setattr(iam_module, "ElastiCacheIAMCredentialProvider", PinnedClockProvider)
    path = write_endpoints(
        tmp_path / "endpoints.yml", section_for(fresh_standalone, store_type, username=IAM_USER)
    )
    config = load_store_config(str(path), env)
    assert config.redis is not None and config.redis.iam_enabled

    def set_acl_password(token: str) -> None:
        fresh_standalone.processes[0].execute(
            "ACL", "SETUSER", IAM_USER, "reset", "on", f">{token}", "~*", "&*", "+@all"
        )

    token = iam_token()
    set_acl_password(token)
    store = create_store(config)
    try:
        kwargs = store._client.connection_pool.connection_kwargs  # type: ignore[attr-defined]
        provider = kwargs["credential_provider"]
        assert isinstance(provider, ElastiCacheIAMCredentialProvider)
        assert (provider.user, provider.cluster_name, provider.region) == (
            IAM_USER,
            IAM_CLUSTER,
            IAM_REGION,
        )
        assert kwargs.get("username") is None and kwargs.get("password") is None
        assert provider.get_credentials() == (IAM_USER, token)

        await asyncio.wait_for(store.ping(), CALL_TIMEOUT)
        cid = f"iam-{uuid.uuid4().hex}"
        issued = await asyncio.wait_for(store.issue_ticket(cid, 30), CALL_TIMEOUT)
        assert issued.acquired
        assert await asyncio.wait_for(store.cleanup(cid, issued.ticket.number), CALL_TIMEOUT)
        admin = fresh_standalone.processes[0].client()
        try:
            users = {str(entry.get("user")) for entry in admin.client_list()}
        finally:
            admin.close()
        assert IAM_USER in users, "the store connected as the IAM user"
    finally:
        await store.close()

    # A token the server does not know (signed with another secret): StoreUnavailable.
    set_acl_password(iam_token(secret="not-the-secret"))
    refused = create_store(config)
    try:
        with pytest.raises(StoreUnavailable) as raised:
            await asyncio.wait_for(refused.ping(), CALL_TIMEOUT)
        assert STORE_CLASSES[store_type] in str(raised.value)
        assert token not in str(raised.value)
        with pytest.raises(StoreUnavailable):
            await asyncio.wait_for(refused.issue_ticket("iam-refused", 30), CALL_TIMEOUT)
    finally:
        await refused.close()
