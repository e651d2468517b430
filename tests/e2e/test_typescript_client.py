"""The TypeScript example client (examples/typescript) runs a full lock cycle.

Its code is generated from the proto by the TypeScript plugin of buf.gen.yaml
(ts-proto from tools/, run locally by buf), type-checked and compiled by tsc,
and run with Node.js against a real server. Dependencies come from the committed
package-lock.json files through ``npm ci``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from ticketlock import LockClient

from tests.support.npm import npm_ci, require_executable
from tests.support.server import ServerProcess, free_port

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "typescript"
TOOLS = ROOT / "tools"
STEP_TIMEOUT = 120.0


def run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, cwd=cwd, capture_output=True, text=True, timeout=STEP_TIMEOUT, check=False
    )


def typescript_template() -> str:
    """buf.gen.yaml with its TypeScript plugin only (the Go plugins are not needed here)."""
    template = yaml.safe_load((ROOT / "buf.gen.yaml").read_text())
    template["plugins"] = [p for p in template["plugins"] if "ts_proto" in p["local"]]
    assert len(template["plugins"]) == 1, "buf.gen.yaml must hold one ts-proto plugin"
    return json.dumps(template)


@pytest.fixture(scope="session")
def compiled() -> Path:
    """examples/typescript generated, installed and compiled to dist/."""
    buf = npm_ci(TOOLS) / ".bin" / "buf"
    generated = EXAMPLE / "src" / "gen"
    shutil.rmtree(generated, ignore_errors=True)
    result = run([str(buf), "generate", "--template", typescript_template()], ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (generated / "ticketlock" / "v1" / "lock_service.ts").is_file()
    npm_ci(EXAMPLE)
    shutil.rmtree(EXAMPLE / "dist", ignore_errors=True)
    result = run([str(EXAMPLE / "node_modules" / ".bin" / "tsc"), "-p", "."], EXAMPLE)
    assert result.returncode == 0, f"tsc failed:\n{result.stdout}{result.stderr}"
    return EXAMPLE / "dist" / "lock_cycle.js"


def lock_cycle(script: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run([require_executable("node"), str(script), *args], EXAMPLE)


def test_typescript_client_runs_a_lock_cycle_with_a_streaming_wait(
    compiled: Path, server: ServerProcess
) -> None:
    cid = f"ts-{uuid.uuid4().hex}"
    result = lock_cycle(compiled, server.target, cid)
    assert result.returncode == 0, result.stdout + result.stderr
    (line,) = result.stdout.strip().splitlines()
    summary: dict[str, Any] = json.loads(line)
    assert summary["ok"] is True and summary["target"] == server.target
    assert summary["conversationId"] == cid
    assert (summary["holderTicket"], summary["waiterTicket"]) == (0, 1)
    assert summary["waiterQueuedBehind"] == 1
    assert summary["order"] == [
        "holder:acquired:0",
        "waiter:queued:1:ahead=1",
        "holder:released",
        "waiter:acquired:1",
        "waiter:released",
    ]
    with LockClient(server.target) as client:
        assert client.get_lock(cid) is None


def test_typescript_client_fails_clearly_without_a_server(compiled: Path) -> None:
    result = lock_cycle(compiled, f"127.0.0.1:{free_port()}")
    assert result.returncode == 1
    assert result.stdout == ""
    assert "lock_cycle: holder: UNAVAILABLE" in result.stderr


def test_tsc_checks_the_example_against_the_generated_types(compiled: Path, tmp_path: Path) -> None:
    """A field name the proto does not have is a compile error, not a runtime surprise."""
    copy = tmp_path / "example"
    shutil.copytree(EXAMPLE, copy, ignore=shutil.ignore_patterns("node_modules", "dist"))
    (copy / "node_modules").symlink_to(EXAMPLE / "node_modules")
    source = copy / "src" / "lock_cycle.ts"
    text = source.read_text()
    assert "{ acquire: { conversationId, lifetimeSeconds: 30 } }" in text
    source.write_text(text.replace("{ acquire: { conversationId, lifetimeSeconds: 30 } }",
                                   "{ acquire: { conversation: conversationId } }", 1))  # fmt: skip
    result = run([str(EXAMPLE / "node_modules" / ".bin" / "tsc"), "-p", ".", "--noEmit"], copy)
    assert result.returncode != 0
    assert "conversation" in result.stdout
