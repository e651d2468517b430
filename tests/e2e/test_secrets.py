"""Tokens, tenants and certificates changed while the server runs, with real TLS.

Every rotation is checked end to end: new calls see the new secret within a
deadline, and a lock held across the change is neither interrupted nor refused.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from ticketlock import AuthenticationError, LockClient, LockError, TicketLock
from ticketlock.v1 import lock_service_pb2 as pb
from ticketlock.v1 import lock_service_pb2_grpc as pb_grpc
from ticketlock_server.auth import parse_tokens
from ticketlock_server.config import ConfigError

from tests.support.server import ServerProcess
from tests.support.tls import Pem, make_ca, make_certificate

DEADLINE = 15.0


def eventually(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {DEADLINE} s: {what}")
        time.sleep(0.05)


def replace(path: Path, text: str) -> None:
    """Replace a file at once, as a secret mount or an editor's save does."""
    fresh = path.with_suffix(".new")
    fresh.write_text(text)
    fresh.replace(path)


def accepted(target: str, token: str, cid: str = "probe", **options: Any) -> bool:
    with LockClient(target, token=token, timeout=5, **options) as client:
        try:
            client.get_lock(cid)
        except AuthenticationError:
            return False
    return True


def raw_get_lock(target: str, authorization: str) -> grpc.StatusCode:
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.LockServiceStub(channel)
        try:
            stub.GetLock(
                pb.GetLockRequest(conversation_id="c"),
                metadata=(("authorization", authorization),),
                timeout=5,
            )
        except grpc.RpcError as error:
            return error.code()  # type: ignore[attr-defined,no-any-return]
    return grpc.StatusCode.OK


# --- the token file ------------------------------------------------------------------


def test_token_file_format() -> None:
    text = (
        "# rotation in progress\n\n"
        "old-token\n"
        "  new-token   # comment after a token\n"
        "${BOT_TOKEN} tenant=bot-a prefix=${BOT_PREFIX}\n"
    )
    tokens = parse_tokens(text, {"BOT_TOKEN": "bot-secret", "BOT_PREFIX": "bot-a:"}, "f")
    assert [(t.secret, t.tenant, t.prefix) for t in tokens] == [
        (b"old-token", None, None),
        (b"new-token", None, None),
        (b"bot-secret", "bot-a", "bot-a:"),
    ]
    assert "bot-secret" not in repr(tokens)
    with pytest.raises(ConfigError, match=r"line 1.*not set"):
        parse_tokens("${MISSING}\n", {}, "f")
    with pytest.raises(ConfigError, match=r"line 2.*tenant=NAME or prefix=PREFIX"):
        parse_tokens("a\nb team=x\n", {}, "f")
    with pytest.raises(ConfigError, match="prefix= must not be empty"):
        parse_tokens("a prefix=\n", {}, "f")
    with pytest.raises(ConfigError, match="empty"):
        parse_tokens("# only a comment\n", {}, "f")


def test_several_tokens_rotation_and_revocation_leave_held_locks_alone(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("token-old\n")
    with ServerProcess(["--auth-token-file", str(tokens)]) as server:
        assert accepted(server.target, "token-old")
        assert not accepted(server.target, "token-new")
        with LockClient(server.target, token="token-old", timeout=5) as old_client:
            with old_client.lock("rotating", 30) as held:
                # Rotation, step 1: both tokens are valid.
                replace(tokens, "token-old\ntoken-new\n")
                eventually(lambda: accepted(server.target, "token-new"), "new token accepted")
                assert accepted(server.target, "token-old")
                # Step 2: the old token is revoked; new calls with it are refused...
                replace(tokens, "token-new\n")
                eventually(lambda: not accepted(server.target, "token-old"), "old token refused")
                assert accepted(server.target, "token-new")
                # ...while the lock held with it all along stays held,
                with LockClient(server.target, token="token-new", timeout=5) as new_client:
                    lock = new_client.get_lock("rotating")
                    assert lock is not None and lock.now_serving == held.ticket.number
                    queued = new_client.issue("rotating", 30)
                    assert not queued.acquired
                    new_client.cleanup("rotating", queued.ticket.number)
            # and its release goes through on the stream opened with the old token.
            with LockClient(server.target, token="token-new", timeout=5) as new_client:
                eventually(lambda: new_client.get_lock("rotating") is None, "released")
        assert "token-old" not in server.log and "token-new" not in server.log
        assert "reloaded" in server.log


def test_a_broken_token_file_keeps_the_tokens_in_force(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("token-a\n")
    with ServerProcess(["--auth-token-file", str(tokens)]) as server:
        replace(tokens, "token-b colour=red\n")
        eventually(lambda: "kept the tokens in force" in server.log, "the error is logged")
        assert accepted(server.target, "token-a")
        assert not accepted(server.target, "token-b")


def test_bearer_scheme_is_case_insensitive_and_refusals_are_logged_sparingly(
    tmp_path: Path,
) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("Sesame-123\n")
    with ServerProcess(["--auth-token-file", str(tokens)]) as server:
        for scheme in ("Bearer", "bearer", "BEARER"):
            assert raw_get_lock(server.target, f"{scheme} Sesame-123") == grpc.StatusCode.OK
        started = time.monotonic()  # the first refusal: the log's allowance is full (5)
        assert raw_get_lock(server.target, "Basic Sesame-123") == grpc.StatusCode.UNAUTHENTICATED
        assert raw_get_lock(server.target, "Bearer sesame-123") == grpc.StatusCode.UNAUTHENTICATED
        for _ in range(40):
            assert raw_get_lock(server.target, "Bearer guess") == grpc.StatusCode.UNAUTHENTICATED
        elapsed = time.monotonic() - started
        eventually(lambda: server.log.count("refused /ticketlock.v1.LockService/GetLock") >= 5,
                   "refusals are logged")  # fmt: skip
        refusals = server.log.count("refused /ticketlock.v1.LockService/GetLock")
        # A burst of 5 lines, then at most one a second (of 42 refusals).
        assert refusals <= 5 + int(elapsed) + 1
        assert elapsed > 30 or refusals < 42
        assert "wrong or revoked bearer token" in server.log
        # Only the rate-limited lines: the per-RPC failure line skips refusals at INFO.
        assert "code=UNAUTHENTICATED" not in server.log
        assert "guess" not in server.log and "Sesame" not in server.log


# --- tenants -------------------------------------------------------------------------


def test_a_tenant_is_confined_to_its_prefix(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("${ADMIN_TOKEN}\nbot-a-secret tenant=bot-a prefix=bot-a:\n")
    env = {"ADMIN_TOKEN": "admin-secret"}
    with ServerProcess(["--auth-token-file", str(tokens)], env=env) as server:
        with LockClient(server.target, token="bot-a-secret", timeout=5) as bot:
            with bot.lock("bot-a:42", 10):
                pass
            bot.issue_ticket("bot-a:43")
            for outside in (
                lambda: bot.get_lock("bot-b:1"),
                lambda: bot.delete_lock("bot-b:1"),
                lambda: bot.issue_ticket("bot-b:1"),
                lambda: bot.cleanup("bot-b:1", 0),
                lambda: bot.wait_for_ticket("bot-b:1", 0, timeout=5),
                lambda: bot.save_lock(TicketLock("bot-b:1")),
                lambda: bot.lock("bot-b:1", 10).__enter__(),
            ):
                with pytest.raises(LockError) as refused:
                    outside()
                assert refused.value.code == grpc.StatusCode.PERMISSION_DENIED
                assert "'bot-a:'" in str(refused.value) and "bot-a" in str(refused.value)
        # The untenanted token (from ${ADMIN_TOKEN}) reaches every conversation, and
        # nothing was written outside the tenant's prefix.
        with LockClient(server.target, token="admin-secret", timeout=5) as admin:
            assert admin.get_lock("bot-b:1") is None
            assert admin.get_lock("bot-a:43") is not None


# --- certificates --------------------------------------------------------------------


def _channel_credentials(ca: Pem, client: Pem | None = None) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=ca.cert.read_bytes(),
        private_key=None if client is None else client.key.read_bytes(),
        certificate_chain=None if client is None else client.cert.read_bytes(),
    )


def _tls_works(target: str, credentials: grpc.ChannelCredentials) -> bool:
    options = [("grpc.ssl_target_name_override", "localhost")]
    with LockClient(target, tls=credentials, options=options, timeout=3) as client:
        try:
            client.get_lock("tls-probe")
        except LockError:
            return False
    return True


def _install(source: Pem, target: Pem) -> None:
    """Swap a certificate and its key in place, key first (a reload in between is refused)."""
    for src, dst in ((source.key, target.key), (source.cert, target.cert)):
        fresh = dst.with_suffix(".new")
        shutil.copyfile(src, fresh)
        fresh.replace(dst)


def test_server_certificate_is_reloaded_without_ending_connections(tmp_path: Path) -> None:
    first_ca, second_ca = make_ca(tmp_path, "ca-1"), make_ca(tmp_path, "ca-2")
    first = make_certificate(tmp_path, first_ca, "server-1")
    second = make_certificate(tmp_path, second_ca, "server-2")
    live = Pem(tmp_path / "live.pem", tmp_path / "live-key.pem")
    shutil.copyfile(first.cert, live.cert)
    shutil.copyfile(first.key, live.key)
    args = ["--tls-cert", str(live.cert), "--tls-key", str(live.key)]
    server = ServerProcess(args)
    try:
        trusts_first = _channel_credentials(first_ca)
        eventually(lambda: _tls_works(server.target, trusts_first), "TLS server up")
        options = [("grpc.ssl_target_name_override", "localhost")]
        with LockClient(server.target, tls=trusts_first, options=options, timeout=5) as client:
            with client.lock("tls-rotation", 30) as held:
                _install(second, live)
                trusts_second = _channel_credentials(second_ca)
                eventually(lambda: _tls_works(server.target, trusts_second), "new cert served")
                assert not _tls_works(server.target, trusts_first)
                # The connection made before the change carries on.
                lock = client.get_lock("tls-rotation")
                assert lock is not None and lock.now_serving == held.ticket.number
            assert client.get_lock("tls-rotation") is None
        assert "TLS certificate files changed" in server.log
    finally:
        assert server.stop() == 0


def test_client_ca_is_reloaded_for_mutual_tls(tmp_path: Path) -> None:
    server_ca = make_ca(tmp_path, "server-ca")
    server_pem = make_certificate(tmp_path, server_ca, "server")
    old_clients, new_clients = make_ca(tmp_path, "clients-1"), make_ca(tmp_path, "clients-2")
    old_client = make_certificate(tmp_path, old_clients, "client-1")
    new_client = make_certificate(tmp_path, new_clients, "client-2")
    client_ca = tmp_path / "client-ca.pem"
    shutil.copyfile(old_clients.cert, client_ca)
    args = ["--tls-cert", str(server_pem.cert), "--tls-key", str(server_pem.key),
            "--tls-client-ca", str(client_ca)]  # fmt: skip
    server = ServerProcess(args)
    try:
        with_old = _channel_credentials(server_ca, old_client)
        with_new = _channel_credentials(server_ca, new_client)
        eventually(lambda: _tls_works(server.target, with_old), "mTLS server up")
        assert not _tls_works(server.target, with_new)
        assert not _tls_works(server.target, _channel_credentials(server_ca))
        # A bad CA file is refused and the one in force stays.
        replace(client_ca, "not a certificate\n")
        eventually(lambda: "kept the TLS certificates in force" in server.log, "refusal logged")
        assert _tls_works(server.target, with_old)
        replace(client_ca, new_clients.cert.read_text())
        eventually(lambda: _tls_works(server.target, with_new), "new client CA in force")
        assert not _tls_works(server.target, with_old)
    finally:
        assert server.stop() == 0


def test_tokens_and_tenants_over_mutual_tls(tmp_path: Path) -> None:
    """The whole secret path at once: mTLS, then the bearer token and its tenant."""
    ca = make_ca(tmp_path, "ca")
    server_pem = make_certificate(tmp_path, ca, "server")
    client_pem = make_certificate(tmp_path, ca, "client")
    tokens = tmp_path / "tokens"
    tokens.write_text("bot-a-secret tenant=bot-a prefix=bot-a:\nold-secret\n")
    args = ["--tls-cert", str(server_pem.cert), "--tls-key", str(server_pem.key),
            "--tls-client-ca", str(ca.cert), "--auth-token-file", str(tokens)]  # fmt: skip
    server = ServerProcess(args)
    tls = {
        "tls": _channel_credentials(ca, client_pem),
        "options": [("grpc.ssl_target_name_override", "localhost")],
    }
    try:
        eventually(lambda: _tls_up(server.target, tls), "mTLS server up")
        assert accepted(server.target, "bot-a-secret", "bot-a:probe", **tls)
        assert not accepted(server.target, "wrong-secret", **tls)
        with LockClient(server.target, token="bot-a-secret", timeout=5, **tls) as bot:
            with bot.lock("bot-a:tls", 10):
                pass
            with pytest.raises(LockError) as refused:
                bot.get_lock("bot-b:tls")
            assert refused.value.code == grpc.StatusCode.PERMISSION_DENIED
            assert "'bot-a:'" in str(refused.value)
        replace(tokens, "bot-a-secret tenant=bot-a prefix=bot-a:\n")  # old-secret revoked
        eventually(lambda: not accepted(server.target, "old-secret", **tls), "revoked")
        assert accepted(server.target, "bot-a-secret", "bot-a:probe", **tls)
        assert "bot-a-secret" not in server.log and "old-secret" not in server.log
    finally:
        assert server.stop() == 0


def _tls_up(target: str, tls: dict[str, Any]) -> bool:
    """The server answers over TLS (with any answer, UNAUTHENTICATED included)."""
    with LockClient(target, timeout=3, **tls) as client:
        try:
            client.get_lock("probe")
        except AuthenticationError:
            return True
        except LockError:
            return False
    return True
