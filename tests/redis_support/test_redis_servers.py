"""The Redis test infrastructure itself: every deployment starts, answers, and enforces what
it claims to (password, ACL, TLS, client certificates); the cluster covers all slots; a
sentinel failover promotes the replica."""

from __future__ import annotations

import socket
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml
from ticketlock_server.config import load_store_config

from harness.redis_servers import (
    CLUSTER_SLOTS,
    FORBIDDEN_PORTS,
    RedisDeployment,
    RedisProcess,
    RedisServerError,
    TlsFiles,
    free_port,
    no_retry,
    tls_supported,
)
from tests.support.redis_fixtures import ACL_PASSWORD, ACL_USER, REDIS_PASSWORD


def raw(port: int, host: str = "127.0.0.1", **kw: Any) -> redis.Redis:
    """A client built by hand (not by the infrastructure), failing fast."""
    return redis.Redis(host=host, port=port, socket_timeout=2, retry=no_retry(), **kw)


def key(prefix: str = "app:") -> str:
    return f"{prefix}{uuid.uuid4().hex}"


def store_config(deployment: RedisDeployment, tmp_path: Path, **extra: Any) -> Any:
    path = deployment.write_endpoints(tmp_path / "endpoints.yml", **extra)
    return load_store_config(str(path), {}).redis


# --------------------------------------------------------------------------- ports & processes


def test_free_port_is_bindable_and_not_the_machines_redis() -> None:
    for _ in range(20):
        port = free_port()
        assert port not in FORBIDDEN_PORTS
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))


def test_free_port_for_a_cluster_node_has_a_free_bus_port() -> None:
    port = free_port(cluster_bus=True)
    assert port + 10000 <= 65535
    with socket.socket() as a, socket.socket() as b:
        a.bind(("127.0.0.1", port))
        b.bind(("127.0.0.1", port + 10000))


def test_the_machines_redis_port_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="reserved"):
        RedisProcess(tmp_path, port=6379)


def test_a_bad_config_fails_start_with_the_log_tail(tmp_path: Path) -> None:
    process = RedisProcess(tmp_path, config=["no-such-directive yes"])
    with pytest.raises(RedisServerError, match="Bad directive") as failure:
        process.start()
    assert "exited with" in str(failure.value)
    assert not process.running


def test_start_moves_to_another_port_when_its_port_is_taken(tmp_path: Path) -> None:
    process = RedisProcess(tmp_path)
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", process.port))
        blocker.listen()
        taken = process.port
        process.start()
        try:
            assert process.port != taken
            assert process.client().ping()
        finally:
            process.stop()
    assert not process.running


def test_kill_and_restart_on_the_same_port(fresh_standalone: RedisDeployment) -> None:
    process = fresh_standalone.processes[0]
    client = fresh_standalone.client()
    name = key()
    client.set(name, "before")
    port, pid = process.port, process.pid
    process.kill()
    assert not process.running
    with pytest.raises(redis.ConnectionError):
        client.ping()
    process.restart()
    assert (process.port, fresh_standalone.port) == (port, port)
    assert process.pid != pid
    assert client.get(name) is None  # no persistence: a restarted Redis is empty
    assert client.set(name, "after")


def test_pause_makes_it_hang_and_resume_brings_it_back(fresh_standalone: RedisDeployment) -> None:
    process = fresh_standalone.processes[0]
    process.pause()
    try:
        with pytest.raises(redis.TimeoutError):
            process.client(socket_timeout=0.3).ping()
    finally:
        process.resume()
    assert process.client().ping()


def test_stop_terminates_every_process(fresh_standalone: RedisDeployment) -> None:
    process = fresh_standalone.processes[0]
    fresh_standalone.stop()
    assert not process.running
    assert process.process is not None and process.process.returncode is not None
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", process.port))  # the port is free again


# --------------------------------------------------------------------------- standalone


def test_standalone_answers(redis_standalone: RedisDeployment) -> None:
    client = redis_standalone.client(decode_responses=True)
    name = key()
    assert client.set(name, "v", ex=60)
    assert client.get(name) == "v"
    assert client.execute_command("ROLE")[0] == "master"
    assert redis_standalone.port not in FORBIDDEN_PORTS
    assert redis_standalone.endpoints == []


def test_standalone_section(redis_standalone: RedisDeployment, tmp_path: Path) -> None:
    section = redis_standalone.lock_store_section(key_prefix="abc", concurrent_mode=True)
    assert section == {
        "type": "redis",
        "host": "127.0.0.1",
        "port": redis_standalone.port,
        "db": 1,
        "deployment_mode": "standard",
        "socket_timeout": 2,
        "key_prefix": "abc",
        "concurrent_mode": True,
    }
    path = redis_standalone.write_endpoints(tmp_path / "endpoints.yml", "concurrent_redis")
    assert yaml.safe_load(path.read_text())["lock_store"]["type"] == "concurrent_redis"
    config = load_store_config(str(path), {}).redis
    assert config is not None and config.concurrent
    assert (config.host, config.port, config.db) == ("127.0.0.1", redis_standalone.port, 1)


def test_client_uses_the_sections_db(redis_standalone: RedisDeployment) -> None:
    name = key()
    redis_standalone.client().set(name, "1", ex=60)
    assert redis_standalone.client(db=0).get(name) is None
    assert redis_standalone.processes[0].client(db=1).get(name) == b"1"


def test_flush_empties_only_that_deployment(
    fresh_standalone: RedisDeployment, redis_standalone: RedisDeployment
) -> None:
    name = key()
    fresh_standalone.client().set(name, "1")
    fresh_standalone.client(db=0).set(name, "1")
    redis_standalone.client().set(name, "1", ex=60)
    fresh_standalone.flush()
    assert fresh_standalone.processes[0].client().dbsize() == 0
    assert fresh_standalone.client().dbsize() == 0
    assert redis_standalone.client().get(name) == b"1"


# --------------------------------------------------------------------------- auth


def test_password_is_enforced(redis_password: RedisDeployment, tmp_path: Path) -> None:
    assert redis_password.password == REDIS_PASSWORD
    assert redis_password.client().ping()
    with pytest.raises(redis.AuthenticationError):
        raw(redis_password.port).ping()
    with pytest.raises(redis.AuthenticationError):
        redis_password.client(password="wrong").ping()
    config = store_config(redis_password, tmp_path)
    assert (config.password, config.username) == (REDIS_PASSWORD, None)


def test_acl_user_is_restricted_to_its_keys(redis_acl: RedisDeployment, tmp_path: Path) -> None:
    client = redis_acl.client(decode_responses=True)
    assert client.acl_whoami() == ACL_USER
    name = key("app:")
    assert client.set(name, "1", ex=60)
    assert client.get(name) == "1"
    with pytest.raises(redis.exceptions.NoPermissionError):
        client.set(key("other:"), "1")
    assert redis_acl.client(admin=True).get(key("other:")) is None  # the admin may
    with pytest.raises(redis.AuthenticationError):
        raw(redis_acl.port).ping()
    with pytest.raises(redis.AuthenticationError):
        redis_acl.client(password="wrong").ping()
    section = redis_acl.lock_store_section()
    assert (section["username"], section["password"]) == (ACL_USER, ACL_PASSWORD)
    config = store_config(redis_acl, tmp_path)
    assert (config.username, config.password) == (ACL_USER, ACL_PASSWORD)


# --------------------------------------------------------------------------- TLS


def test_this_redis_server_build_supports_tls() -> None:
    assert tls_supported()


def test_tls_is_enforced(
    redis_tls: RedisDeployment, redis_tls_files: TlsFiles, tmp_path: Path
) -> None:
    assert redis_tls.client().ping()
    port, ca = redis_tls.port, str(redis_tls_files.ca_cert)
    with pytest.raises(redis.ConnectionError):
        raw(port).ping()  # no plain-text port at all
    with pytest.raises(redis.ConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
        raw(port, ssl=True).ping()  # the server's cert is from our private CA
    assert raw(port, ssl=True, ssl_ca_certs=ca).ping()
    assert raw(port, host="localhost", ssl=True, ssl_ca_certs=ca).ping()  # DNS:localhost SAN
    section = redis_tls.lock_store_section()
    assert section["use_ssl"] is True
    assert section["ssl_ca_certs"] == str(redis_tls_files.ca_cert)
    assert "ssl_certfile" not in section and "ssl_keyfile" not in section
    config = store_config(redis_tls, tmp_path)
    assert config.use_ssl and config.ssl_ca_certs == str(redis_tls_files.ca_cert)


def test_mtls_requires_a_client_certificate(
    redis_mtls: RedisDeployment, redis_tls_files: TlsFiles, tmp_path: Path
) -> None:
    assert redis_mtls.client().ping()
    tls: dict[str, Any] = {"ssl": True, "ssl_ca_certs": str(redis_tls_files.ca_cert)}
    with pytest.raises(redis.ConnectionError):
        raw(redis_mtls.port, **tls).ping()  # TLS, but no client certificate
    with pytest.raises(redis.ConnectionError):
        raw(redis_mtls.port).ping()
    certified = raw(
        redis_mtls.port,
        **tls,
        ssl_certfile=str(redis_tls_files.client_cert),
        ssl_keyfile=str(redis_tls_files.client_key),
    )
    assert certified.ping()
    config = store_config(redis_mtls, tmp_path)
    assert config.ssl_certfile == str(redis_tls_files.client_cert)
    assert config.ssl_keyfile == str(redis_tls_files.client_key)


# --------------------------------------------------------------------------- cluster


def test_cluster_is_ok_with_three_masters_covering_all_slots(
    redis_cluster: RedisDeployment,
) -> None:
    assert len(redis_cluster.processes) == 3
    assert redis_cluster.endpoints == [p.address for p in redis_cluster.processes]
    for node in redis_cluster.processes:
        client = node.client(decode_responses=True)
        info = client.execute_command("CLUSTER", "INFO")
        if isinstance(info, str):
            info = dict(line.split(":", 1) for line in info.split() if ":" in line)
        assert info["cluster_state"] == "ok"
        assert int(info["cluster_known_nodes"]) == 3
        assert int(info["cluster_size"]) == 3
        assert int(info["cluster_slots_assigned"]) == CLUSTER_SLOTS
        assert client.execute_command("ROLE")[0] == "master"
        ranges = client.execute_command("CLUSTER", "SLOTS")
        covered = sorted((int(r[0]), int(r[1])) for r in ranges)
        assert sum(end - start + 1 for start, end in covered) == CLUSTER_SLOTS
        assert covered[0][0] == 0 and covered[-1][1] == CLUSTER_SLOTS - 1
        assert {int(r[2][1]) for r in ranges} == {p.port for p in redis_cluster.processes}


def test_cluster_client_spreads_keys_over_the_masters(
    redis_cluster: RedisDeployment, tmp_path: Path
) -> None:
    client = redis_cluster.client()
    assert isinstance(client, redis.RedisCluster)
    prefix = key()
    names = [f"{prefix}:{i}" for i in range(30)]
    for name in names:
        client.set(name, "1", ex=60)
    holders = {node.port for node in redis_cluster.processes if node.client().keys(f"{prefix}:*")}
    assert len(holders) == 3
    section = redis_cluster.lock_store_section()
    assert "db" not in section
    assert section["deployment_mode"] == "cluster"
    assert section["endpoints"] == redis_cluster.endpoints
    config = store_config(redis_cluster, tmp_path)
    assert config.deployment_mode == "cluster"
    assert [f"{h}:{p}" for h, p in config.endpoints] == redis_cluster.endpoints
    redis_cluster.flush()
    assert all(node.client().dbsize() == 0 for node in redis_cluster.processes)


# --------------------------------------------------------------------------- sentinel


def test_sentinel_deployment_is_ready(redis_sentinel: RedisDeployment, tmp_path: Path) -> None:
    deployment = redis_sentinel
    assert deployment.master is not None and deployment.replica is not None
    assert len(deployment.sentinels) == 3
    assert deployment.endpoints == [s.address for s in deployment.sentinels]
    master = (deployment.master.host, deployment.master.port)
    for sentinel in deployment.sentinels:
        client = sentinel.client(decode_responses=True)
        assert client.sentinel_get_master_addr_by_name("mymaster") == master
        assert len(client.sentinel_sentinels("mymaster")) == 2
        assert [r["port"] for r in client.sentinel_slaves("mymaster")] == [deployment.replica.port]
        assert client.execute_command("SENTINEL", "CKQUORUM", "mymaster")
    assert deployment.replica.client().execute_command("ROLE")[0] in ("slave", b"slave")

    name = key()
    client = deployment.client()
    client.set(name, "1", ex=60)
    assert client.wait(1, 2000) == 1
    assert deployment.replica.client(db=deployment.db).get(name) == b"1"

    section = deployment.lock_store_section()
    assert section["sentinel_service"] == "mymaster"
    assert section["endpoints"] == deployment.endpoints
    config = store_config(deployment, tmp_path)
    assert config.deployment_mode == "sentinel" and config.sentinel_service == "mymaster"


def test_sentinel_failover_promotes_the_replica(fresh_sentinel: RedisDeployment) -> None:
    deployment = fresh_sentinel
    old_master, old_replica = deployment.master, deployment.replica
    assert old_master is not None and old_replica is not None
    name = key()
    deployment.client().set(name, "1")
    assert deployment.client().wait(1, 2000) == 1

    elapsed = deployment.failover_by_killing_master(timeout=30)

    assert elapsed < 15
    assert not old_master.running
    assert (deployment.master, deployment.replica) == (old_replica, old_master)
    assert old_replica.client().execute_command("ROLE")[0] in ("master", b"master")
    master_address = (old_replica.host, old_replica.port)
    for sentinel in deployment.sentinels:
        got = sentinel.client(decode_responses=True).sentinel_get_master_addr_by_name("mymaster")
        assert got == master_address
    assert deployment.sentinel_client().discover_master("mymaster") == master_address
    client = deployment.client()
    assert client.get(name) == b"1"  # replicated before the failover
    assert client.set(key(), "2")

    # The killed master comes back on its old port (as a master with no data, until the
    # sentinels reconfigure it as a replica, which they only do after about 8 s).
    old_master.restart()
    assert old_master.port == deployment.port
    assert old_master.client().ping()
