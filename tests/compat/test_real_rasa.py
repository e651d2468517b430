"""A real Rasa (Pro 3.21 and Open Source 3.6) drives ticketlock through its own code.

Each Rasa gets a cached virtualenv (tests/support/venvs.py) in which ONE pip run
resolved Rasa together with the checkout, and ``pip check`` is clean. Inside it,
tests/compat/rasa_scenario.py runs Rasa's own lock-store scenarios (endpoints.yml
-> ``read_endpoint_config`` -> ``LockStore.create`` -> ``Agent(lock_store=...)``,
Rasa's message-order and lock-error tests) against real ticketlock servers on the
in-memory, ``redis`` and ``concurrent_redis`` stores.

Rasa Pro resolves with the server extra, and its venv runs the servers too: the
server works on what Rasa Pro pins. Rasa Open Source 3.6 pins redis<5 while the
server needs redis 8, so its venv holds the client alone and the servers run from
the test's own environment. Both are also checked to resolve with the client alone.

First run: about 1.3 GB and 2 minutes per Rasa to download and install; after
that the venvs come from the cache (``$TICKETLOCK_CACHE``, ``~/.cache/ticketlock``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.redis_servers import RedisDeployment
from tests.support.server import ServerProcess
from tests.support.venvs import ROOT, Venv, cached_venv, run

pytestmark = [pytest.mark.slow, pytest.mark.real_rasa]

SCENARIO = Path(__file__).with_name("rasa_scenario.py")
STORES = ("in_memory", "redis", "concurrent_redis")
VENV_TIMEOUT = 1200
SCENARIO_TIMEOUT = 600
# Rasa's imports must not reach out to the network: no telemetry, no model price list.
QUIET_ENV = {
    "RASA_TELEMETRY_ENABLED": "false",
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
}


@dataclass(frozen=True)
class RasaFlavour:
    name: str
    requirement: str
    python: str
    extras: str  # what of the checkout is resolved with it
    servers_in_venv: bool


FLAVOURS = {
    "rasa-pro": RasaFlavour("rasa-pro", "rasa-pro==3.21.0", "3.11", "[server]", True),
    "rasa-oss": RasaFlavour("rasa-oss", "rasa==3.6.21", "3.10", "", False),
}


def rasa_venv(flavour: RasaFlavour) -> Venv:
    venv = cached_venv(
        flavour.name, flavour.python, [flavour.requirement, "{checkout}" + flavour.extras]
    )
    venv.pip("check")
    return venv


@pytest.fixture(scope="module", params=sorted(FLAVOURS))
def flavour(request: pytest.FixtureRequest) -> RasaFlavour:
    return FLAVOURS[str(request.param)]


@pytest.fixture(scope="module")
def venv(flavour: RasaFlavour) -> Venv:
    return rasa_venv(flavour)


@pytest.fixture(scope="module")
def servers(
    flavour: RasaFlavour,
    venv: Venv,
    redis_standalone: RedisDeployment,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[str, ServerProcess]]:
    """A SERVING server per store, from the Rasa venv when it has the server extra."""
    folder = tmp_path_factory.mktemp(f"{flavour.name}-endpoints")
    python = venv.python if flavour.servers_in_venv else None
    started: dict[str, ServerProcess] = {}
    try:
        for kind in STORES:
            args = ["--log-level", "warning"]
            if kind != "in_memory":
                endpoints = redis_standalone.write_endpoints(folder / f"{kind}.yml", kind)
                args += ["--endpoints", str(endpoints)]
            started[kind] = ServerProcess(args, python=python)
        for process in started.values():
            process.wait_serving()
        yield started
    finally:
        for process in started.values():
            process.stop()


@pytest.fixture(scope="module")
def report(
    venv: Venv, servers: dict[str, ServerProcess], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, object]:
    workdir = tmp_path_factory.mktemp("rasa-scenario")
    pairs = [f"{kind}={process.target}" for kind, process in servers.items()]
    env = {**os.environ, **QUIET_ENV}
    env.pop("PYTHONPATH", None)
    # Not from the source tree: ticketlock must come from the venv.
    run([venv.python, SCENARIO, workdir, *pairs], timeout=SCENARIO_TIMEOUT, env=env, cwd=workdir)
    result: dict[str, object] = json.loads((workdir / "report.json").read_text())
    return result


@pytest.mark.timeout(VENV_TIMEOUT)
def test_one_resolver_run_installs_rasa_with_the_checkout(flavour: RasaFlavour, venv: Venv) -> None:
    frozen = venv.pip("freeze")
    assert flavour.requirement in frozen.splitlines(), frozen
    assert any(line.startswith("ticketlock") for line in frozen.splitlines()), frozen
    where = run(
        [venv.python, "-c", "import ticketlock.rasa, ticketlock; print(ticketlock.__file__)"],
        timeout=120,
        cwd=venv.path,
    )
    assert Path(where.strip()).is_relative_to(venv.path), where


@pytest.mark.timeout(VENV_TIMEOUT)
def test_rasa_resolves_with_the_client_alone(flavour: RasaFlavour, venv: Venv) -> None:
    """``pip install <rasa> ticketlock`` (no extras) resolves, without installing it."""
    stamp = venv.path / ".ticketlock-client-alone"
    if not stamp.exists():
        report = json.loads(
            venv.pip(
                "install", "--quiet", "--dry-run", "--ignore-installed",
                "--report", "-", flavour.requirement, str(ROOT),
            )
        )  # fmt: skip
        names = {item["metadata"]["name"].lower() for item in report["install"]}
        assert {"ticketlock", flavour.requirement.split("==")[0]} <= names, names
        stamp.write_text(json.dumps(sorted(names)))
    assert "ticketlock" in json.loads(stamp.read_text())


@pytest.mark.timeout(VENV_TIMEOUT + SCENARIO_TIMEOUT)
@pytest.mark.parametrize("kind", STORES)
def test_rasa_builds_the_store_from_endpoints_yml(kind: str, report: dict[str, object]) -> None:
    store = report["stores"][kind]  # type: ignore[index]
    assert store["endpoint_type"] == "ticketlock.rasa.RemoteLockStore"
    assert store["store_class"] == "ticketlock.rasa.RemoteLockStore"
    assert store["agent_store_is_it"] is True


@pytest.mark.timeout(VENV_TIMEOUT + SCENARIO_TIMEOUT)
@pytest.mark.parametrize("kind", STORES)
def test_rasa_agent_processes_messages_in_arrival_order(
    kind: str, report: dict[str, object]
) -> None:
    """Rasa's test_message_order, every repetition: incoming and processed in order."""
    expected = [f"sender {i}" for i in range(10)]
    for run_ in report["stores"][kind]["orders"]:  # type: ignore[index]
        assert run_["incoming"] == expected
        assert run_["processed"] == expected, run_["processed"]
        # Rasa's own bound: no message waited for a poll interval it need not wait.
        assert run_["seconds"] < run_["rasa_time_limit"], run_


@pytest.mark.timeout(VENV_TIMEOUT + SCENARIO_TIMEOUT)
@pytest.mark.parametrize("kind", STORES)
def test_rasa_lock_error_is_raised_where_rasa_raises_it(
    kind: str, report: dict[str, object]
) -> None:
    """Rasa's test_lock_error: the waiter whose ticket expires gets Rasa's LockError."""
    outcome = report["stores"][kind]["lock_error"]  # type: ignore[index]
    assert outcome["raised"] is not None, "no error reached the caller"
    assert outcome["is_rasa_lock_error"], outcome


@pytest.mark.timeout(VENV_TIMEOUT + SCENARIO_TIMEOUT)
def test_versions_are_the_ones_rasa_resolves(
    flavour: RasaFlavour, report: dict[str, object]
) -> None:
    if flavour.name == "rasa-pro":
        assert report["rasa"] == "3.21.0"
        assert str(report["grpcio"]).startswith("1.84.")
        assert str(report["protobuf"]).startswith("7.36.")
        assert str(report["python"]).startswith("3.11.")
    else:
        assert report["rasa"] == "3.6.21"
        assert report["protobuf"] == "4.23.3"
        assert str(report["python"]).startswith("3.10.")
