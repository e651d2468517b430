"""``ticketlock-server``: options from the command line or ``TICKETLOCK_<NAME>``."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import math
import sys
from collections.abc import Mapping, Sequence

from ticketlock import __version__

from ticketlock_server.auth import read_tokens
from ticketlock_server.config import (
    DEFAULT_GRACE_SECONDS,
    DEFAULT_IDLE_STREAM_TIMEOUT,
    DEFAULT_KEEPALIVE_TIME,
    DEFAULT_KEEPALIVE_TIMEOUT,
    DEFAULT_LISTEN,
    DEFAULT_RECHECK_INTERVAL,
    ConfigError,
    ServerConfig,
    check_default_lifetime,
    environment,
    load_store_config,
    lock_lifetime_from_env,
)
from ticketlock_server.observability import configure_logging, tracing_available

log = logging.getLogger("ticketlock_server")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ticketlock-server",
        description="gRPC ticket-lock server. Every option can also be set as "
        "TICKETLOCK_<NAME> (e.g. TICKETLOCK_LISTEN); a flag wins over the variable.",
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    p.add_argument(
        "--endpoints",
        metavar="FILE",
        help="Rasa-style endpoints.yml whose lock_store: section picks the store "
        "(default: in-memory store)",
    )
    p.add_argument(
        "--listen",
        default=DEFAULT_LISTEN,
        metavar="ADDR",
        help=f"host:port, [::]:port or unix:/path (default {DEFAULT_LISTEN})",
    )
    p.add_argument("--tls-cert", metavar="FILE", help="server certificate chain (PEM) for TLS")
    p.add_argument("--tls-key", metavar="FILE", help="server private key (PEM) for TLS")
    p.add_argument(
        "--tls-client-ca",
        metavar="FILE",
        help="CA bundle (PEM); clients must present a certificate it signed (mTLS)",
    )
    p.add_argument(
        "--auth-token-file",
        metavar="FILE",
        help="clients must send 'authorization: Bearer <token>' with a token of this "
        "file: one per line, optionally 'tenant=NAME prefix=PREFIX' after it; re-read "
        "when it changes (the health service stays open)",
    )
    p.add_argument(
        "--metrics-port",
        type=int,
        metavar="PORT",
        help="serve Prometheus metrics over HTTP on this port (default: off)",
    )
    p.add_argument(
        "--metrics-auth",
        default="none",
        choices=["none", "token"],
        help="token: /metrics also requires a bearer token of --auth-token-file",
    )
    p.add_argument(
        "--tracing",
        default="off",
        choices=["off", "on"],
        help="on: join the caller's OpenTelemetry trace (needs the 'tracing' extra; "
        "export is configured by the OpenTelemetry SDK, e.g. with opentelemetry-instrument)",
    )
    p.add_argument(
        "--log-conversation-ids",
        default="hashed",
        choices=["hashed", "plain"],
        help="how RPC logs show conversation ids, which may identify users (default: a short hash)",
    )
    p.add_argument(
        "--log-level",
        default="INFO",
        type=str.upper,
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
    )
    p.add_argument("--log-format", default="text", choices=["text", "json"])
    p.add_argument(
        "--grace",
        type=float,
        default=DEFAULT_GRACE_SECONDS,
        metavar="SECONDS",
        help="on SIGTERM, how long running unary calls may take to finish",
    )
    p.add_argument(
        "--keepalive-time",
        type=_positive_seconds,
        default=DEFAULT_KEEPALIVE_TIME,
        metavar="SECONDS",
        help="ping a connection that has been quiet this long, to find peers that "
        f"went silent (default {DEFAULT_KEEPALIVE_TIME:g})",
    )
    p.add_argument(
        "--keepalive-timeout",
        type=_positive_seconds,
        default=DEFAULT_KEEPALIVE_TIMEOUT,
        metavar="SECONDS",
        help="drop a connection whose ping is not answered within this time, ending "
        f"its calls and releasing their tickets (default {DEFAULT_KEEPALIVE_TIMEOUT:g})",
    )
    p.add_argument(
        "--idle-stream-timeout",
        type=_positive_seconds,
        default=DEFAULT_IDLE_STREAM_TIMEOUT,
        metavar="SECONDS",
        help="end (with OK) a Lock stream that holds no ticket and has received "
        f"nothing for this long (default {DEFAULT_IDLE_STREAM_TIMEOUT:g})",
    )
    p.add_argument(
        "--recheck-interval",
        type=_recheck_interval,
        default=DEFAULT_RECHECK_INTERVAL,
        metavar="SECONDS",
        help="the longest a conversation's first waiter sleeps before it reads its "
        "position again, should a release on another replica go unheard "
        f"(default {DEFAULT_RECHECK_INTERVAL:g}; more than 0, at most {MAX_RECHECK_INTERVAL:g})",
    )
    return p


# Beyond an hour a lost wake-up would strand a waiter for longer than any lock lives.
MAX_RECHECK_INTERVAL = 3600.0


def _recheck_interval(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {raw!r}") from None
    if not (math.isfinite(value) and 0 < value <= MAX_RECHECK_INTERVAL):
        raise argparse.ArgumentTypeError(
            f"must be more than 0 and at most {MAX_RECHECK_INTERVAL:g} seconds, got {raw}"
        )
    return value


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, not {text}")
    return value


def _from_environment(p: argparse.ArgumentParser, env: Mapping[str, str]) -> list[str]:
    """``TICKETLOCK_<NAME>`` values as flags, so argparse checks them like flags."""
    flags: list[str] = []
    for action in p._actions:
        for flag in action.option_strings:
            if not flag.startswith("--") or flag == "--help":
                continue
            value = env.get("TICKETLOCK_" + flag[2:].upper().replace("-", "_"))
            if value:
                flags += [flag, value]
    return flags


def build_config(argv: Sequence[str] | None, env: Mapping[str, str]) -> ServerConfig:
    p = parser()
    given = list(sys.argv[1:] if argv is None else argv)
    # Flags come after the environment's, so a flag wins.
    args = p.parse_args(_from_environment(p, env) + given)
    tokens = read_tokens(args.auth_token_file, env) if args.auth_token_file else ()
    if args.metrics_auth == "token" and not tokens:
        raise ConfigError("--metrics-auth token needs --auth-token-file")
    if args.tracing == "on" and not tracing_available():
        raise ConfigError(
            "--tracing on needs OpenTelemetry: pip install 'ticketlock[server,tracing]'"
        )
    store = load_store_config(args.endpoints, env)
    default_lifetime = lock_lifetime_from_env(env)
    check_default_lifetime(default_lifetime, store.limits)
    return ServerConfig(
        listen=args.listen,
        store=store,
        default_lifetime=default_lifetime,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        tls_client_ca=args.tls_client_ca,
        auth_token_file=args.auth_token_file,
        auth_tokens=tokens,
        metrics_auth=args.metrics_auth,
        tracing=args.tracing == "on",
        log_conversation_ids=args.log_conversation_ids,
        log_level=args.log_level.upper(),
        log_format=args.log_format,
        grace_seconds=args.grace,
        metrics_port=args.metrics_port,
        keepalive_time=args.keepalive_time,
        keepalive_timeout=args.keepalive_timeout,
        idle_stream_timeout=args.idle_stream_timeout,
        recheck_interval=args.recheck_interval,
    )


def main(argv: Sequence[str] | None = None) -> None:
    env = environment()
    try:
        config = build_config(argv, env)
        configure_logging(config.log_level, config.log_format)
        from ticketlock_server.app import serve  # the server is assembled past option parsing

        # The start-up objects never die: keep them out of every collection, and
        # collect less often, so that 10,000 waiters do not pay full collections
        # of hundreds of milliseconds at a time.
        gc.freeze()
        gc.set_threshold(50_000, 20, 100)
        asyncio.run(serve(config))
    except ConfigError as error:
        print(f"ticketlock-server: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
