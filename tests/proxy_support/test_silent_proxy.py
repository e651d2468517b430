"""The silent proxy forwards, goes silent without closing anything, and resumes."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from tests.support.silent_proxy import SilentProxy


@pytest.fixture
def echo() -> Iterator[tuple[str, int]]:
    """A loopback echo server, one thread per connection."""
    listener = socket.create_server(("127.0.0.1", 0))
    stopping = threading.Event()

    def serve(conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)

    def accept() -> None:
        while not stopping.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield ("127.0.0.1", int(listener.getsockname()[1]))
    stopping.set()
    listener.close()


def _receive(sock: socket.socket, size: int, within: float) -> bytes:
    """Up to ``size`` bytes, as many as arrive within ``within`` seconds."""
    got = b""
    deadline = time.monotonic() + within
    while len(got) < size:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        sock.settimeout(left)
        try:
            chunk = sock.recv(size - len(got))
        except TimeoutError:
            break
        if not chunk:
            break
        got += chunk
    return got


def test_forwards_both_ways(echo: tuple[str, int]) -> None:
    with SilentProxy(*echo) as proxy, socket.create_connection(("127.0.0.1", proxy.port)) as sock:
        payload = bytes(range(256)) * 1000
        sock.sendall(payload)
        assert _receive(sock, len(payload), within=10) == payload
        assert proxy.connections == 1


def test_silence_holds_every_byte_and_closes_nothing(echo: tuple[str, int]) -> None:
    with SilentProxy(*echo) as proxy, socket.create_connection(("127.0.0.1", proxy.port)) as sock:
        sock.sendall(b"before")
        assert _receive(sock, 6, within=10) == b"before"
        proxy.silence()
        sock.sendall(b"during")
        # Neither an answer nor an end of stream: the connection just goes quiet.
        assert _receive(sock, 6, within=0.5) == b""
        assert proxy.connections == 1
        proxy.resume()
        assert _receive(sock, 6, within=10) == b"during"


def test_an_end_from_upstream_is_not_passed_on_while_silent(echo: tuple[str, int]) -> None:
    with SilentProxy(*echo) as proxy, socket.create_connection(("127.0.0.1", proxy.port)) as sock:
        sock.sendall(b"x")
        assert _receive(sock, 1, within=10) == b"x"
        proxy.silence()
        sock.shutdown(socket.SHUT_WR)  # the echo server would close in turn
        sock.settimeout(0.5)
        with pytest.raises(TimeoutError):
            sock.recv(1)
        proxy.resume()
        sock.settimeout(10)
        assert sock.recv(1) == b""  # now the end goes through


def test_close_ends_the_connections(echo: tuple[str, int]) -> None:
    proxy = SilentProxy(*echo).start()
    with socket.create_connection(("127.0.0.1", proxy.port)) as sock:
        sock.sendall(b"x")
        assert _receive(sock, 1, within=10) == b"x"
        proxy.silence()
        proxy.close()
        sock.settimeout(10)
        with contextlib.suppress(ConnectionResetError):  # an end either way
            assert sock.recv(1) == b""
