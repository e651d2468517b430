"""The client needs grpcio and protobuf only: nothing of the server's."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import requires

SERVER_ONLY = ("yaml", "prometheus_client", "grpc_health", "grpc_reflection", "ticketlock_server")


def test_distribution_requires_only_grpcio_and_protobuf_without_extras() -> None:
    required = [r for r in requires("ticketlock") or [] if "extra ==" not in r]
    names = sorted(r.split(">")[0].split("=")[0].split("<")[0].strip() for r in required)
    assert names == ["grpcio", "protobuf"]


def test_client_and_rasa_drop_in_import_without_server_packages() -> None:
    blocker = "; ".join(f"sys.modules[{name!r}] = None" for name in SERVER_ONLY)
    code = (
        f"import sys; {blocker}; "
        "import ticketlock, ticketlock.rasa; "
        "from ticketlock import LockClient, AsyncLockClient; "
        "LockClient('127.0.0.1:1').close(); print('ok')"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
