"""Observability: logs (text or JSON lines on stderr), Prometheus metrics, tracing.

- Metrics live in a registry of their own, with the process and platform
  collectors, served by ``MetricsEndpoint`` on the event loop (no thread per
  connection).
- ``RpcObserver`` is a server interceptor that times every LockService call,
  logs it (failed calls at INFO, every call at DEBUG; refused authentications
  are logged by auth.py, rate-limited) and, when OpenTelemetry is
  installed and tracing is on, runs it in a span that joins the caller's trace
  (W3C ``traceparent`` metadata).
- Conversation ids identify users in Rasa (phone numbers, e-mail addresses): logs
  carry a short hash of them unless ``--log-conversation-ids plain``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import sys
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Literal

import grpc
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)

from ticketlock_server import interception

log = logging.getLogger("ticketlock_server.rpc")

LOCK_SERVICE = "/ticketlock.v1.LockService/"
# Why a Lock stream's hold ended without a release.
LOST_REASONS = ("expiry", "disconnect", "shutdown", "error")
RPC_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
               30, 60, 300)  # fmt: skip

# ``_created`` series double every counter and histogram for a value nobody graphs.
disable_created_metrics()  # type: ignore[no-untyped-call]


class JsonFormatter(logging.Formatter):
    """One JSON object per line; a record's ``fields`` (a dict) become top-level keys."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update(fields)
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


def conversation_hash(conversation_id: str) -> str:
    """A short stable stand-in for a conversation id in logs (not reversible in practice)."""
    return hashlib.sha256(conversation_id.encode()).hexdigest()[:12]


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ticketlock")
    except PackageNotFoundError:
        return "unknown"


class Metrics:
    """The server's Prometheus metrics, in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        Info("ticketlock_build", "The running ticketlock version.", registry=self.registry).info(
            {"version": _version()}
        )
        self.rpcs = Counter(
            "ticketlock_rpcs",
            "RPCs of the LockService that ended, by method and status code.",
            ["method", "code"],
            registry=self.registry,
        )
        self.rpc_duration = Histogram(
            "ticketlock_rpc_duration_seconds",
            "Duration of LockService calls by method (streams: until they end).",
            ["method"],
            buckets=RPC_BUCKETS,
            registry=self.registry,
        )
        self.wait_seconds = Histogram(
            "ticketlock_lock_wait_seconds",
            "Time a ticket waited in its queue before it acquired the lock.",
            buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300),
            registry=self.registry,
        )
        self.hold_seconds = Histogram(
            "ticketlock_lock_hold_seconds",
            "Time a Lock stream held its lock, from acquired to release or loss.",
            buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300),
            registry=self.registry,
        )
        self.lost = Counter(
            "ticketlock_locks_lost",
            "Locks held by a Lock stream that ended without a release, by reason: "
            "expiry (the ticket ran out), disconnect (the stream ended), shutdown, "
            "error (the store failed or the client broke the protocol).",
            ["reason"],
            registry=self.registry,
        )
        for reason in LOST_REASONS:
            self.lost.labels(reason)
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

    def lock_held(self, seconds: float) -> None:
        """A Lock stream's hold ended (by release or loss) after ``seconds``."""
        self.hold_seconds.observe(seconds)

    def lock_lost(self, reason: str) -> None:
        """A Lock stream's hold ended without a release; ``reason`` is in LOST_REASONS."""
        self.lost.labels(reason).inc()


# --- the /metrics endpoint ---------------------------------------------------------

# A client that has not sent its request head within this long is dropped: a slow
# or stalled client holds a socket and a coroutine, never a thread.
REQUEST_HEAD_TIMEOUT = 5.0
MAX_REQUEST_HEAD = 16 * 1024


class MetricsEndpoint:
    """Serves ``GET /metrics`` (and HEAD) over HTTP/1.1 on the server's event loop.

    Any other path is 404, any other method 405. With ``authorized``, a request
    must carry an ``Authorization`` header it accepts (else 401).
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        authorized: Callable[[str | None], bool] | None = None,
    ) -> None:
        self._registry = registry
        self._authorized = authorized
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[Any]] = set()

    async def start(self, host: str, port: int) -> None:
        self._server = await asyncio.start_server(self._serve, host, port, limit=MAX_REQUEST_HEAD)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._connections):
            task.cancel()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._connections.add(task)
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), REQUEST_HEAD_TIMEOUT)
            status, headers, body = self._answer(head)
            response = [f"HTTP/1.1 {status}"]
            response += [f"{name}: {value}" for name, value in headers]
            response += [f"Content-Length: {len(body)}", "Connection: close", "", ""]
            writer.write("\r\n".join(response).encode("latin-1"))
            if not head.startswith(b"HEAD "):
                writer.write(body)
            await asyncio.wait_for(writer.drain(), REQUEST_HEAD_TIMEOUT)
        except (asyncio.TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                ConnectionError, ValueError):  # fmt: skip
            pass
        finally:
            writer.close()
            if task is not None:
                self._connections.discard(task)

    def _answer(self, head: bytes) -> tuple[str, list[tuple[str, str]], bytes]:
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        text = [("Content-Type", "text/plain; charset=utf-8")]
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            return "400 Bad Request", text, b"bad request\n"
        method, target, _ = parts
        path = target.split("?", 1)[0]
        if path != "/metrics":
            return "404 Not Found", text, b"not found: the metrics are at /metrics\n"
        if method not in ("GET", "HEAD"):
            return "405 Method Not Allowed", [*text, ("Allow", "GET, HEAD")], b""
        if self._authorized is not None:
            authorization = None
            for line in lines[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "authorization":
                    authorization = value.strip()
            if not self._authorized(authorization):
                challenge = ("WWW-Authenticate", 'Bearer realm="ticketlock"')
                return "401 Unauthorized", [*text, challenge], b"missing or wrong bearer token\n"
        return "200 OK", [("Content-Type", CONTENT_TYPE_LATEST)], generate_latest(self._registry)


# --- per-call timing, logs and traces ----------------------------------------------


def code_name(context: interception.Context, error: BaseException | None) -> str:
    """The status code a call ended with, as its name."""
    if isinstance(error, asyncio.CancelledError):
        return "CANCELLED"
    code = context.code()
    if code is None:
        return "OK" if error is None else "UNKNOWN"
    return code.name if isinstance(code, grpc.StatusCode) else str(code)


class _Tracer:
    """OpenTelemetry, imported only when tracing is on."""

    def __init__(self) -> None:
        from opentelemetry import context, propagate, trace

        self.context = context
        self.propagate = propagate
        self.trace = trace
        self.tracer = trace.get_tracer("ticketlock_server")


class _Observed(interception.Around):
    def __init__(self, observer: RpcObserver, method: str, metadata: Iterable[Any]) -> None:
        self._observer = observer
        self._method = method
        self._metadata = metadata
        self._started = 0.0
        self._conversation: str | None = None
        self._span: Any = None
        self._token: Any = None
        self._peer = ""
        self._acquired = False

    def enter(self, context: interception.Context) -> None:
        self._started = time.perf_counter()
        # Asked now: once a call is cancelled, grpc may have freed what peer() reads.
        self._peer = context.peer()
        tracer = self._observer.tracer
        if tracer is None:
            return
        carrier = {key: value for key, value in self._metadata if isinstance(value, str)}
        parent = tracer.propagate.extract(carrier)
        self._span = tracer.tracer.start_span(
            f"ticketlock.v1.LockService/{self._method}",
            context=parent,
            kind=tracer.trace.SpanKind.SERVER,
            attributes={
                "rpc.system": "grpc",
                "rpc.service": "ticketlock.v1.LockService",
                "rpc.method": self._method,
            },
        )
        self._token = tracer.context.attach(tracer.trace.set_span_in_context(self._span, parent))

    async def check(self, message: Any, context: interception.Context) -> None:
        if self._conversation is None:
            named = [cid for cid in interception.conversation_ids(message) if cid]
            self._conversation = named[0] if named else None

    def sent(self, message: Any) -> None:
        # The moment the lock is acquired, as an event of the call's span: a Rasa
        # trace shows how long the message waited for its conversation's lock.
        if self._span is None or self._acquired:
            return
        # WaitForTicketResponse.acquired is a flag; LockResponse.acquired a message.
        acquired = getattr(message, "acquired", None)
        if isinstance(acquired, bool):
            reached = acquired
        else:
            reached = acquired is not None and message.HasField("acquired")
        if reached:
            self._acquired = True
            waited = time.perf_counter() - self._started
            self._span.add_event("acquired", {"ticketlock.wait_seconds": waited})

    def exit(self, context: interception.Context, error: BaseException | None) -> None:
        seconds = time.perf_counter() - self._started
        code = code_name(context, error)
        observer = self._observer
        if observer.metrics is not None:
            observer.metrics.rpc_duration.labels(self._method).observe(seconds)
        if self._span is not None and observer.tracer is not None:
            self._span.set_attribute("rpc.grpc.status_code", code)
            if code != "OK":
                self._span.set_status(observer.tracer.trace.StatusCode.ERROR, code)
            if self._conversation is not None:
                self._span.set_attribute("ticketlock.conversation", self._shown())
            self._span.end()
            with contextlib.suppress(ValueError):
                observer.tracer.context.detach(self._token)
        # Refused authentications have their own rate-limited line (auth.py): a
        # flood of bad tokens must not flood the log through this one.
        level = logging.DEBUG if code in ("OK", "UNAUTHENTICATED") else logging.INFO
        if not log.isEnabledFor(level):
            return
        fields: dict[str, Any] = {
            "method": self._method,
            "code": code,
            "duration_ms": round(seconds * 1000, 3),
            "peer": self._peer,
        }
        if self._conversation is not None:
            fields["conversation"] = self._shown()
        cancelled = isinstance(error, asyncio.CancelledError)
        details = context.details() if code != "OK" and not cancelled else None
        if details:
            fields["details"] = details if isinstance(details, str) else details.decode()
        text = " ".join(f"{key}={value}" for key, value in fields.items() if key != "details")
        suffix = f": {fields['details']}" if "details" in fields else ""
        log.log(level, "rpc %s%s", text, suffix, extra={"fields": fields})

    def _shown(self) -> str:
        assert self._conversation is not None
        if self._observer.conversation_ids == "plain":
            return self._conversation
        return conversation_hash(self._conversation)


class RpcObserver(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Times, logs and traces each LockService call (other services pass untouched)."""

    def __init__(
        self,
        metrics: Metrics | None,
        tracing: bool = False,
        conversation_ids: Literal["hashed", "plain"] = "hashed",
    ) -> None:
        self.metrics = metrics
        self.conversation_ids = conversation_ids
        self.tracer = _Tracer() if tracing else None

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]
        ],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(details)
        if handler is None or not details.method.startswith(LOCK_SERVICE):
            return handler
        method = details.method[len(LOCK_SERVICE) :]
        metadata = tuple(details.invocation_metadata or ())
        return interception.wrap(handler, lambda: _Observed(self, method, metadata))


def tracing_available() -> bool:
    try:
        import opentelemetry.trace  # noqa: F401
    except ImportError:
        return False
    return True
