"""``python -m ticketlock_server.healthcheck [ADDR]``: a probe for container health checks.

Asks the standard gRPC health service (``grpc.health.v1.Health/Check``) of a
running ``ticketlock-server`` and exits 0 only when the answer is ``SERVING``
(the server reports that only while its store answers); it exits 1 for anything
else: ``NOT_SERVING``, an unreachable server, a timeout, or a bad option. It never
exits 2, which Docker reserves.

The address is, in this order: the ``ADDR`` argument, ``TICKETLOCK_HEALTH_ADDR``,
the server's own ``TICKETLOCK_LISTEN`` with a wildcard host turned into loopback
(``0.0.0.0:P`` -> ``127.0.0.1:P``, ``[::]:P`` -> ``[::1]:P``; ``unix:`` paths as
they are), and finally ``127.0.0.1:50051``. The health service needs no bearer
token.

TLS follows the server's own settings, so the image's HEALTHCHECK works unchanged
when the server requires TLS or mTLS: with ``TICKETLOCK_TLS_CERT`` set, the probe
speaks TLS and
- trusts ``TICKETLOCK_HEALTH_CA`` (the CA that signed the server certificate),
  else the server certificate itself (gRPC takes it as its own trust anchor);
- expects the name ``TICKETLOCK_HEALTH_SERVER_NAME``, else the first DNS name of
  the server certificate (the probe dials loopback, not that name);
- when the server requires client certificates (``TICKETLOCK_TLS_CLIENT_CA``),
  presents ``TICKETLOCK_HEALTH_CERT``/``TICKETLOCK_HEALTH_KEY``, else the server's
  own certificate and key (accepted when the client CA signed them).
"""

from __future__ import annotations

import argparse
import os
import ssl
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

DEFAULT_ADDRESS = "127.0.0.1:50051"
DEFAULT_TIMEOUT = 3.0

_WILDCARD_HOSTS = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "[::]": "[::1]", "::": "[::1]"}


def address_from_listen(listen: str) -> str | None:
    """Where to reach a server started with ``--listen listen``; None if unknown."""
    listen = listen.strip()
    if listen.startswith("unix:"):
        return listen
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or int(port) == 0:
        return None
    return f"{_WILDCARD_HOSTS.get(host, host)}:{port}"


def default_address(env: Mapping[str, str]) -> str:
    """The address to probe when none is given on the command line."""
    explicit = env.get("TICKETLOCK_HEALTH_ADDR", "").strip()
    if explicit:
        return explicit
    derived = address_from_listen(env.get("TICKETLOCK_LISTEN", ""))
    return derived or DEFAULT_ADDRESS


@dataclass(frozen=True)
class Tls:
    """How the probe speaks TLS to a server that requires it."""

    root_certificates: bytes
    server_name: str | None = None
    certificate_chain: bytes | None = None
    private_key: bytes | None = None


def _dns_name(certificate_path: str) -> str | None:
    """The first DNS name (else the common name) of a PEM certificate."""
    try:
        # The standard library's only certificate parser without a live connection.
        decoded = ssl._ssl._test_decode_cert(certificate_path)  # type: ignore[attr-defined]
    except (OSError, ssl.SSLError, ValueError):
        return None
    for kind, value in decoded.get("subjectAltName", ()):
        if kind == "DNS":
            return str(value)
    for rdn in decoded.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return None


def tls_from_environment(env: Mapping[str, str]) -> Tls | None:
    """The probe's TLS settings, derived from the server's (None: plaintext)."""
    server_cert = env.get("TICKETLOCK_TLS_CERT", "").strip()
    if not server_cert:
        return None
    ca = env.get("TICKETLOCK_HEALTH_CA", "").strip() or server_cert
    name = env.get("TICKETLOCK_HEALTH_SERVER_NAME", "").strip() or _dns_name(server_cert)
    chain = key = None
    if env.get("TICKETLOCK_TLS_CLIENT_CA", "").strip():
        cert_path = env.get("TICKETLOCK_HEALTH_CERT", "").strip() or server_cert
        key_path = (
            env.get("TICKETLOCK_HEALTH_KEY", "").strip()
            or env.get("TICKETLOCK_TLS_KEY", "").strip()
        )
        chain = Path(cert_path).read_bytes()
        key = Path(key_path).read_bytes() if key_path else None
    return Tls(Path(ca).read_bytes(), name, chain, key)


def check(
    address: str, timeout: float = DEFAULT_TIMEOUT, service: str = "", tls: Tls | None = None
) -> tuple[bool, str]:
    """Ask the health service at ``address``; ``(serving, what it said)``."""
    if tls is None:
        channel = grpc.insecure_channel(address)
    else:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=tls.root_certificates,
            private_key=tls.private_key,
            certificate_chain=tls.certificate_chain,
        )
        options = [] if tls.server_name is None else [
            ("grpc.ssl_target_name_override", tls.server_name)
        ]  # fmt: skip
        channel = grpc.secure_channel(address, credentials, options)
    with channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError as error:
            code = error.code() if isinstance(error, grpc.Call) else None
            details = error.details() if isinstance(error, grpc.Call) else str(error)
            name = code.name if code is not None else "ERROR"
            return False, f"{name}: {details}" if details else name
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    return response.status == health_pb2.HealthCheckResponse.SERVING, str(status)


class _Parser(argparse.ArgumentParser):
    """Exits 1, not argparse's 2 (which Docker reserves), on a bad command line."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(1, f"{self.prog}: error: {message}\n")


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds: {text!r}")
    return value


def parser(env: Mapping[str, str]) -> argparse.ArgumentParser:
    p = _Parser(
        prog="python -m ticketlock_server.healthcheck",
        description="Exit 0 when the ticketlock server's gRPC health service says SERVING, "
        "1 otherwise.",
    )
    p.add_argument(
        "address",
        nargs="?",
        default=default_address(env),
        metavar="ADDR",
        help="host:port or unix:/path (default: TICKETLOCK_HEALTH_ADDR, else the host:port of "
        f"TICKETLOCK_LISTEN with a wildcard host as loopback, else {DEFAULT_ADDRESS})",
    )
    p.add_argument(
        "--timeout",
        type=_positive,
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help=f"give up after this long (default {DEFAULT_TIMEOUT:g})",
    )
    p.add_argument(
        "--service",
        default="",
        help="the health service name to check (default: the server as a whole)",
    )
    return p


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    env = os.environ if env is None else env
    args = parser(env).parse_args(argv)
    try:
        tls = tls_from_environment(env)
    except OSError as error:
        print(f"cannot read a TLS file for the probe: {error}", file=sys.stderr)
        return 1
    serving, said = check(args.address, args.timeout, args.service, tls)
    if serving:
        print(f"{args.address}: {said}")
        return 0
    print(f"{args.address}: {said}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
