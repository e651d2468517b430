"""Observability: logs (text or JSON lines on stderr) and Prometheus metrics."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure_logging(level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


class Metrics:
    """The server's Prometheus metrics, in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.rpcs = Counter(
            "ticketlock_rpcs",
            "RPCs of the LockService that ended, by method and status code.",
            ["method", "code"],
            registry=self.registry,
        )
        self.wait_seconds = Histogram(
            "ticketlock_wait_seconds",
            "Time a ticket waited in its queue before it acquired the lock.",
            buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300),
            registry=self.registry,
        )
        self._waiters = Gauge(
            "ticketlock_waiters", "Tickets waiting for their turn on this server.",
            registry=self.registry,
        )  # fmt: skip
        self._holders = Gauge(
            "ticketlock_session_holders", "Lock streams that hold their lock now.",
            registry=self.registry,
        )  # fmt: skip
        self._up = Gauge(
            "ticketlock_store_up", "1 while the lock store answers, else 0.",
            registry=self.registry,
        )  # fmt: skip

    def watch(
        self, waiters: Callable[[], int], holders: Callable[[], int], store_up: Callable[[], bool]
    ) -> None:
        """Read the gauges from the live objects at scrape time."""
        self._waiters.set_function(lambda: float(waiters()))
        self._holders.set_function(lambda: float(holders()))
        self._up.set_function(lambda: 1.0 if store_up() else 0.0)

    def serve(self, host: str, port: int) -> Callable[[], None]:
        """Serve /metrics over HTTP; returns the function that stops it."""
        server, _ = start_http_server(port, addr=host, registry=self.registry)
        return server.shutdown
