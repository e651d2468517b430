"""pytest fixtures: real Redis deployments (standalone, password, ACL, TLS, mTLS, cluster,
sentinel) on free loopback ports.

Registered from ``tests/conftest.py`` with ``pytest_plugins = ["tests.support.redis_fixtures"]``.
The session-scoped deployments start lazily (only when a test asks for them) and once per
session; tests share them, so they should use distinct keys or call ``flush()`` themselves,
and must not kill or pause their processes: ``fresh_standalone`` and ``fresh_sentinel`` give
a test its own deployment for that.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from harness.redis_servers import (
    RedisDeployment,
    RedisServerNotFound,
    TlsFiles,
    make_tls_files,
    redis_cli_path,
    redis_server_path,
    start_cluster,
    start_sentinel,
    start_standalone,
)

ACL_USER = "ticketlock"
ACL_PASSWORD = "ticketlock-secret"
ACL_RULE = f"{ACL_USER} on >{ACL_PASSWORD} ~app:* &* +@all"
REDIS_PASSWORD = "redis-secret"


def _require_redis(cli: bool = False) -> None:
    """Fail (never skip) when the Redis executables are missing."""
    try:
        redis_server_path()
        if cli:
            redis_cli_path()
    except RedisServerNotFound as error:
        pytest.fail(str(error), pytrace=False)


def _deployment(
    start: Callable[[], RedisDeployment], cli: bool = False
) -> Iterator[RedisDeployment]:
    _require_redis(cli)
    deployment = start()
    try:
        yield deployment
    finally:
        deployment.stop()


@pytest.fixture(scope="session")
def redis_tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    """A CA, a server certificate for 127.0.0.1/localhost and a client certificate."""
    return make_tls_files(tmp_path_factory.mktemp("redis-tls-files"))


@pytest.fixture(scope="session")
def redis_standalone(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisDeployment]:
    """A plain redis-server: no password, no TLS. Shared: do not kill it."""
    yield from _deployment(lambda: start_standalone(tmp_path_factory.mktemp("redis-standalone")))


@pytest.fixture(scope="session")
def redis_password(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisDeployment]:
    """A redis-server with ``requirepass`` (``deployment.password``)."""
    yield from _deployment(
        lambda: start_standalone(tmp_path_factory.mktemp("redis-password"), password=REDIS_PASSWORD)
    )


@pytest.fixture(scope="session")
def redis_acl(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisDeployment]:
    """A redis-server with ACL user ``ticketlock`` limited to keys ``app:*`` (channels ``&*``).

    ``username``/``password`` are the ticketlock user's; the default user has a random
    password (``client(admin=True)`` uses it).
    """
    yield from _deployment(
        lambda: start_standalone(tmp_path_factory.mktemp("redis-acl"), acl_users=[ACL_RULE])
    )


@pytest.fixture(scope="session")
def redis_tls(
    tmp_path_factory: pytest.TempPathFactory, redis_tls_files: TlsFiles
) -> Iterator[RedisDeployment]:
    """A TLS-only redis-server (``tls-auth-clients no``): clients need only the CA."""
    yield from _deployment(
        lambda: start_standalone(tmp_path_factory.mktemp("redis-tls"), tls=redis_tls_files)
    )


@pytest.fixture(scope="session")
def redis_mtls(
    tmp_path_factory: pytest.TempPathFactory, redis_tls_files: TlsFiles
) -> Iterator[RedisDeployment]:
    """A TLS-only redis-server that requires a client certificate (``tls-auth-clients yes``)."""
    yield from _deployment(
        lambda: start_standalone(
            tmp_path_factory.mktemp("redis-mtls"), tls=redis_tls_files, tls_auth_clients=True
        )
    )


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisDeployment]:
    """A Redis Cluster of 3 masters covering all 16384 slots. Shared: do not kill nodes."""
    yield from _deployment(
        lambda: start_cluster(tmp_path_factory.mktemp("redis-cluster")), cli=True
    )


@pytest.fixture(scope="session")
def redis_sentinel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisDeployment]:
    """Master + replica + 3 sentinels (``mymaster``). Shared: fail over ``fresh_sentinel``."""
    yield from _deployment(lambda: start_sentinel(tmp_path_factory.mktemp("redis-sentinel")))


@pytest.fixture
def fresh_standalone(tmp_path: Path) -> Iterator[RedisDeployment]:
    """A plain redis-server of this test's own, free to kill, restart or pause."""
    yield from _deployment(lambda: start_standalone(tmp_path / "redis"))


@pytest.fixture
def fresh_sentinel(tmp_path: Path) -> Iterator[RedisDeployment]:
    """A sentinel deployment of this test's own, e.g. for ``failover_by_killing_master()``."""
    yield from _deployment(lambda: start_sentinel(tmp_path / "redis-sentinel"))
