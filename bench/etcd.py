"""etcd's lock, for comparison: a single-member etcd on free loopback ports.

``v3lockpb.Lock/Lock`` and ``/Unlock`` on a lease granted once per task and
reused (``etcdserverpb.Lease/LeaseGrant``), called through ``grpc.aio`` like
ticketlock's own client. The few messages are declared at run time with
protobuf's ``descriptor_pb2`` and ``message_factory`` (field names and numbers
as in etcd's ``v3lock.proto`` and ``rpc.proto``), rather than vendoring etcd's
protos and their gogoproto imports; unknown fields (the response headers) are
skipped by the parser.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from harness.server import free_port

_FIELD = descriptor_pb2.FieldDescriptorProto
# message name -> [(field name, number, type)]
_MESSAGES = {
    "LockRequest": [("name", 1, _FIELD.TYPE_BYTES), ("lease", 2, _FIELD.TYPE_INT64)],
    "LockResponse": [("key", 2, _FIELD.TYPE_BYTES)],
    "UnlockRequest": [("key", 1, _FIELD.TYPE_BYTES)],
    "UnlockResponse": [],
    "LeaseGrantRequest": [("TTL", 1, _FIELD.TYPE_INT64), ("ID", 2, _FIELD.TYPE_INT64)],
    "LeaseGrantResponse": [
        ("ID", 2, _FIELD.TYPE_INT64),
        ("TTL", 3, _FIELD.TYPE_INT64),
        ("error", 4, _FIELD.TYPE_STRING),
    ],
}


def _message_classes() -> dict[str, Any]:
    file = descriptor_pb2.FileDescriptorProto(
        name="ticketlock_bench_etcd.proto", package="ticketlock_bench_etcd", syntax="proto3"
    )
    for name, fields in _MESSAGES.items():
        message = file.message_type.add(name=name)
        for field_name, number, kind in fields:
            message.field.add(
                name=field_name, number=number, type=kind, label=_FIELD.LABEL_OPTIONAL
            )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return {
        name: message_factory.GetMessageClass(
            pool.FindMessageTypeByName(f"ticketlock_bench_etcd.{name}")
        )
        for name in _MESSAGES
    }


MESSAGES = _message_classes()


def etcd_path() -> str | None:
    return shutil.which("etcd")


def etcd_version() -> str:
    path = etcd_path()
    if path is None:
        return "not installed"
    out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10).stdout
    return out.splitlines()[0] if out else "unknown"


@dataclass(frozen=True, slots=True)
class Etcd:
    target: str
    process: subprocess.Popen[bytes]


@contextlib.contextmanager
def etcd_server() -> Iterator[Etcd]:
    """A one-member etcd in a temporary directory (fsync on, as by default)."""
    path = etcd_path()
    if path is None:
        raise FileNotFoundError("etcd is not installed (apt-get install etcd-server)")
    client_port, peer_port = free_port(), free_port()
    client_url = f"http://127.0.0.1:{client_port}"
    peer_url = f"http://127.0.0.1:{peer_port}"
    with tempfile.TemporaryDirectory(prefix="ticketlock-bench-etcd-") as directory:
        log = (Path(directory) / "etcd.log").open("wb")
        process = subprocess.Popen(
            [
                path,
                "--name=bench",
                f"--data-dir={directory}/data",
                f"--listen-client-urls={client_url}",
                f"--advertise-client-urls={client_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=bench={peer_url}",
                "--log-level=error",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            etcd = Etcd(f"127.0.0.1:{client_port}", process)
            _wait_serving(etcd, Path(directory) / "etcd.log")
            yield etcd
        finally:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            log.close()


def _wait_serving(etcd: Etcd, log: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(etcd.target) as channel:
        grant = _unary(channel, "/etcdserverpb.Lease/LeaseGrant", "LeaseGrant")
        while time.monotonic() < deadline:
            if etcd.process.poll() is not None:
                raise RuntimeError(f"etcd exited: {log.read_text(errors='replace')}")
            try:
                grant(MESSAGES["LeaseGrantRequest"](TTL=5), timeout=1)
                return
            except grpc.RpcError:
                time.sleep(0.1)
    raise RuntimeError(f"etcd not serving within {timeout} s")


def _unary(channel: Any, method: str, name: str) -> Any:
    return channel.unary_unary(
        method,
        request_serializer=lambda message: message.SerializeToString(),
        response_deserializer=MESSAGES[f"{name}Response"].FromString,
    )


class EtcdLocks:
    """Lock/Unlock through one ``grpc.aio`` channel, with one reused lease per task."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._grant = _unary(channel, "/etcdserverpb.Lease/LeaseGrant", "LeaseGrant")
        self._lock = _unary(channel, "/v3lockpb.Lock/Lock", "Lock")
        self._unlock = _unary(channel, "/v3lockpb.Lock/Unlock", "Unlock")

    async def lease(self, ttl: int = 600) -> int:
        response = await self._grant(MESSAGES["LeaseGrantRequest"](TTL=ttl), timeout=10)
        return int(response.ID)

    async def lock(self, name: str, lease: int) -> bytes:
        response = await self._lock(
            MESSAGES["LockRequest"](name=name.encode(), lease=lease), timeout=30
        )
        return bytes(response.key)

    async def unlock(self, key: bytes) -> None:
        await self._unlock(MESSAGES["UnlockRequest"](key=key), timeout=30)
