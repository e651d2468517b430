"""The connection factory of the Redis stores: one asyncio redis-py client per store.

``deployment_mode`` picks the client: ``standard`` a plain ``Redis``, ``cluster`` a
``RedisCluster`` (sharded pub/sub, hash-tagged keys), ``sentinel`` a ``Redis``
bound to the master that the sentinels name, re-resolved when it fails over.

Commands are never retried by redis-py: a script that reached Redis before the
connection broke may have run, and running ``issue`` twice would leave a ghost
ticket in the queue. The caller gets UNAVAILABLE at once and decides.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import BlockingConnectionPool, SSLConnection
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import NoBackoff
from redis.retry import Retry

from ticketlock_server.config import RedisConfig

log = logging.getLogger(__name__)

RedisClient = aioredis.Redis | RedisCluster

# Connections to one Redis server. Calls beyond it wait for a free connection (up
# to socket_timeout) instead of failing, as redis-py's default pool would.
MAX_CONNECTIONS = 128
# Per cluster node; redis-py's cluster pools cannot wait, so this is a ceiling.
MAX_CLUSTER_CONNECTIONS = 512


class _BlockingSentinelPool(SentinelConnectionPool, BlockingConnectionPool):
    """The sentinel-managed pool, waiting for a free connection like BlockingConnectionPool."""


@dataclass(frozen=True)
class Connection:
    """A connected client and what the stores need to know about it."""

    client: RedisClient
    # Cluster mode publishes wake-ups with SPUBLISH to the slot of the conversation.
    sharded: bool
    # Where it points, for logs and errors (no secrets).
    where: str


def connection_kwargs(config: RedisConfig) -> dict[str, Any]:
    """Options shared by every connection to a Redis server (not to sentinels)."""
    kwargs: dict[str, Any] = {
        "socket_timeout": config.socket_timeout,
        "socket_connect_timeout": config.socket_timeout,
        "retry": Retry(NoBackoff(), 0),
    }
    if config.iam_enabled:
        from ticketlock_server.stores.iam import ElastiCacheIAMCredentialProvider

        assert config.username is not None and config.iam_cluster_name is not None
        kwargs["credential_provider"] = ElastiCacheIAMCredentialProvider(
            config.username, config.iam_cluster_name, config.iam_region
        )
    else:
        kwargs["username"] = config.username
        kwargs["password"] = config.password
    if config.use_ssl:
        kwargs.update(
            ssl=True,
            ssl_keyfile=config.ssl_keyfile,
            ssl_certfile=config.ssl_certfile,
            ssl_ca_certs=config.ssl_ca_certs,
            ssl_cert_reqs="required",
        )
    return kwargs


def connect(config: RedisConfig) -> Connection:
    """A client for ``config``; it connects lazily, on the first command."""
    kwargs = connection_kwargs(config)
    if config.deployment_mode == "cluster":
        nodes = [ClusterNode(host, port) for host, port in config.endpoints]
        where = "cluster " + ",".join(f"{h}:{p}" for h, p in config.endpoints)
        # db does not exist in a cluster (config already warned when it was set).
        cluster = RedisCluster(
            startup_nodes=nodes, max_connections=MAX_CLUSTER_CONNECTIONS, **kwargs
        )
        return Connection(cluster, True, where)
    if config.deployment_mode == "sentinel":
        sentinel_kwargs = {
            "socket_timeout": config.socket_timeout,
            "socket_connect_timeout": config.socket_timeout,
            "retry": Retry(NoBackoff(), 0),
        }
        sentinel = Sentinel(  # type: ignore[no-untyped-call]
            list(config.endpoints), sentinel_kwargs=sentinel_kwargs, **kwargs
        )
        client = sentinel.master_for(
            config.sentinel_service,
            connection_pool_class=_BlockingSentinelPool,
            db=config.db,
            max_connections=MAX_CONNECTIONS,
            timeout=config.socket_timeout,
        )
        where = f"sentinel service {config.sentinel_service} via " + ",".join(
            f"{h}:{p}" for h, p in config.endpoints
        )
        return Connection(client, False, where)
    pool = BlockingConnectionPool(
        host=config.host,
        port=config.port,
        db=config.db,
        max_connections=MAX_CONNECTIONS,
        timeout=config.socket_timeout,
        **_pool_kwargs(kwargs),
    )
    client = aioredis.Redis(connection_pool=pool)
    return Connection(client, False, f"{config.host}:{config.port}/{config.db}")


def _pool_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Client options as a pool takes them (it wants a connection class, not ``ssl=True``)."""
    options = dict(kwargs)
    if options.pop("ssl", False):
        options["connection_class"] = SSLConnection
    return options
