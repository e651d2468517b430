"""A loopback TCP proxy that can go silent: it stops forwarding, closes nothing.

That is what a host crash, a partition or a dropped NAT entry looks like to the
two ends of a connection: no FIN, no RST, just no more bytes. Only keepalive
pings (or a lifetime) can tell such a peer from a slow one.

One thread runs a selector over every socket; it is told of changes through a
socket pair, so ``silence()`` and ``resume()`` take effect at once and never
race with a forwarding step: once ``silence()`` returns, no byte crosses.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
from dataclasses import dataclass, field

_CHUNK = 65536


@dataclass(eq=False)
class _Pipe:
    """One direction of one connection."""

    source: socket.socket
    sink: socket.socket
    pending: bytearray = field(default_factory=bytearray)
    source_done: bool = False
    end_passed: bool = False


class SilentProxy:
    """Forwards ``127.0.0.1:<port>`` to ``target_host:target_port`` until silenced.

    Use as a context manager. ``target`` is the address to give a client.
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        self._upstream = (target_host, target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.setblocking(False)
        self.port = int(self._listener.getsockname()[1])
        self.target = f"127.0.0.1:{self.port}"
        self._selector = selectors.DefaultSelector()
        self._wake_read, self._wake_write = socket.socketpair()
        self._wake_read.setblocking(False)
        self._pipes: list[_Pipe] = []
        self._silent = False
        self._stopping = False
        self._changed = threading.Condition()
        # Bumped by the thread each time it has applied the latest state.
        self._applied = 0
        self._requested = 0
        self._thread = threading.Thread(target=self._run, name="silent-proxy", daemon=True)

    @classmethod
    def to(cls, target: str) -> SilentProxy:
        host, _, port = target.rpartition(":")
        return cls(host, int(port))

    @property
    def connections(self) -> int:
        """Connections accepted and not yet closed by both ends."""
        with self._changed:
            return len(self._pipes) // 2

    @property
    def silent(self) -> bool:
        return self._silent

    def start(self) -> SilentProxy:
        self._thread.start()
        return self

    def silence(self) -> None:
        """Stop forwarding in both directions; keep every socket open."""
        self._set(silent=True)

    def resume(self) -> None:
        """Forward again, starting with whatever the kernel buffered meanwhile."""
        self._set(silent=False)

    def close(self) -> None:
        """Close every socket (the peers then see the connection end)."""
        if self._thread.is_alive():
            self._stopping = True
            self._wake_write.send(b"x")
            self._thread.join(10)
        for pipe in self._pipes:
            pipe.source.close()
        self._listener.close()
        self._wake_read.close()
        self._wake_write.close()
        self._selector.close()

    def __enter__(self) -> SilentProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _set(self, *, silent: bool) -> None:
        with self._changed:
            self._silent = silent
            self._requested += 1
            wanted = self._requested
            self._wake_write.send(b"x")
            if not self._changed.wait_for(lambda: self._applied >= wanted, timeout=10):
                raise RuntimeError("the proxy thread did not apply the change")

    def _run(self) -> None:
        self._selector.register(self._listener, selectors.EVENT_READ)
        self._selector.register(self._wake_read, selectors.EVENT_READ)
        while not self._stopping:
            self._update_interest()
            for key, _ in self._selector.select():
                if key.fileobj is self._wake_read:
                    self._wake_read.recv(1024)
                elif key.fileobj is self._listener:
                    self._accept()
                elif not self._silent:
                    self._service(key.fileobj)  # type: ignore[arg-type]
            with self._changed:
                self._applied = self._requested
                self._changed.notify_all()

    def _accept(self) -> None:
        try:
            client, _ = self._listener.accept()
        except BlockingIOError:
            return
        upstream = socket.create_connection(self._upstream, timeout=5)
        for sock in (client, upstream):
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._changed:
            self._pipes += [_Pipe(client, upstream), _Pipe(upstream, client)]

    def _update_interest(self) -> None:
        """Each socket is watched for reading (its pipe out) and writing (its pipe in)."""
        wanted: dict[socket.socket, int] = {}
        for pipe in self._pipes:
            wanted.setdefault(pipe.source, 0)
            wanted.setdefault(pipe.sink, 0)
            if self._silent:
                continue
            if not pipe.source_done and len(pipe.pending) < _CHUNK:
                wanted[pipe.source] |= selectors.EVENT_READ
            if pipe.pending:
                wanted[pipe.sink] |= selectors.EVENT_WRITE
        for sock, events in wanted.items():
            registered = self._selector.get_map().get(sock)
            if events == 0:
                if registered is not None:
                    self._selector.unregister(sock)
            elif registered is None:
                self._selector.register(sock, events)
            elif registered.events != events:
                self._selector.modify(sock, events)

    def _service(self, sock: socket.socket) -> None:
        for pipe in list(self._pipes):
            if pipe.source is sock and not pipe.source_done and len(pipe.pending) < _CHUNK:
                try:
                    data = sock.recv(_CHUNK)
                except BlockingIOError:
                    data = None
                except OSError:
                    data = b""
                if data == b"":
                    pipe.source_done = True
                elif data:
                    pipe.pending += data
            if pipe.sink is sock and pipe.pending:
                try:
                    sent = sock.send(pipe.pending)
                    del pipe.pending[:sent]
                except BlockingIOError:
                    pass
                except OSError:
                    pipe.pending.clear()
                    pipe.source_done = True
        self._finish_ended()

    def _finish_ended(self) -> None:
        for pipe in self._pipes:
            if pipe.source_done and not pipe.pending and not pipe.end_passed:
                # Pass the end on, as the real peer would see it.
                pipe.end_passed = True
                with contextlib.suppress(OSError):
                    pipe.sink.shutdown(socket.SHUT_WR)
        ended = {
            id(pipe.source)
            for pipe in self._pipes
            if pipe.source_done
            and not pipe.pending
            and any(o.source is pipe.sink and o.source_done and not o.pending for o in self._pipes)
        }
        if not ended:
            return
        with self._changed:
            keep = [pipe for pipe in self._pipes if id(pipe.source) not in ended]
            for pipe in self._pipes:
                if id(pipe.source) in ended:
                    if pipe.source in self._selector.get_map():
                        self._selector.unregister(pipe.source)
                    pipe.source.close()
            self._pipes = keep
