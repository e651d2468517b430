"""Rasa's own lock-store scenarios, run by a real Rasa against ticketlock servers.

Runs inside a virtualenv that holds Rasa (Pro 3.21 or Open Source 3.6) and the
ticketlock client, under that venv's Python; tests/compat/test_real_rasa.py starts
it and checks the JSON report it writes to WORKDIR/report.json. For each server it is given:

- ``read_endpoint_config`` reads an endpoints.yml whose ``lock_store:`` names
  ``ticketlock.rasa.RemoteLockStore``, ``LockStore.create`` builds the store from it
  and ``Agent(lock_store=...)`` gets it;
- Rasa's ``test_message_order``: ``Agent.handle_message`` patched as Rasa's own test
  patches it, ten messages of one conversation started together with decreasing
  processing times, their incoming and processing order recorded;
- Rasa's ``test_lock_error``: lock lifetime and wait of 0.01 s, a holder that keeps
  the lock 0.5 s, and which exception reaches the caller.

Usage: python rasa_scenario.py WORKDIR KIND=TARGET [KIND=TARGET ...]
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import uuid
from pathlib import Path
from typing import Any
from unittest.mock import patch

import numpy as np
import rasa
from rasa.core.agent import Agent
from rasa.core.channels.channel import UserMessage
from rasa.core.lock_store import LockError, LockStore
from rasa.utils.endpoints import read_endpoint_config

N_MESSAGES = 10
LOCK_WAIT = 0.5
REPETITIONS = 5


async def message_order(agent: Agent) -> dict[str, Any]:
    """Rasa's test_message_order, with the orders returned instead of asserted."""
    conversation = f"rasa-order-{uuid.uuid4().hex}"
    incoming: list[str] = []
    processed: list[str] = []

    async def mocked_handle_message(self: Agent, message: UserMessage, wait: float) -> None:
        incoming.append(message.text)
        async with self.lock_store.lock(message.sender_id, wait_time_in_seconds=LOCK_WAIT):
            await asyncio.sleep(wait)
            processed.append(message.text)

    start = time.monotonic()
    with patch.object(Agent, "handle_message", mocked_handle_message):
        wait_times = np.linspace(0.1, 0.05, N_MESSAGES)
        tasks = [
            agent.handle_message(UserMessage(f"sender {i}", sender_id=conversation), wait=k)
            for i, k in enumerate(wait_times)
        ]
        await asyncio.gather(*(asyncio.ensure_future(t) for t in tasks))
    return {
        "incoming": incoming,
        "processed": processed,
        "seconds": time.monotonic() - start,
        "work_seconds": float(np.sum(wait_times)),
        "rasa_time_limit": float(np.sum(wait_times[1:]) + (N_MESSAGES - 1) * LOCK_WAIT),
    }


async def lock_error(agent: Agent) -> dict[str, Any]:
    """Rasa's test_lock_error: which exception the caller sees."""
    conversation = f"rasa-error-{uuid.uuid4().hex}"

    async def mocked_handle_message(self: Agent, message: UserMessage) -> None:
        async with self.lock_store.lock(
            message.sender_id, wait_time_in_seconds=0.01, lock_lifetime=0.01
        ):
            await asyncio.sleep(0.5)

    with patch.object(Agent, "handle_message", mocked_handle_message):
        tasks = [
            agent.handle_message(UserMessage(f"sender {i}", sender_id=conversation))
            for i in range(2)
        ]
        try:
            await asyncio.gather(*(asyncio.ensure_future(t) for t in tasks))
        except Exception as error:
            return {
                "raised": f"{type(error).__module__}.{type(error).__qualname__}",
                "is_rasa_lock_error": isinstance(error, LockError),
                "message": str(error),
            }
    return {"raised": None, "is_rasa_lock_error": False, "message": ""}


def run_against(workdir: Path, kind: str, target: str) -> dict[str, Any]:
    endpoints = workdir / f"endpoints-{kind}.yml"
    endpoints.write_text(
        f"lock_store:\n  type: ticketlock.rasa.RemoteLockStore\n  url: {target}\n",
        encoding="utf-8",
    )
    config = read_endpoint_config(str(endpoints), "lock_store")
    store = LockStore.create(config)
    agent = Agent(lock_store=store)
    result: dict[str, Any] = {
        "endpoint_type": getattr(config, "type", None),
        "store_class": f"{type(store).__module__}.{type(store).__qualname__}",
        "agent_store_is_it": agent.lock_store is store,
        "orders": [asyncio.run(message_order(agent)) for _ in range(REPETITIONS)],
        "lock_error": asyncio.run(lock_error(agent)),
    }
    store.close()
    return result


def main(argv: list[str]) -> None:
    import google.protobuf
    import grpc

    workdir = Path(argv[0])
    report: dict[str, Any] = {
        "rasa": rasa.__version__,
        "grpcio": grpc.__version__,
        "protobuf": google.protobuf.__version__,
        "python": sys.version.split()[0],
        "stores": {},
    }
    for pair in argv[1:]:
        kind, _, target = pair.partition("=")
        report["stores"][kind] = run_against(workdir, kind, target)
    # Rasa's imports print to stdout: the report goes to a file.
    (workdir / "report.json").write_text(json.dumps(report), encoding="utf-8")


if __name__ == "__main__":
    main(sys.argv[1:])
