"""The Node.js example client (examples/node) runs a full lock cycle on a real server.

Its dependencies (@grpc/grpc-js, @grpc/proto-loader) come from the committed
package-lock.json through ``npm ci``, once per test session, into
examples/node/node_modules.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest
from ticketlock import LockClient

from harness.server import ServerProcess, free_port
from tests.support.npm import npm_ci, require_executable

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "node"
NODE_TIMEOUT = 60.0


@pytest.fixture(scope="session")
def node_example() -> Path:
    """examples/node with its node_modules installed."""
    npm_ci(EXAMPLE)
    return EXAMPLE


def run_lock_cycle(
    *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    node = require_executable("node")
    return subprocess.run(
        [node, "lock_cycle.js", *args],
        cwd=EXAMPLE,
        capture_output=True,
        text=True,
        timeout=NODE_TIMEOUT,
        env={**os.environ, **(env or {})},
        check=False,
    )


def summary_of(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert result.returncode == 0, (
        f"lock_cycle.js exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    )
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1, f"expected one JSON line, got:\n{result.stdout}"
    summary: dict[str, Any] = json.loads(lines[0])
    return summary


def test_node_client_runs_a_full_lock_cycle(node_example: Path, server: ServerProcess) -> None:
    cid = f"node-{uuid.uuid4().hex}"

    summary = summary_of(run_lock_cycle(server.target, cid))

    assert summary["ok"] is True
    assert summary["target"] == server.target

    tickets = summary["ticket_protocol"]
    assert tickets["conversation_id"] == cid
    assert (tickets["first_ticket"], tickets["second_ticket"]) == (0, 1)
    assert tickets["now_serving_at_issue"] == [0, 0]
    updates = tickets["wait_updates"]
    assert updates[0] == {"now_serving": 0, "tickets_ahead": 1, "acquired": False}
    assert updates[-1] == {"now_serving": 1, "tickets_ahead": 0, "acquired": True}
    assert not any(u["acquired"] for u in updates[:-1])
    assert tickets["acquired"] is True
    assert tickets["acquired_lock_tickets"] == [1]
    assert tickets["lock_deleted"] is True
    assert tickets["order"] == [
        "issued:0",
        "issued:1",
        "waiting:ahead=1",
        "finish:0",
        "acquired:1",
        "cleanup:lock_deleted=true",
    ]

    stream = summary["lock_stream"]
    assert stream["conversation_id"] == f"{cid}-stream"
    assert stream["ticket"] == 0
    assert stream["acquired"] is True and stream["released"] is True
    events = stream["events"]
    assert events[-2:] == ["acquired", "released"]
    assert set(events[:-2]) <= {"queued"}


def test_node_client_leaves_nothing_behind(node_example: Path, server: ServerProcess) -> None:
    """Both conversations are gone afterwards: Cleanup and release really ran."""
    cid = f"node-{uuid.uuid4().hex}"
    summary_of(run_lock_cycle(server.target, cid))

    with LockClient(server.target) as client:
        assert client.get_lock(cid) is None
        assert not client.is_someone_waiting(f"{cid}-stream")


def test_node_client_takes_the_address_from_the_environment(
    node_example: Path, server: ServerProcess
) -> None:
    summary = summary_of(run_lock_cycle(env={"TICKETLOCK_ADDR": server.target}))

    assert summary["target"] == server.target
    assert summary["ticket_protocol"]["conversation_id"].startswith("node-example-")


def test_node_client_fails_clearly_without_a_server(node_example: Path) -> None:
    result = run_lock_cycle(f"127.0.0.1:{free_port()}")

    assert result.returncode != 0
    assert result.stdout == ""
    assert "lock_cycle: IssueTicket failed: UNAVAILABLE" in result.stderr
