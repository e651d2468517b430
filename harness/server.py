"""A real ``ticketlock-server`` process on a free loopback port, for tests and benchmarks."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """Starts ``python -m ticketlock_server`` and waits until health says SERVING."""

    def __init__(
        self,
        args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        listen: str | None = None,
        command: Sequence[str] | None = None,
        python: str | os.PathLike[str] | None = None,
    ) -> None:
        """``command`` replaces ``python -m ticketlock_server`` (its options follow it);
        ``python``, another venv's interpreter, runs the server installed there."""
        self.listen = listen or f"127.0.0.1:{free_port()}"
        if self.listen.startswith("unix:"):
            self.port = 0
            self.target = self.listen
        else:
            self.port = int(self.listen.rpartition(":")[2])
            self.target = f"127.0.0.1:{self.port}"
        self._log = tempfile.NamedTemporaryFile(  # noqa: SIM115 - lives as long as the process
            prefix="ticketlock-server-", suffix=".log", delete=False
        )
        full_env = dict(os.environ)
        full_env.update(env or {})
        program = command or (str(python or sys.executable), "-m", "ticketlock_server")
        self.process = subprocess.Popen(
            [*program, "--listen", self.listen, *args],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=full_env,
        )

    @property
    def log(self) -> str:
        return Path(self._log.name).read_text(encoding="utf-8", errors="replace")

    def wait_serving(self, timeout: float = 20.0) -> ServerProcess:
        deadline = time.monotonic() + timeout
        with grpc.insecure_channel(self.target) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log}")
                try:
                    status = stub.Check(health_pb2.HealthCheckRequest(), timeout=0.5).status
                    if status == health_pb2.HealthCheckResponse.SERVING:
                        return self
                except grpc.RpcError:
                    pass
                time.sleep(0.05)
        raise RuntimeError(f"server not serving within {timeout} s:\n{self.log}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def __enter__(self) -> ServerProcess:
        return self.wait_serving()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        Path(self._log.name).unlink(missing_ok=True)


def start_servers(endpoints: str | os.PathLike[str], count: int = 1) -> list[ServerProcess]:
    """``count`` SERVING servers on the store of an endpoints file (replicas of one store)."""
    args = ["--endpoints", str(endpoints), "--log-level", "warning"]
    processes = [ServerProcess(args) for _ in range(count)]
    try:
        for process in processes:
            process.wait_serving()
    except BaseException:
        stop_servers(processes)
        raise
    return processes


def stop_servers(processes: Sequence[ServerProcess]) -> None:
    for process in processes:
        process.stop()
        Path(process._log.name).unlink(missing_ok=True)
