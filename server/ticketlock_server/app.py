"""Assembles the gRPC server: store, wake-up hub, servicer, health, reflection."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio  # type: ignore[attr-defined]
from grpc_reflection.v1alpha import reflection
from ticketlock.v1 import lock_service_pb2 as pb

from ticketlock_server.config import (
    MIN_CLIENT_PING_INTERVAL_ENFORCED,
    ConfigError,
    ServerConfig,
)
from ticketlock_server.observability import Metrics
from ticketlock_server.rpc import add_to_server
from ticketlock_server.servicer import LockServicer
from ticketlock_server.sessions import Settings
from ticketlock_server.stores import create_store
from ticketlock_server.stores.base import LockStore, StoreUnavailable
from ticketlock_server.waiting import WakeHub

log = logging.getLogger("ticketlock_server")

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["LockService"].full_name
HEALTH_PROBE_INTERVAL = 1.0


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Requires ``authorization: Bearer <token>``; the health service stays open."""

    def __init__(self, token: str) -> None:
        self._expected = f"Bearer {token}".encode()

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]
        ],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        if details.method.startswith("/grpc.health.v1.Health/"):
            return await continuation(details)
        supplied = b""
        for key, value in details.invocation_metadata or ():
            if key == "authorization":
                supplied = value.encode() if isinstance(value, str) else value
        if hmac.compare_digest(supplied, self._expected):
            return await continuation(details)
        return _refusal(await continuation(details))


def _refusal(handler: grpc.RpcMethodHandler[Any, Any] | None) -> grpc.RpcMethodHandler[Any, Any]:
    async def refuse(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token")

    if handler is None or not (handler.request_streaming or handler.response_streaming):
        return grpc.unary_unary_rpc_method_handler(refuse)
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(refuse)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(refuse)
    return grpc.unary_stream_rpc_method_handler(refuse)


class Health:
    """Reports SERVING only while the store answers."""

    def __init__(self, store: LockStore, on_back: Callable[[], None] | None = None) -> None:
        self.servicer = health_aio.HealthServicer()
        self._store = store
        # Wake-ups sent while the store was unreachable may be lost: called when it is back.
        self._on_back = on_back
        self._serving: bool | None = None

    @property
    def serving(self) -> bool:
        return bool(self._serving)

    async def set(self, serving: bool) -> None:
        if serving == self._serving:
            return
        if self._serving is not None:
            log.warning("store %s is %s", self._store.name, "back" if serving else "unreachable")
            if serving and self._on_back is not None:
                self._on_back()
        self._serving = serving
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for service in ("", SERVICE_NAME):
            await self.servicer.set(service, status)

    async def probe_forever(self) -> None:
        while True:
            try:
                await self._store.ping()
                await self.set(True)
            except StoreUnavailable:
                await self.set(False)
            except Exception:
                # A store's own bug must not end the probe: health would freeze.
                log.exception("store %s health probe failed", self._store.name)
                await self.set(False)
            await asyncio.sleep(HEALTH_PROBE_INTERVAL)


def _credentials(config: ServerConfig) -> grpc.ServerCredentials | None:
    if not config.tls_cert and not config.tls_key:
        if config.tls_client_ca:
            raise ConfigError("--tls-client-ca needs --tls-cert and --tls-key")
        return None
    if not (config.tls_cert and config.tls_key):
        raise ConfigError("--tls-cert and --tls-key go together")

    def read(path: str, what: str) -> bytes:
        try:
            return Path(path).read_bytes()
        except OSError as error:
            raise ConfigError(f"cannot read {what} {path}: {error.strerror}") from None

    ca = read(config.tls_client_ca, "--tls-client-ca") if config.tls_client_ca else None
    return grpc.ssl_server_credentials(
        [(read(config.tls_key, "--tls-key"), read(config.tls_cert, "--tls-cert"))],
        root_certificates=ca,
        require_client_auth=ca is not None,
    )


async def serve(config: ServerConfig, stop: asyncio.Event | None = None) -> None:
    """Run until SIGTERM/SIGINT (or ``stop``), then shut down gracefully."""
    store = create_store(config.store)
    hub = WakeHub()
    credentials = _credentials(config)
    await store.start(hub.notify)
    interceptors = [BearerTokenInterceptor(config.auth_token)] if config.auth_token else []
    server = grpc.aio.server(
        interceptors=interceptors,
        options=[
            ("grpc.so_reuseport", 0),
            *keepalive_options(config),
            # gRPC core drops calls that wait for the Python server beyond these
            # (defaults 1,000 and 3,000), failing them with INTERNAL on the client:
            # thousands of waiters reconnecting at once after a restart must fit.
            ("grpc.server.max_pending_requests", 20_000),
            ("grpc.server.max_pending_requests_hard_limit", 30_000),
        ],
    )
    settings = Settings(
        default_lifetime=config.default_lifetime,
        recheck_interval=config.recheck_interval,
        idle_stream_timeout=config.idle_stream_timeout,
    )
    metrics = Metrics() if config.metrics_port is not None else None
    add_to_server(LockServicer(store, hub, settings, metrics), server, metrics)
    probe = Health(store, on_back=hub.notify_all)
    health_pb2_grpc.add_HealthServicer_to_server(probe.servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    try:
        if credentials is None:
            port = server.add_insecure_port(config.listen)
        else:
            port = server.add_secure_port(config.listen, credentials)
    except RuntimeError as error:
        raise ConfigError(f"cannot listen on {config.listen}: {error}") from None
    await server.start()
    where = config.listen if config.listen.startswith("unix:") else _with_port(config.listen, port)
    log.info("ticketlock listening on %s (store: %s)", where, store.name)
    stop_metrics = None
    if metrics is not None and config.metrics_port is not None:
        metrics.watch(lambda: len(hub), lambda: len(hub.holders), lambda: probe.serving)
        host = "127.0.0.1" if config.listen.startswith("unix:") else _host(config.listen)
        try:
            stop_metrics = metrics.serve(host, config.metrics_port)
        except OSError as error:
            await server.stop(None)
            raise ConfigError(
                f"cannot serve metrics on {host}:{config.metrics_port}: {error.strerror}"
            ) from None
        log.info("metrics on http://%s:%d/metrics", host, config.metrics_port)

    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stop.set)
    prober = asyncio.ensure_future(probe.probe_forever())
    try:
        await stop.wait()
    finally:
        log.info("shutting down: refusing new calls, ending waits with UNAVAILABLE")
        await probe.servicer.enter_graceful_shutdown()
        prober.cancel()
        hub.close()
        await server.stop(config.grace_seconds)
        if stop_metrics is not None:
            stop_metrics()
        await store.close()
        log.info("stopped")


def keepalive_options(config: ServerConfig) -> list[tuple[str, int]]:
    """gRPC channel arguments for dead-peer detection, both ways.

    The server pings every quiet connection, with or without calls, and drops it
    (ending its calls, which releases their tickets) when a ping goes unanswered.
    It accepts client pings without calls or data as often as every
    MIN_CLIENT_KEEPALIVE_TIME; gRPC's own default (5 min) would cut off a client
    pinging every few seconds with GOAWAY too_many_pings and free its lock.
    """
    enforced = int(MIN_CLIENT_PING_INTERVAL_ENFORCED * 1000)
    return [
        ("grpc.keepalive_time_ms", int(config.keepalive_time * 1000)),
        ("grpc.keepalive_timeout_ms", int(config.keepalive_timeout * 1000)),
        # Recent gRPC cores time an unanswered ping out by this one (default 60 s),
        # whatever keepalive_timeout_ms says: measured with a silent proxy.
        ("grpc.http2.ping_timeout_ms", int(config.keepalive_timeout * 1000)),
        ("grpc.keepalive_permit_without_calls", 1),
        # The server's own pings keep going on a connection that carries no data
        # (a held lock is quiet): gRPC's default allows only two.
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.http2.min_recv_ping_interval_without_data_ms", enforced),
        ("grpc.http2.min_ping_interval_without_data_ms", enforced),
        # gRPC's default: a client pinging more often than the enforced minimum
        # is told too_many_pings at its third such ping.
        ("grpc.http2.max_ping_strikes", 2),
    ]


def _host(listen: str) -> str:
    return listen.rpartition(":")[0].strip("[]") or "0.0.0.0"


def _with_port(listen: str, port: int) -> str:
    host = listen.rpartition(":")[0]
    return f"{host}:{port}"
