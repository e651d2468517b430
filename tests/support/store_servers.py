"""ticketlock servers on every store, started once per session when a test first asks.

``STORE_KINDS`` names them: ``<store type>`` on a standalone Redis, or
``<store type>-cluster`` / ``<store type>-sentinel``; ``in_memory`` is the
session's in-memory server.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from harness.server import ServerProcess

STORE_KINDS = [
    "in_memory",
    "redis",
    "concurrent_redis",
    "redis-cluster",
    "concurrent_redis-cluster",
    "redis-sentinel",
    "concurrent_redis-sentinel",
]

DEPLOYMENT_FIXTURES = {
    "": "redis_standalone",
    "cluster": "redis_cluster",
    "sentinel": "redis_sentinel",
}

StoreServers = Callable[[str], ServerProcess]


@pytest.fixture(scope="session")
def store_servers(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[StoreServers]:
    """``store_servers(kind)``: a SERVING ticketlock server on that store, shared by the session."""
    started: dict[str, ServerProcess] = {}
    folder = tmp_path_factory.mktemp("endpoints")

    def get(kind: str) -> ServerProcess:
        if kind == "in_memory":
            server: ServerProcess = request.getfixturevalue("server")
            return server
        if kind not in started:
            store_type, _, mode = kind.partition("-")
            deployment = request.getfixturevalue(DEPLOYMENT_FIXTURES[mode])
            endpoints = deployment.write_endpoints(folder / f"{kind}.yml", store_type)
            process = ServerProcess(["--endpoints", str(endpoints), "--log-level", "warning"])
            started[kind] = process
            process.wait_serving()
        return started[kind]

    yield get
    for process in started.values():
        process.stop()
