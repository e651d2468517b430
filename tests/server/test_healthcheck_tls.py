"""The container HEALTHCHECK against a server that requires TLS, and one that requires mTLS.

The probe is run as the image runs it (``python -m ticketlock_server.healthcheck``
with the server's own environment), against a real server on a loopback port.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.server import ServerProcess
from tests.support.tls import Pem, make_ca, make_certificate


def probe(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    import os

    full = {**os.environ, **env}
    return subprocess.run(
        [sys.executable, "-m", "ticketlock_server.healthcheck", "--timeout", "3"],
        capture_output=True, text=True, timeout=60, env=full,
    )  # fmt: skip


def wait_healthy(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    import time

    deadline = time.monotonic() + 20
    while True:
        result = probe(env)
        if result.returncode == 0 or time.monotonic() > deadline:
            return result
        time.sleep(0.1)


@pytest.fixture
def pki(tmp_path: Path) -> tuple[Pem, Pem, Pem]:
    ca = make_ca(tmp_path, "ca")
    return ca, make_certificate(tmp_path, ca, "server"), make_certificate(tmp_path, ca, "client")


def test_healthcheck_speaks_tls_when_the_server_does(
    pki: tuple[Pem, Pem, Pem], tmp_path: Path
) -> None:
    ca, server_pem, _ = pki
    env = {"TICKETLOCK_TLS_CERT": str(server_pem.cert), "TICKETLOCK_TLS_KEY": str(server_pem.key)}
    server = ServerProcess(env=env)  # not waited for: its own probe is plaintext
    try:
        # The image's own environment: a wildcard listen address, no probe settings.
        listen = {"TICKETLOCK_LISTEN": server.listen.replace("127.0.0.1", "0.0.0.0")}
        result = wait_healthy({**env, **listen})
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip().endswith(": SERVING")
        assert probe({**env, **listen, "TICKETLOCK_HEALTH_CA": str(ca.cert)}).returncode == 0
        # The server's certificate is verified: a CA that did not sign it fails the probe.
        stranger = make_ca(tmp_path, "stranger")
        refused = probe({**env, **listen, "TICKETLOCK_HEALTH_CA": str(stranger.cert)})
        assert refused.returncode == 1
    finally:
        assert server.stop() == 0


def test_healthcheck_presents_a_client_certificate_under_mtls(pki: tuple[Pem, Pem, Pem]) -> None:
    ca, server_pem, client_pem = pki
    env = {
        "TICKETLOCK_TLS_CERT": str(server_pem.cert),
        "TICKETLOCK_TLS_KEY": str(server_pem.key),
        "TICKETLOCK_TLS_CLIENT_CA": str(ca.cert),
    }
    server = ServerProcess(env=env)  # not waited for: its own probe is plaintext
    try:
        probe_env = {
            **env,
            "TICKETLOCK_LISTEN": server.listen,
            "TICKETLOCK_HEALTH_CA": str(ca.cert),
        }
        # By default the probe presents the server's own certificate (signed by the client CA).
        result = wait_healthy(probe_env)
        assert result.returncode == 0, result.stderr
        named = {**probe_env, "TICKETLOCK_HEALTH_CERT": str(client_pem.cert),
                 "TICKETLOCK_HEALTH_KEY": str(client_pem.key)}  # fmt: skip
        assert probe(named).returncode == 0
        # A probe without any client certificate is refused by the server.
        plain_tls = {k: v for k, v in probe_env.items() if k != "TICKETLOCK_TLS_CLIENT_CA"}
        assert probe(plain_tls).returncode == 1
    finally:
        assert server.stop() == 0


def test_self_signed_server_certificate_needs_no_ca(tmp_path: Path) -> None:
    own = make_ca(tmp_path, "localhost")  # self-signed, CN=localhost
    env = {"TICKETLOCK_TLS_CERT": str(own.cert), "TICKETLOCK_TLS_KEY": str(own.key)}
    server = ServerProcess(env=env)  # not waited for: its own probe is plaintext
    try:
        result = wait_healthy({**env, "TICKETLOCK_LISTEN": server.listen})
        assert result.returncode == 0, result.stderr
    finally:
        assert server.stop() == 0
