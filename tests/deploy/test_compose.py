"""deploy/compose.yaml, run as local processes (no Docker engine runs here).

Each service's entrypoint and command are started as a process with that
service's environment. What Docker would provide is rewritten to this machine:
- every port a service exposes gets a free loopback port: ``0.0.0.0:P`` and a
  bare ``P`` in that service's own command or environment, and ``service:P``
  anywhere, point at it; a ``NAME_HOST: service`` / ``NAME_PORT: P`` pair of
  variables becomes ``127.0.0.1`` and that port;
- ``0.0.0.0`` becomes ``127.0.0.1`` (only loopback is ever used);
- a path a volume mounts becomes the file beside compose.yaml;
- ``python`` and the server's commands come from this test's virtualenv.
Services start in ``depends_on`` order, each once its healthcheck passes (run the
same way); the client service must then exit 0 after its lock cycle.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.server import free_port

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "compose.yaml"
LOOPBACK = "127.0.0.1"
STEP_TIMEOUT = 60.0


@dataclass
class Service:
    name: str
    spec: dict[str, Any]
    ports: dict[str, int] = field(default_factory=dict)

    @property
    def exposed(self) -> list[str]:
        return [str(port) for port in self.spec.get("expose", [])]


def load() -> dict[str, Service]:
    document = yaml.safe_load(COMPOSE.read_text())
    services = {name: Service(name, spec) for name, spec in document["services"].items()}
    for service in services.values():
        service.ports = {port: free_port() for port in service.exposed}
    return services


def localize(text: str, service: Service, services: dict[str, Service]) -> str:
    for other in services.values():
        for port, local in other.ports.items():
            text = re.sub(rf"\b{re.escape(other.name)}:{port}\b", f"{LOOPBACK}:{local}", text)
    for port, local in service.ports.items():
        text = re.sub(rf"(0\.0\.0\.0|\[::\]):{port}\b", f"{LOOPBACK}:{local}", text)
        if text == port:
            text = str(local)
    text = text.replace("0.0.0.0", LOOPBACK)
    for volume in service.spec.get("volumes", []):
        source, target = volume.split(":")[:2]
        text = text.replace(target, str((DEPLOY / source).resolve()))
    return text


def environment(service: Service, services: dict[str, Service], path: str) -> dict[str, str]:
    declared = {key: str(value) for key, value in (service.spec.get("environment") or {}).items()}
    env = {key: localize(value, service, services) for key, value in declared.items()}
    for key, value in declared.items():
        if key.endswith("_HOST") and value in services:
            port_key = key[: -len("_HOST")] + "_PORT"
            env[key] = LOOPBACK
            if port_key in declared:
                env[port_key] = str(services[value].ports[declared[port_key]])
    full = {k: v for k, v in os.environ.items() if not k.startswith("TICKETLOCK_")}
    full.update(env)
    full["PATH"] = path
    return full


def command(service: Service, services: dict[str, Service], path: str) -> list[str]:
    words = [*service.spec.get("entrypoint", []), *service.spec.get("command", [])]
    argv = [localize(str(word), service, services) for word in words]
    argv[0] = shutil.which(argv[0], path=path) or argv[0]
    return argv


def start_order(services: dict[str, Service]) -> list[Service]:
    ordered: list[Service] = []

    def visit(name: str) -> None:
        if services[name] in ordered:
            return
        for dependency in services[name].spec.get("depends_on") or {}:
            visit(dependency)
        ordered.append(services[name])

    for name in services:
        visit(name)
    return ordered


def wait_healthy(service: Service, services: dict[str, Service], path: str,
                 process: subprocess.Popen[bytes], log: Path) -> None:  # fmt: skip
    test = service.spec["healthcheck"]["test"]
    assert test[0] == "CMD", f"{service.name}: healthcheck must be exec form"
    probe = [localize(str(word), service, services) for word in test[1:]]
    probe[0] = shutil.which(probe[0], path=path) or probe[0]
    env = environment(service, services, path)
    deadline = time.monotonic() + STEP_TIMEOUT
    while True:
        if process.poll() is not None:
            pytest.fail(f"{service.name} exited with {process.returncode}:\n{log.read_text()}")
        result = subprocess.run(probe, env=env, capture_output=True, timeout=30, check=False)
        if result.returncode == 0:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"{service.name} never healthy: {result.stdout!r} {result.stderr!r}")
        time.sleep(0.1)


def test_compose_file_says_when_to_use_it() -> None:
    head = COMPOSE.read_text().split("\nname:")[0]
    assert "When to use it" in head


def test_compose_topology_runs_a_lock_cycle_through_both_replicas() -> None:
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is needed (apt-get install redis-server)")
    services = load()
    assert {"redis", "ticketlock-a", "ticketlock-b", "client"} <= set(services)
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    running: list[tuple[Service, subprocess.Popen[bytes]]] = []
    logs: dict[str, Path] = {}
    try:
        for service in start_order(services):
            argv = command(service, services, path)
            # The machine's own Redis on 6379 is never used.
            assert all("6379" not in word for word in argv[1:]), argv
            log = Path(tempfile.mkstemp(prefix=f"compose-{service.name}-", suffix=".log")[1])
            logs[service.name] = log
            process = subprocess.Popen(
                argv, env=environment(service, services, path),
                stdout=log.open("wb"), stderr=subprocess.STDOUT,
            )  # fmt: skip
            running.append((service, process))
            if "healthcheck" in service.spec:
                wait_healthy(service, services, path, process, log)
        client = dict((s.name, p) for s, p in running)["client"]
        assert client.wait(STEP_TIMEOUT) == 0, logs["client"].read_text()
        output = logs["client"].read_text()
        a, b = (
            f"{LOOPBACK}:{services[n].ports['50051']}" for n in ("ticketlock-a", "ticketlock-b")
        )
        assert f"{a}: holds ticket" in output
        assert f"{b}: acquired after the release on {a}" in output
        assert "lock cycle through both replicas: ok" in output
        # Each replica serves its metrics on its own port.
        import urllib.request

        for name in ("ticketlock-a", "ticketlock-b"):
            port = services[name].ports["9100"]
            with urllib.request.urlopen(f"http://{LOOPBACK}:{port}/metrics", timeout=5) as page:
                assert b"ticketlock_store_up 1.0" in page.read()
    finally:
        for _, process in reversed(running):
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(15)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        for log in logs.values():
            log.unlink(missing_ok=True)
