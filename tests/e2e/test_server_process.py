"""The server as a process: SIGTERM, dying clients, auth, TLS, unix sockets, options."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from ticketlock import (
    AsyncLockClient,
    AuthenticationError,
    LockClient,
    StoreUnavailableError,
)

from tests.support.server import ServerProcess, free_port


async def test_sigterm_ends_waits_with_unavailable_and_exits_zero() -> None:
    with ServerProcess(["--log-level", "info", "--grace", "2"]) as server:
        async with AsyncLockClient(server.target) as client:
            holder = await client.issue("shutdown", 60)
            waiting = await client.issue("shutdown", 60)
            wait_stream = asyncio.ensure_future(
                client.wait_for_ticket("shutdown", waiting.ticket.number, timeout=30)
            )

            async def session() -> None:
                async with client.lock("shutdown", 60):
                    pytest.fail("acquired during shutdown")

            lock_session = asyncio.ensure_future(session())
            await asyncio.sleep(0.5)
            assert not wait_stream.done() and not lock_session.done()
            started = time.monotonic()
            server.process.send_signal(signal.SIGTERM)
            for waiter in (wait_stream, lock_session):
                with pytest.raises(StoreUnavailableError) as raised:
                    await asyncio.wait_for(waiter, 10)
                assert raised.value.code == grpc.StatusCode.UNAVAILABLE
                assert "shutting down" in str(raised.value)
            assert holder.acquired
        exit_code = await asyncio.to_thread(server.process.wait, 15)
        assert exit_code == 0
        assert time.monotonic() - started < 10
        assert "shutting down" in server.log


async def test_sigterm_ends_a_held_session_with_unavailable() -> None:
    with ServerProcess(["--log-level", "warning", "--grace", "1"]) as server:
        async with AsyncLockClient(server.target) as client:
            entered = asyncio.Event()
            may_leave = asyncio.Event()

            async def hold() -> None:
                async with client.lock("held", 60):
                    entered.set()
                    await may_leave.wait()

            task = asyncio.ensure_future(hold())
            await asyncio.wait_for(entered.wait(), 5)
            server.process.send_signal(signal.SIGTERM)
            exit_code = await asyncio.to_thread(server.process.wait, 15)
            assert exit_code == 0
            # Leaving the block tells the holder how its session ended: by the
            # server's shutdown, not by a release of its own.
            may_leave.set()
            with pytest.raises(StoreUnavailableError) as raised:
                await asyncio.wait_for(task, 5)
            assert "shutting down" in str(raised.value)


HOLDER_SCRIPT = textwrap.dedent(
    """
    import sys, time
    from ticketlock import LockClient
    with LockClient(sys.argv[1]) as client, client.lock(sys.argv[2], 60):
        print("holding", flush=True)
        time.sleep(600)
    """
)


def test_a_client_process_killed_while_holding_frees_the_lock_at_once(
    server: ServerProcess, cid: str
) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER_SCRIPT, server.target, cid],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "holding"
        with LockClient(server.target) as client:
            waiter = client.issue(cid, 60)
            assert not waiter.acquired
            killed_at = time.monotonic()
            holder.kill()  # SIGKILL: no release, no clean-up, lifetime 60 s
            client.wait_for_ticket(cid, waiter.ticket.number, timeout=10)
            assert time.monotonic() - killed_at < 1.0
    finally:
        holder.kill()
        holder.wait()


def test_bearer_token_is_required_except_for_health(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("s3cret-token\n")
    with ServerProcess(["--auth-token-file", str(token_file), "--log-level", "debug"]) as server:
        with LockClient(server.target) as anonymous, pytest.raises(AuthenticationError) as raised:
            anonymous.get_lock("c")
        assert raised.value.code == grpc.StatusCode.UNAUTHENTICATED
        with (
            LockClient(server.target, token="wrong") as wrong,
            pytest.raises(AuthenticationError),
            wrong.lock("c", timeout=2),
        ):
            pass
        with LockClient(server.target, token="s3cret-token") as client:
            with client.lock("c", 5, timeout=5) as held:
                assert held.ticket.number == 0
            assert client.get_lock("c") is None
        with grpc.insecure_channel(server.target) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            status = health.Check(health_pb2.HealthCheckRequest(), timeout=5).status
            assert status == health_pb2.HealthCheckResponse.SERVING
        assert "s3cret-token" not in server.log


def _make_certificates(directory: Path) -> dict[str, Path]:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.fail("openssl is needed to make test certificates (apt-get install openssl)")

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], check=True, capture_output=True, timeout=60)

    paths = {name: directory / f"{name}.pem" for name in ("ca", "ca-key", "server", "server-key",
                                                           "client", "client-key")}  # fmt: skip
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=test-ca",
        "-keyout", str(paths["ca-key"]), "-out", str(paths["ca"]))  # fmt: skip
    for name, cn in (("server", "localhost"), ("client", "test-client")):
        csr = directory / f"{name}.csr"
        ext = directory / f"{name}.ext"
        ext.write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
        run("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={cn}",
            "-keyout", str(paths[f"{name}-key"]), "-out", str(csr))  # fmt: skip
        run("x509", "-req", "-in", str(csr), "-CA", str(paths["ca"]), "-CAkey",
            str(paths["ca-key"]), "-CAcreateserial", "-days", "1", "-extfile", str(ext),
            "-out", str(paths[name]))  # fmt: skip
    return paths


def test_tls_and_mutual_tls(tmp_path: Path) -> None:
    pem = _make_certificates(tmp_path)
    args = ["--tls-cert", str(pem["server"]), "--tls-key", str(pem["server-key"]),
            "--tls-client-ca", str(pem["ca"]), "--log-level", "warning"]  # fmt: skip
    server = ServerProcess(args)
    try:
        trusted = grpc.ssl_channel_credentials(
            root_certificates=pem["ca"].read_bytes(),
            private_key=pem["client-key"].read_bytes(),
            certificate_chain=pem["client"].read_bytes(),
        )
        deadline = time.monotonic() + 20
        options = [("grpc.ssl_target_name_override", "localhost")]
        with LockClient(server.target, tls=trusted, options=options) as client:
            while True:
                try:
                    with client.lock("tls", 5, timeout=5) as held:
                        assert held.ticket.number == 0
                    break
                except StoreUnavailableError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
        no_client_cert = grpc.ssl_channel_credentials(root_certificates=pem["ca"].read_bytes())
        with (
            LockClient(server.target, tls=no_client_cert, options=options, timeout=3) as anonymous,
            pytest.raises(StoreUnavailableError),
        ):
            anonymous.issue_ticket("tls")
        with LockClient(server.target, timeout=3) as plain, pytest.raises(StoreUnavailableError):
            plain.issue_ticket("tls")
    finally:
        assert server.stop() == 0


def test_unix_socket_listen(tmp_path: Path) -> None:
    path = tmp_path / "ticketlock.sock"
    with ServerProcess(listen=f"unix:{path}") as server, LockClient(server.target) as client:
        with client.lock("unix", 5, timeout=5) as held:
            assert held.ticket.number == 0
        assert path.exists()


def test_ticket_lock_lifetime_environment_sets_the_default(tmp_path: Path) -> None:
    with (
        ServerProcess(env={"TICKET_LOCK_LIFETIME": "7"}) as server,
        LockClient(server.target) as client,
    ):
        issued = client.issue("lifetime")
        assert issued.ticket.expires == pytest.approx(time.time() + 7, abs=1.5)


def test_options_come_from_environment_variables_and_json_logs(tmp_path: Path) -> None:
    endpoints = tmp_path / "endpoints.yml"
    endpoints.write_text("lock_store:\n  type: ${STORE_TYPE}\n")
    port = free_port()
    env = {
        "TICKETLOCK_ENDPOINTS": str(endpoints),
        "TICKETLOCK_LOG_FORMAT": "json",
        "TICKETLOCK_LOG_LEVEL": "info",
        "STORE_TYPE": "in_memory",
    }
    server = ServerProcess(env=env, listen=f"127.0.0.1:{port}")
    try:
        server.wait_serving()
        first_line = server.log.splitlines()[0]
        assert first_line.startswith("{") and '"level": "info"' in first_line
        assert "in_memory" in first_line
    finally:
        assert server.stop() == 0


@pytest.mark.parametrize(
    ("endpoints", "message"),
    [
        ("lock_store:\n  type: redis\n  url: a\n  host: b\n", "not both"),
        ("lock_store:\n  type: redis\n  deployment_mode: sentinel\n", "endpoints is required"),
        ("lock_store:\n  type: nope\n", "not in_memory"),
        ("lock_store:\n  type: no.such.Module\n", "cannot load"),
        ("lock_store:\n  type: ${UNSET_VARIABLE_FOR_TEST}\n", "UNSET_VARIABLE_FOR_TEST"),
        ("lock_store: [\n", "not valid YAML"),
    ],
)
def test_bad_configuration_fails_at_start_with_a_clear_message(
    tmp_path: Path, endpoints: str, message: str
) -> None:
    path = tmp_path / "endpoints.yml"
    path.write_text(endpoints)
    result = subprocess.run(
        [sys.executable, "-m", "ticketlock_server", "--endpoints", str(path), "--listen",
         f"127.0.0.1:{free_port()}"],
        capture_output=True, text=True, timeout=30,
        env={k: v for k, v in os.environ.items() if k != "UNSET_VARIABLE_FOR_TEST"},
    )  # fmt: skip
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


CUSTOM_STORE = textwrap.dedent(
    """
    from ticketlock_server.stores.in_memory import InMemoryLockStore

    class TaggedStore(InMemoryLockStore):
        name = "tagged"

        def __init__(self, endpoint_config=None):
            super().__init__(endpoint_config)
            self.tag = endpoint_config.kwargs["tag"]
            assert endpoint_config.url == "ignored://"

        # The documented interface: the epoch is always passed, "" for this store.
        async def position(self, conversation_id, ticket_number, with_lock=False,
                           next_change=True, epoch=None):
            assert epoch == "", epoch
            return await super().position(conversation_id, ticket_number, with_lock,
                                          next_change, epoch)

        async def cleanup(self, conversation_id, ticket_number, epoch=None):
            assert epoch == "", epoch
            return await super().cleanup(conversation_id, ticket_number, epoch)

        async def refresh_ticket(self, conversation_id, ticket_number, lifetime, epoch=None):
            assert epoch == "", epoch
            return await super().refresh_ticket(conversation_id, ticket_number, lifetime,
                                                epoch)
    """
)

# Written before stores had numbering epochs: no epoch parameters.
STORE_WITHOUT_EPOCHS = textwrap.dedent(
    """
    from ticketlock_server.stores.in_memory import InMemoryLockStore

    class OldStore(InMemoryLockStore):
        async def cleanup(self, conversation_id, ticket_number):
            return await super().cleanup(conversation_id, ticket_number)

        async def refresh_ticket(self, conversation_id, ticket_number, lifetime):
            return await super().refresh_ticket(conversation_id, ticket_number, lifetime)
    """
)


def test_custom_store_by_module_path(tmp_path: Path) -> None:
    (tmp_path / "my_stores.py").write_text(CUSTOM_STORE)
    endpoints = tmp_path / "endpoints.yml"
    endpoints.write_text(
        "lock_store:\n  type: my_stores.TaggedStore\n  url: ignored://\n  tag: x\n"
    )
    env = {"PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    with ServerProcess(["--endpoints", str(endpoints)], env=env) as server:
        with LockClient(server.target) as client:
            holder = client.issue("c", 5)

            def release_soon() -> None:
                time.sleep(0.3)
                client.cleanup("c", holder.ticket.number)

            releaser = threading.Thread(target=release_soon)
            releaser.start()
            # A session that waits, refreshes and releases: every call with epoch=.
            with client.lock("c", 5, timeout=5) as held:
                held_ticket = client.refresh_ticket("c", held.fencing_token, 5)
                assert held_ticket.number == held.fencing_token
            releaser.join()
            assert client.get_lock("c") is None
        assert "store: tagged" in server.log
        assert "Traceback" not in server.log


def test_a_custom_store_that_cannot_take_epochs_is_refused_at_start(tmp_path: Path) -> None:
    (tmp_path / "old_stores.py").write_text(STORE_WITHOUT_EPOCHS)
    endpoints = tmp_path / "endpoints.yml"
    endpoints.write_text("lock_store:\n  type: old_stores.OldStore\n")
    path = f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"
    result = subprocess.run(
        [sys.executable, "-m", "ticketlock_server", "--endpoints", str(endpoints), "--listen",
         f"127.0.0.1:{free_port()}"],
        capture_output=True, text=True, timeout=30,
        env={**os.environ, "PYTHONPATH": path},
    )  # fmt: skip
    assert result.returncode == 2
    assert "cleanup, refresh_ticket must accept epoch=" in result.stderr
    assert "Traceback" not in result.stderr


def _scrape(port: int) -> str:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return str(response.read().decode())


def test_prometheus_metrics_count_rpcs_by_code_and_show_waiters() -> None:
    metrics_port = free_port()
    with ServerProcess(["--metrics-port", str(metrics_port)]) as server:
        with LockClient(server.target) as client:
            holder = client.issue("m", 30)
            waiter = client.issue("m", 30)
            with pytest.raises(Exception, match="conversation_id"):
                client.get_lock("")

            async def wait_and_scrape() -> str:
                async with AsyncLockClient(server.target) as ac:
                    wait = asyncio.ensure_future(
                        ac.wait_for_ticket("m", waiter.ticket.number, timeout=10)
                    )
                    await asyncio.sleep(0.3)
                    during = await asyncio.to_thread(_scrape, metrics_port)
                    await ac.cleanup("m", holder.ticket.number)
                    await wait
                    return during

            during = asyncio.run(wait_and_scrape())
            assert "ticketlock_waiters 1.0" in during
            client.cleanup("m", waiter.ticket.number)
        text = _scrape(metrics_port)
        assert 'ticketlock_rpcs_total{code="OK",method="IssueTicket"} 2.0' in text
        assert 'ticketlock_rpcs_total{code="INVALID_ARGUMENT",method="GetLock"} 1.0' in text
        assert 'ticketlock_rpcs_total{code="OK",method="WaitForTicket"} 1.0' in text
        assert "ticketlock_wait_seconds_count 1.0" in text
        assert "ticketlock_waiters 0.0" in text
        assert "ticketlock_store_up 1.0" in text
