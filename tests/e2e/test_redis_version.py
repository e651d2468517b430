"""A Redis older than the stores need is refused at start with a clear error.

No Redis older than 6.2 is installed here, so the old server is a stand-in that
speaks the Redis protocol and reports version 6.0.16 in ``INFO``: enough for the
start-up check, which reads nothing else before it refuses.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

OLD_VERSION = "6.0.16"


def _read_command(stream: socket.SocketIO) -> list[bytes] | None:
    """One RESP array of bulk strings (what redis-py sends), or None at EOF."""
    header = stream.readline()
    if not header:
        return None
    assert header.startswith(b"*"), header
    parts = []
    for _ in range(int(header[1:])):
        length = int(stream.readline()[1:])
        parts.append(stream.read(length + 2)[:-2])
    return parts


def _serve(connection: socket.socket) -> None:
    with connection, connection.makefile("rwb") as stream:
        while (command := _read_command(stream)) is not None:
            name = command[0].upper()
            if name == b"INFO":
                body = f"# Server\r\nredis_version:{OLD_VERSION}\r\nrun_id:{'0' * 40}\r\n"
                reply = f"${len(body)}\r\n{body}\r\n".encode()
            elif name == b"HELLO":  # redis-py speaks RESP3, as Redis 6.0 does
                fields = ["server", "redis", "version", OLD_VERSION, "proto", ":3", "id", ":1",
                          "mode", "standalone", "role", "master", "modules", "*0"]  # fmt: skip
                reply = f"%{len(fields) // 2}\r\n".encode() + b"".join(
                    (f"{f}\r\n" if f[0] in ":*" else f"+{f}\r\n").encode() for f in fields
                )
            elif name == b"PING":
                reply = b"+PONG\r\n"
            elif name in (b"SELECT", b"CLIENT"):
                reply = b"+OK\r\n"
            else:
                reply = b"-ERR unknown command\r\n"
            stream.write(reply)
            stream.flush()


@pytest.fixture
def old_redis() -> Iterator[int]:
    """A loopback port answering like a Redis 6.0 would to the start-up check."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.settimeout(30)

    def accept() -> None:
        while True:
            try:
                connection, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=_serve, args=(connection,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield int(listener.getsockname()[1])
    finally:
        listener.close()


@pytest.mark.parametrize("store_type", ["redis", "concurrent_redis"])
def test_a_redis_older_than_6_2_is_a_start_up_error_saying_so(
    tmp_path: Path, old_redis: int, store_type: str
) -> None:
    section = {"type": store_type, "host": "127.0.0.1", "port": old_redis, "socket_timeout": 5}
    path = tmp_path / "endpoints.yml"
    path.write_text(yaml.safe_dump({"lock_store": section}), encoding="utf-8")
    completed = subprocess.run(
        [sys.executable, "-m", "ticketlock_server", "--endpoints", str(path), "--listen",
         "127.0.0.1:0"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )  # fmt: skip
    assert completed.returncode == 2, completed.stdout + completed.stderr
    assert (
        f"Redis {OLD_VERSION} is too old: ticketlock needs Redis 6.2 or newer" in completed.stderr
    ), completed.stderr
    assert "Traceback" not in completed.stderr, completed.stderr
