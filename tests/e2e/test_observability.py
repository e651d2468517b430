"""What an operator watches: metrics, RPC logs and traces, against a real server."""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import textwrap
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import psutil
import pytest
from ticketlock import AsyncLockClient, LockClient
from ticketlock.v1 import lock_service_pb2 as pb
from ticketlock.v1 import lock_service_pb2_grpc as pb_grpc
from ticketlock_server import app
from ticketlock_server.config import ServerConfig
from ticketlock_server.observability import Metrics, conversation_hash

from tests.support.server import ServerProcess, free_port


def scrape(port: int, path: str = "/metrics", headers: dict[str, str] | None = None) -> str:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers or {})
    with urllib.request.urlopen(request, timeout=5) as response:
        return str(response.read().decode())


def sample(text: str, name: str) -> float | None:
    """The value of the sample ``name`` (with its labels, as printed), if present."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


def wait_for_sample(port: int, name: str, at_least: float, timeout: float = 10.0) -> str:
    """Metrics once ``name`` reached ``at_least``: calls are counted as they end,
    which may be just after the client saw its reply."""
    deadline = time.monotonic() + timeout
    while True:
        text = scrape(port)
        value = sample(text, name)
        if value is not None and value >= at_least:
            return text
        if time.monotonic() > deadline:
            pytest.fail(f"{name} never reached {at_least} (last: {value}):\n{text}")
        time.sleep(0.05)


async def _acquire(stub: Any, cid: str, lifetime: float) -> Any:
    call = stub.Lock()
    await call.write(
        pb.LockRequest(acquire=pb.Acquire(conversation_id=cid, lifetime_seconds=lifetime))
    )
    response = await call.read()
    assert response.WhichOneof("event") == "acquired", response
    return call


def test_metrics_cover_rpc_durations_holds_losses_and_the_process(tmp_path: Path) -> None:
    port = free_port()
    with ServerProcess(["--metrics-port", str(port)]) as server:
        with LockClient(server.target) as client:
            with client.lock("obs-held", 30):
                pass
            with pytest.raises(Exception, match="conversation_id"):
                client.get_lock("")

        async def lose_two() -> None:
            async with grpc.aio.insecure_channel(server.target) as channel:
                stub = pb_grpc.LockServiceStub(channel)
                # Expiry: the ticket runs out while the stream holds it.
                expiring = await _acquire(stub, "obs-expiring", 0.3)
                with pytest.raises(grpc.aio.AioRpcError) as ended:
                    await asyncio.wait_for(expiring.read(), 10)
                assert ended.value.code() == grpc.StatusCode.NOT_FOUND
                # Disconnect: the client goes away while holding.
                leaving = await _acquire(stub, "obs-leaving", 30)
                leaving.cancel()

        asyncio.run(lose_two())
        # Each is counted as its call ends, which may be after the client saw the end.
        for name, value in (
            ('ticketlock_locks_lost_total{reason="disconnect"}', 1),
            ("ticketlock_lock_hold_seconds_count", 3),
            ('ticketlock_rpc_duration_seconds_count{method="Lock"}', 3),
            ('ticketlock_rpc_duration_seconds_count{method="GetLock"}', 1),
        ):
            wait_for_sample(port, name, value)
        text = scrape(port)
        assert sample(text, 'ticketlock_locks_lost_total{reason="expiry"}') == 1
        assert sample(text, 'ticketlock_locks_lost_total{reason="disconnect"}') == 1
        assert sample(text, 'ticketlock_locks_lost_total{reason="shutdown"}') == 0
        assert sample(text, 'ticketlock_rpc_duration_seconds_count{method="Lock"}') == 3
        assert sample(text, 'ticketlock_rpc_duration_seconds_count{method="GetLock"}') == 1
        assert sample(text, 'ticketlock_rpc_duration_seconds_bucket{le="+Inf",method="Lock"}') == 3
        assert sample(text, "ticketlock_lock_wait_seconds_count") is not None
        assert 'ticketlock_build_info{version="' in text
        assert sample(text, "process_resident_memory_bytes") is not None
        assert sample(text, "process_open_fds") is not None
        assert "python_info{" in text
        assert "_created" not in text
        # No conversation id ever becomes a label.
        assert "obs-" not in text


def test_only_the_metrics_path_answers() -> None:
    port = free_port()
    with ServerProcess(["--metrics-port", str(port)]):
        assert "ticketlock_store_up 1.0" in scrape(port)
        for path in ("/", "/metrics/", "/favicon.ico", "/other"):
            with pytest.raises(urllib.error.HTTPError) as refused:
                scrape(port, path)
            assert refused.value.code == 404
        assert "ticketlock_store_up 1.0" in scrape(port, "/metrics?name[]=x")


def _thread_count(pid: int) -> int:
    return int(psutil.Process(pid).num_threads())


def test_half_sent_metrics_requests_do_not_add_threads() -> None:
    port = free_port()
    with ServerProcess(["--metrics-port", str(port)]) as server:
        scrape(port)
        before = _thread_count(server.process.pid)
        sockets = []
        try:
            for _ in range(248):
                sock = socket.create_connection(("127.0.0.1", port), timeout=5)
                sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # no blank line: unfinished
                sockets.append(sock)
            # Every connection is accepted (the scrape below queues behind none of them).
            assert "ticketlock_store_up 1.0" in scrape(port)
            # (Before, each waiting connection had a thread: 248 made 257.)
            assert _thread_count(server.process.pid) <= before + 8
        finally:
            for sock in sockets:
                sock.close()


def test_metrics_can_require_the_bearer_token(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("metrics-token\n")
    port = free_port()
    args = ["--metrics-port", str(port), "--auth-token-file", str(tokens), "--metrics-auth",
            "token"]  # fmt: skip
    with ServerProcess(args):
        for headers in ({}, {"Authorization": "Bearer nope"}):
            with pytest.raises(urllib.error.HTTPError) as refused:
                scrape(port, headers=headers)
            assert refused.value.code == 401
        assert "ticketlock_store_up" in scrape(
            port, headers={"Authorization": "bearer metrics-token"}
        )


async def test_a_lock_ended_by_shutdown_counts_as_lost_by_shutdown(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    made: list[Metrics] = []

    def keep(*args: Any) -> Metrics:
        metrics = Metrics(*args)
        made.append(metrics)
        return metrics

    monkeypatch.setattr(app, "Metrics", keep)
    listen = f"127.0.0.1:{free_port()}"
    stop = asyncio.Event()
    config = ServerConfig(listen=listen, grace_seconds=3, metrics_port=free_port())
    server = asyncio.ensure_future(app.serve(config, stop))
    try:
        async with grpc.aio.insecure_channel(listen) as channel:
            await asyncio.wait_for(channel.channel_ready(), 10)
            call = await _acquire(pb_grpc.LockServiceStub(channel), "obs-shutdown", 30)
            stop.set()
            with pytest.raises(grpc.aio.AioRpcError) as ended:
                await asyncio.wait_for(call.read(), 10)
            assert ended.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        stop.set()
        await asyncio.wait_for(server, 20)
    (metrics,) = made
    lost = "ticketlock_locks_lost_total"
    assert metrics.registry.get_sample_value(lost, {"reason": "shutdown"}) == 1
    assert metrics.registry.get_sample_value(lost, {"reason": "disconnect"}) == 0
    held = metrics.registry.get_sample_value("ticketlock_lock_hold_seconds_sum")
    assert held is not None and held > 0


# --- logs --------------------------------------------------------------------------


def _json_lines(server: ServerProcess) -> list[dict[str, Any]]:
    entries = []
    for line in server.log.splitlines():
        if line.startswith("{"):
            entries.append(json.loads(line))
    return entries


def wait_for_rpc_log(server: ServerProcess, method: str, code: str) -> dict[str, Any]:
    deadline = time.monotonic() + 10
    while True:
        for entry in _json_lines(server):
            if entry.get("method") == method and entry.get("code") == code:
                return entry
        if time.monotonic() > deadline:
            pytest.fail(f"no log line for {method} {code}:\n{server.log}")
        time.sleep(0.05)


def test_failed_rpcs_are_logged_with_method_code_duration_peer_and_hashed_ids() -> None:
    cid = "+49 170 5551234"
    with ServerProcess(["--log-format", "json", "--log-level", "info"]) as server:
        with LockClient(server.target) as client:
            client.get_lock(cid)
            with pytest.raises(Exception, match="ticket"):
                client.wait_for_ticket(cid, 7, timeout=5)
        entry = wait_for_rpc_log(server, "WaitForTicket", "NOT_FOUND")
        assert entry["level"] == "info"
        assert entry["logger"] == "ticketlock_server.rpc"
        assert entry["duration_ms"] >= 0
        assert entry["peer"].startswith(("ipv4:127.0.0.1:", "ipv6:"))
        assert entry["conversation"] == conversation_hash(cid)
        assert "ticket" in entry["details"]
        # A successful call is not logged at INFO, and the id appears nowhere.
        assert not any(e.get("method") == "GetLock" for e in _json_lines(server))
        assert cid not in server.log


def test_every_rpc_is_logged_at_debug_and_ids_in_plain_when_asked() -> None:
    args = ["--log-format", "json", "--log-level", "debug", "--log-conversation-ids", "plain"]
    with ServerProcess(args) as server:
        with LockClient(server.target) as client, client.lock("obs-plain", 10):
            pass
        entry = wait_for_rpc_log(server, "Lock", "OK")
        assert entry["level"] == "debug"
        assert entry["conversation"] == "obs-plain"
        assert entry["duration_ms"] > 0


# --- traces ------------------------------------------------------------------------

TRACED_SERVER = textwrap.dedent(
    """
    import json, sys
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

    class ToFile(SpanExporter):
        def export(self, spans):
            with open(sys.argv[1], "a") as out:
                for span in spans:
                    parent = span.parent.span_id if span.parent else None
                    out.write(json.dumps({
                        "name": span.name,
                        "trace_id": span.context.trace_id,
                        "parent_id": parent,
                        "attributes": dict(span.attributes),
                        "events": [{"name": e.name, "attributes": dict(e.attributes)}
                                   for e in span.events],
                    }) + "\\n")
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(ToFile()))
    trace.set_tracer_provider(provider)
    from ticketlock_server.cli import main
    main(sys.argv[2:])
    """
)


def traced_server(spans: Path) -> ServerProcess:
    """A server whose process exports its spans to ``spans``, one JSON object a line."""
    command = [sys.executable, "-c", TRACED_SERVER, str(spans)]
    return ServerProcess(["--tracing", "on"], command=command)


def wait_for_span(spans: Path, name: str) -> dict[str, Any]:
    deadline = time.monotonic() + 10
    while True:
        if spans.exists():
            for line in spans.read_text().splitlines():
                span = json.loads(line)
                if span["name"] == name:
                    return span  # type: ignore[no-any-return]
        if time.monotonic() > deadline:
            pytest.fail(f"no span {name} in {spans}")
        time.sleep(0.05)


def test_a_traced_call_shows_the_callers_trace_on_the_server(tmp_path: Path) -> None:
    from opentelemetry.sdk.trace import TracerProvider

    spans = tmp_path / "spans.jsonl"
    tracer = TracerProvider().get_tracer("test")
    with traced_server(spans) as server, LockClient(server.target) as client:
        with (
            tracer.start_as_current_span("rasa handles a message") as caller,
            client.lock("obs-traced", 10),
        ):
            pass
        server_span = wait_for_span(spans, "ticketlock.v1.LockService/Lock")
        assert server_span["trace_id"] == caller.get_span_context().trace_id
        assert server_span["parent_id"] == caller.get_span_context().span_id
        assert server_span["attributes"]["rpc.method"] == "Lock"
        assert server_span["attributes"]["rpc.grpc.status_code"] == "OK"
        assert server_span["attributes"]["ticketlock.conversation"] == conversation_hash(
            "obs-traced"
        )


async def test_the_server_joins_a_raw_traceparent(tmp_path: Path) -> None:
    spans = tmp_path / "spans.jsonl"
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    traceparent = f"00-{trace_id}-00f067aa0ba902b7-01"
    with traced_server(spans) as server:
        async with grpc.aio.insecure_channel(server.target) as channel:
            stub = pb_grpc.LockServiceStub(channel)
            await stub.GetLock(
                pb.GetLockRequest(conversation_id="obs-raw"),
                metadata=(("traceparent", traceparent),),
            )
        server_span = wait_for_span(spans, "ticketlock.v1.LockService/GetLock")
        assert server_span["trace_id"] == int(trace_id, 16)
        assert server_span["parent_id"] == int("00f067aa0ba902b7", 16)


def test_async_client_propagates_the_trace(tmp_path: Path) -> None:
    from opentelemetry.sdk.trace import TracerProvider

    spans = tmp_path / "spans.jsonl"
    tracer = TracerProvider().get_tracer("test")

    async def call(target: str) -> int:
        async with AsyncLockClient(target) as client:
            with tracer.start_as_current_span("async caller") as caller:
                await client.is_someone_waiting("obs-async")
            return int(caller.get_span_context().trace_id)

    with traced_server(spans) as server:
        trace_id = asyncio.run(call(server.target))
        server_span = wait_for_span(spans, "ticketlock.v1.LockService/IsSomeoneWaiting")
        assert server_span["trace_id"] == trace_id


def test_tracing_without_opentelemetry_is_a_clear_start_error(tmp_path: Path) -> None:
    import subprocess

    code = "import sys; sys.modules['opentelemetry'] = None; " \
        "from ticketlock_server.cli import main; main(sys.argv[1:])"  # fmt: skip
    result = subprocess.run(
        [sys.executable, "-c", code, "--tracing", "on", "--listen", f"127.0.0.1:{free_port()}"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2
    assert "tracing" in result.stderr and "Traceback" not in result.stderr


async def test_cancelled_calls_are_logged_without_touching_the_finished_call() -> None:
    """Logging a cancelled call reads nothing from it after the cancellation (grpc may
    have freed it: reading its peer then crashed the server now and then)."""
    with ServerProcess(["--log-format", "json", "--log-level", "info"]) as server:
        async with grpc.aio.insecure_channel(server.target) as channel:
            stub = pb_grpc.LockServiceStub(channel)
            holder = await stub.IssueTicket(pb.IssueTicketRequest(conversation_id="obs-cancel"))
            for _ in range(30):
                waiter = await stub.IssueTicket(pb.IssueTicketRequest(conversation_id="obs-cancel"))
                stream = stub.WaitForTicket(
                    pb.WaitForTicketRequest(
                        conversation_id="obs-cancel", ticket_number=waiter.ticket.number
                    )
                )
                assert not (await stream.read()).acquired
                stream.cancel()
                await stub.Cleanup(
                    pb.CleanupRequest(
                        conversation_id="obs-cancel", ticket_number=waiter.ticket.number
                    )
                )
            await stub.Cleanup(
                pb.CleanupRequest(conversation_id="obs-cancel", ticket_number=holder.ticket.number)
            )
        entry = wait_for_rpc_log(server, "WaitForTicket", "CANCELLED")
        assert entry["peer"].startswith("ipv4:127.0.0.1:")
        assert server.process.poll() is None


def test_the_lock_wait_shows_as_an_event_of_the_servers_span(tmp_path: Path) -> None:
    from opentelemetry.sdk.trace import TracerProvider

    spans = tmp_path / "spans.jsonl"
    tracer = TracerProvider().get_tracer("test")
    with traced_server(spans) as server, LockClient(server.target) as client:
        holder = client.issue("obs-wait", 30)

        def release_once_queued() -> None:
            deadline = time.monotonic() + 10
            while True:
                lock = client.get_lock("obs-wait")
                if (lock is not None and len(lock.tickets) == 2) or time.monotonic() > deadline:
                    break
                time.sleep(0.02)
            time.sleep(0.3)  # the hold the waiter's span must show
            client.cleanup("obs-wait", holder.ticket.number)

        releaser = threading.Thread(target=release_once_queued)
        releaser.start()
        with (
            tracer.start_as_current_span("rasa waits for its turn"),
            client.lock("obs-wait", 10, timeout=15),
        ):
            pass
        releaser.join()
        span = wait_for_span(spans, "ticketlock.v1.LockService/Lock")
        (event,) = [e for e in span["events"] if e["name"] == "acquired"]
        assert event["attributes"]["ticketlock.wait_seconds"] >= 0.3
        assert wait_for_span(spans, "ticketlock.v1.LockService/IssueTicket")["events"] == []
