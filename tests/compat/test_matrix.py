"""The client tests at both ends of the supported range, on Python 3.10 to 3.13.

Each case is a cached virtualenv (tests/support/venvs.py) holding the checkout
with its ``server``, ``iam`` and ``test`` extras, in which the client tests and
the client-server contract tests run (standalone Redis only: Cluster and Sentinel
add minutes and nothing version-specific):

- ``floors`` (Python 3.10): every runtime requirement pinned to the floor that
  ``pyproject.toml`` declares (read from it, so the two cannot drift): protobuf
  4.23.3 (what Rasa Open Source 3.6 pins), grpcio 1.64.0, and so on;
- ``newest`` (Python 3.13): whatever pip resolves today (the venv is rebuilt daily);
- ``newest`` (Python 3.12): the same, client tests only.

Python 3.11 with the newest releases is the main suite's own environment, and
Python 3.11 with Rasa Pro's pins (grpcio 1.84, protobuf 7.36) is tested by
tests/compat/test_real_rasa.py.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import pytest
import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.support.venvs import ROOT, Venv, cached_venv, run

pytestmark = [pytest.mark.slow, pytest.mark.matrix]

RUNTIME_GROUPS = ("server", "iam")  # with the plain dependencies
VENV_TIMEOUT = 900
TESTS_TIMEOUT = 900
CLIENT_TESTS = ["tests/client"]
CONTRACT_TESTS = ["tests/e2e/test_contract.py", "-k", "not cluster and not sentinel"]


def declared_floors() -> dict[str, str]:
    """``{distribution: floor}`` of every runtime requirement in pyproject.toml."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    texts = list(project["dependencies"])
    for group in RUNTIME_GROUPS:
        texts += project["optional-dependencies"][group]
    floors: dict[str, str] = {}
    for text in texts:
        requirement = Requirement(text)
        if canonicalize_name(requirement.name) == "ticketlock":
            continue
        lower = [spec.version for spec in requirement.specifier if spec.operator == ">="]
        assert len(lower) == 1, f"{text}: every runtime requirement declares one floor (>=)"
        floors[canonicalize_name(requirement.name)] = lower[0]
    return floors


@dataclass(frozen=True)
class Case:
    name: str
    python: str
    floors: bool
    tests: tuple[str, ...]

    def venv(self) -> Venv:
        pins = [f"{name}=={version}" for name, version in declared_floors().items()]
        return cached_venv(
            f"matrix-{self.name}-py{self.python}",
            self.python,
            ["{checkout}[server,iam,test]"],
            constraints=pins if self.floors else (),
            daily=not self.floors,
        )


CASES = [
    Case("floors", "3.10", True, (*CLIENT_TESTS, *CONTRACT_TESTS)),
    Case("newest", "3.13", False, (*CLIENT_TESTS, *CONTRACT_TESTS)),
    Case("newest", "3.12", False, tuple(CLIENT_TESTS)),
]


def installed_versions(venv: Venv) -> dict[str, str]:
    frozen = venv.pip("list", "--format=freeze")
    pairs = (line.split("==", 1) for line in frozen.splitlines() if "==" in line)
    return {canonicalize_name(name): version for name, version in pairs}


def test_every_runtime_requirement_declares_a_floor() -> None:
    floors = declared_floors()
    assert floors["protobuf"] == "4.23.3"  # Rasa Open Source 3.6 pins it
    assert {"grpcio", "protobuf", "grpcio-health-checking", "redis", "botocore"} <= set(floors)


@pytest.mark.timeout(VENV_TIMEOUT + TESTS_TIMEOUT)
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c.name}-py{c.python}")
def test_client_tests_pass(case: Case) -> None:
    venv = case.venv()
    versions = installed_versions(venv)
    if case.floors:
        for name, floor in declared_floors().items():
            assert versions.get(name) == floor, f"{name}: {versions.get(name)} installed, {floor=}"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{venv.path / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    # The checkout's tests, but ticketlock from the venv (client/ is not on sys.path).
    where = run(
        [
            venv.python,
            "-c",
            "import ticketlock, ticketlock_server as s; print(ticketlock.__file__)",
        ],
        timeout=120,
        cwd=ROOT,
        env=env,
    )
    assert os.path.realpath(where.strip()).startswith(os.path.realpath(venv.path)), where
    output = run(
        [venv.python, "-m", "pytest", "-q", "-p", "no:cacheprovider", *case.tests],
        timeout=TESTS_TIMEOUT,
        cwd=ROOT,
        env=env,
    )
    summary = output.strip().splitlines()[-1]
    print(f"{case.name} py{case.python}: grpcio {versions['grpcio']}, protobuf "
          f"{versions['protobuf']}: {summary}")  # fmt: skip
    assert " passed" in summary and "failed" not in summary, output[-3000:]
