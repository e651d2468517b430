"""deploy/kubernetes/: the manifests validate against the Kubernetes JSON schemas
(offline, from the kubernetes-validate package), and what they promise holds."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import grpc
import kubernetes_validate
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc
from ticketlock_server.config import load_store_config

from tests.support.server import ServerProcess, free_port

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = sorted((ROOT / "deploy" / "kubernetes").rglob("*.yaml"))
# The oldest version the manifests need (native sidecars, preStop sleep), and the
# newest the package knows.
VERSIONS = ("1.30.0", kubernetes_validate.latest_version())


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def by_kind(kind: str) -> list[tuple[Path, dict[str, Any]]]:
    return [(path, doc) for path in MANIFESTS for doc in documents(path) if doc["kind"] == kind]


def test_there_are_manifests_for_both_topologies() -> None:
    names = {path.relative_to(ROOT / "deploy" / "kubernetes").as_posix() for path in MANIFESTS}
    assert {"shared/deployment.yaml", "shared/service.yaml", "shared/pdb.yaml",
            "sidecar/rasa-with-ticketlock.yaml"} <= names  # fmt: skip


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifest_validates_strictly(path: Path, version: str) -> None:
    for document in documents(path):
        kubernetes_validate.validate(document, version, strict=True)


def test_validation_catches_a_broken_manifest() -> None:
    (_, deployment), *_ = by_kind("Deployment")
    broken = copy.deepcopy(deployment)
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["grpc"]["port"] = "x"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, VERSIONS[0], strict=True)
    unknown = copy.deepcopy(deployment)
    unknown["spec"]["template"]["spec"]["terminationGracePeriod"] = 30
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(unknown, VERSIONS[0], strict=True)


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_each_file_says_when_to_use_it(path: Path) -> None:
    assert "When to use it" in path.read_text().split("apiVersion:")[0]


def _env(container: dict[str, Any]) -> dict[str, str]:
    return {item["name"]: item.get("value", "") for item in container.get("env", [])}


def test_shared_deployment_probes_grace_and_budget() -> None:
    (_, deployment), *_ = [(p, d) for p, d in by_kind("Deployment") if "shared" in p.parts]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert deployment["spec"]["replicas"] >= 2
    assert container["readinessProbe"]["grpc"] == {"port": 50051}
    assert container["livenessProbe"]["grpc"] == {"port": 50051, "service": "liveness"}
    grace = float(_env(container)["TICKETLOCK_GRACE"])
    pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pod["terminationGracePeriodSeconds"] > grace + pre_stop
    (_, budget), *_ = by_kind("PodDisruptionBudget")
    assert budget["spec"]["selector"] == deployment["spec"]["selector"]
    assert budget["spec"]["minAvailable"] < deployment["spec"]["replicas"]
    (_, service), *_ = by_kind("Service")
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]


def _config_maps() -> dict[str, str]:
    entries: dict[str, str] = {}
    for _, config_map in by_kind("ConfigMap"):
        entries.update(config_map["data"])
    return entries


def test_the_store_sections_load_as_redis(tmp_path: Path) -> None:
    env = {"REDIS_HOST": "redis", "REDIS_PASSWORD": "p"}
    for name in ("endpoints.yml", "ticketlock-endpoints.yml"):
        path = tmp_path / name
        path.write_text(_config_maps()[name])
        store = load_store_config(str(path), env)
        assert store.kind == "redis" and store.redis is not None
        assert store.redis.host == "redis"


def test_sidecar_is_on_a_shared_store_over_localhost_with_the_warning() -> None:
    path = ROOT / "deploy" / "kubernetes" / "sidecar" / "rasa-with-ticketlock.yaml"
    text = path.read_text()
    assert "no exclusion across pods" in text
    rasa_endpoints = yaml.safe_load(_config_maps()["rasa-endpoints.yml"])
    assert rasa_endpoints["lock_store"] == {
        "type": "ticketlock.rasa.RemoteLockStore",
        "url": "localhost:50051",
    }
    (_, deployment), *_ = [(p, d) for p, d in by_kind("Deployment") if "sidecar" in p.parts]
    (sidecar,) = deployment["spec"]["template"]["spec"]["initContainers"]
    assert sidecar["restartPolicy"] == "Always"
    assert _env(sidecar)["TICKETLOCK_LISTEN"] == "127.0.0.1:50051"


def _health(target: str, service: str) -> int:
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return int(stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status)


def test_liveness_stays_serving_while_the_store_is_down(tmp_path: Path) -> None:
    """What the probes rely on: readiness follows the store, liveness the process."""
    endpoints = tmp_path / "endpoints.yml"
    # Nothing listens on this port: the store is down from the start.
    endpoints.write_text(
        f"lock_store:\n  type: redis\n  host: 127.0.0.1\n  port: {free_port()}\n"
        "  socket_timeout: 1\n"
    )
    server = ServerProcess(["--endpoints", str(endpoints)])
    try:
        import time

        deadline = time.monotonic() + 20
        while True:
            try:
                if _health(server.target, "liveness") == health_pb2.HealthCheckResponse.SERVING:
                    break
            except grpc.RpcError:
                pass
            assert time.monotonic() < deadline, server.log
            time.sleep(0.1)
        assert _health(server.target, "") == health_pb2.HealthCheckResponse.NOT_SERVING
    finally:
        server.stop()
