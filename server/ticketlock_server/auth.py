"""Bearer tokens, tenants, and secrets reloaded from their files without a restart.

The token file (``--auth-token-file``) holds one token per line, so that during a
rotation the new token and the old one are both valid::

    # comments and blank lines are ignored
    3f9c1e0d...                                   # any conversation
    ${BOT_A_TOKEN}  tenant=bot-a  prefix=bot-a:   # only ids starting with "bot-a:"

A line is the token, then optional ``key=value`` attributes: ``tenant`` (a name
for logs and messages) and ``prefix`` (the conversation-id prefix the token is
confined to). ``${NAME}`` is replaced by the environment variable, as in
endpoints.yml. The file is read again when it changes; a change that does not
parse is logged and ignored (the tokens in force stay). Only new calls are
checked against the new tokens: calls in flight, including held Lock streams,
carry on.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from ticketlock_server import interception
from ticketlock_server.config import ConfigError, interpolate

log = logging.getLogger("ticketlock_server.auth")

# Secret files are compared with their last reading this often.
RELOAD_INTERVAL = 1.0
OPEN_SERVICES = ("/grpc.health.v1.Health/",)


@dataclass(frozen=True)
class Token:
    """One accepted bearer token, and what it may reach."""

    secret: bytes = field(repr=False)
    tenant: str | None = None
    # Conversation ids this token may name must start with this (None: any).
    prefix: str | None = None

    @property
    def name(self) -> str:
        return self.tenant or "untenanted token"


def parse_tokens(text: str, env: Mapping[str, str], where: str) -> tuple[Token, ...]:
    """The tokens of a token file's text; ConfigError naming the line if one is wrong."""
    tokens: list[Token] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        words = line.split()
        try:
            secret = str(interpolate(words[0], env))
        except ConfigError:
            raise ConfigError(
                f"{where} line {number} refers to an environment variable that is not set"
            ) from None
        attributes: dict[str, str] = {}
        for word in words[1:]:
            if word.startswith("#"):
                break
            key, sep, value = word.partition("=")
            if not sep or key not in ("tenant", "prefix"):
                raise ConfigError(
                    f"{where} line {number}: expected tenant=NAME or prefix=PREFIX after the "
                    f"token, not {key!r}"
                )
            try:
                attributes[key] = str(interpolate(value, env))
            except ConfigError:
                raise ConfigError(
                    f"{where} line {number} refers to an environment variable that is not set"
                ) from None
        if not secret:
            raise ConfigError(f"{where} line {number}: the token is empty")
        if "prefix" in attributes and not attributes["prefix"]:
            raise ConfigError(f"{where} line {number}: prefix= must not be empty")
        tokens.append(Token(secret.encode(), attributes.get("tenant"), attributes.get("prefix")))
    if not tokens:
        raise ConfigError(f"{where} is empty: it holds no token")
    return tuple(tokens)


def read_tokens(path: str, env: Mapping[str, str]) -> tuple[Token, ...]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(f"cannot read --auth-token-file {path}: {error.strerror}") from None
    return parse_tokens(text, env, f"--auth-token-file {path}")


def bearer(value: str | bytes | None) -> bytes | None:
    """The token of an ``Authorization`` value; the scheme is case-insensitive (RFC 7235)."""
    if value is None:
        return None
    raw = value.encode() if isinstance(value, str) else value
    scheme, _, credentials = raw.strip().partition(b" ")
    if scheme.lower() != b"bearer":
        return None
    return credentials.strip() or None


class TokenTable:
    """The tokens in force; replaced whole when the file changes."""

    def __init__(self, tokens: tuple[Token, ...]) -> None:
        self.tokens = tokens

    def find(self, supplied: bytes | None) -> Token | None:
        if supplied is None:
            return None
        found = None
        # Every token is compared, in constant time each: no early exit to time.
        for token in self.tokens:
            if hmac.compare_digest(supplied, token.secret):
                found = token
        return found

    def authorizes(self, authorization: str | None) -> bool:
        return self.find(bearer(authorization)) is not None


class RateLimitedLog:
    """At most ``burst`` lines at once, then one per ``interval``; tells how many it dropped."""

    def __init__(
        self, interval: float = 1.0, burst: int = 5, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._interval = interval
        self._burst = float(burst)
        self._allowance = float(burst)
        self._clock = clock
        self._last = clock()
        self._dropped = 0

    def warning(self, message: str, *args: Any) -> None:
        now = self._clock()
        self._allowance = min(self._burst, self._allowance + (now - self._last) / self._interval)
        self._last = now
        if self._allowance < 1:
            self._dropped += 1
            return
        self._allowance -= 1
        if self._dropped:
            message += " (%d similar lines suppressed)"
            args = (*args, self._dropped)
            self._dropped = 0
        log.warning(message, *args)


class _Confined(interception.Around):
    """Refuses any request that names a conversation outside the token's prefix."""

    def __init__(self, token: Token) -> None:
        self._token = token

    async def check(self, message: Any, context: interception.Context) -> None:
        prefix = self._token.prefix
        assert prefix is not None
        for cid in interception.conversation_ids(message):
            if not cid.startswith(prefix):
                await context.abort(
                    grpc.StatusCode.PERMISSION_DENIED,
                    f"the token of {self._token.name} is confined to conversation ids "
                    f"starting with {prefix!r}",
                )


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Requires ``authorization: Bearer <token>`` with a token of the table.

    The health service stays open. A token with a prefix has its requests checked
    (every message of a stream too) before the servicer sees them.
    """

    def __init__(self, table: TokenTable) -> None:
        self.table = table
        self._refusals = RateLimitedLog()

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]
        ],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        if details.method.startswith(OPEN_SERVICES):
            return await continuation(details)
        supplied: str | bytes | None = None
        for key, value in details.invocation_metadata or ():
            if key == "authorization":
                supplied = value
        token = self.table.find(bearer(supplied))
        handler = await continuation(details)
        if token is None:
            why = "no bearer token" if supplied is None else "a wrong or revoked bearer token"
            return _refusal(handler, details.method, why, self._refusals)
        if token.prefix is None or handler is None:
            return handler
        return interception.wrap(handler, lambda: _Confined(token))


def _refusal(
    handler: grpc.RpcMethodHandler[Any, Any] | None,
    method: str,
    why: str,
    refusals: RateLimitedLog,
) -> grpc.RpcMethodHandler[Any, Any]:
    async def refuse(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        # Never the token itself: only what was wrong with it.
        refusals.warning("refused %s from %s: %s", method, context.peer(), why)
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token")

    if handler is None or not (handler.request_streaming or handler.response_streaming):
        return grpc.unary_unary_rpc_method_handler(refuse)
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(refuse)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(refuse)
    return grpc.unary_stream_rpc_method_handler(refuse)


class FileWatch:
    """Calls ``on_change`` with the new bytes of some files whenever one of them changes.

    Files are compared by content, not modification time: a Kubernetes secret
    update swaps a symlink, and a quick rewrite may keep the same mtime.
    """

    def __init__(self, paths: tuple[str, ...], on_change: Callable[[], None]) -> None:
        self._paths = paths
        self._on_change = on_change
        self._last = self._read()

    def _read(self) -> tuple[bytes | None, ...]:
        contents: list[bytes | None] = []
        for path in self._paths:
            try:
                contents.append(Path(path).read_bytes())
            except OSError:
                contents.append(None)
        return tuple(contents)

    async def run(self, interval: float = RELOAD_INTERVAL) -> None:
        while True:
            await asyncio.sleep(interval)
            current = await asyncio.to_thread(self._read)
            if current != self._last:
                self._last = current
                try:
                    self._on_change()
                except Exception:
                    log.exception("reloading %s failed", ", ".join(self._paths))


def token_reloader(path: str, table: TokenTable, env: Mapping[str, str]) -> FileWatch:
    """Keeps ``table`` up to date with the token file."""

    def reload() -> None:
        try:
            tokens = read_tokens(path, env)
        except ConfigError as error:
            log.error("kept the tokens in force: %s", error)
            return
        table.tokens = tokens
        log.info("auth token file reloaded: %d token(s)", len(tokens))

    return FileWatch((path,), reload)


class TlsFiles:
    """Server TLS credentials whose certificate, key and client CA are re-read on change.

    gRPC asks ``fetch`` at each new handshake (from one of its own threads);
    it answers None (no change) until the files have changed and parse.
    """

    def __init__(self, cert: str, key: str, client_ca: str | None) -> None:
        self._paths = (cert, key) if client_ca is None else (cert, key, client_ca)
        self._pending: grpc.ServerCertificateConfiguration | None = None
        self.credentials = grpc.dynamic_ssl_server_credentials(
            self._configuration(),
            self._fetch,  # type: ignore[arg-type]  # None means: no change
            require_client_authentication=client_ca is not None,
        )

    def _configuration(self) -> grpc.ServerCertificateConfiguration:
        what = ("--tls-cert", "--tls-key", "--tls-client-ca")
        try:
            # gRPC would take a key that does not match the certificate and fail
            # every handshake after: check the pair (and the CA) first.
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(self._paths[0], self._paths[1])
            if len(self._paths) > 2:
                context.load_verify_locations(self._paths[2])
        except (OSError, ssl.SSLError, ValueError) as error:
            raise ConfigError(
                f"the TLS files {', '.join(self._paths)} are not a usable certificate, "
                f"key and CA: {error}"
            ) from None
        contents = []
        for path, name in zip(self._paths, what, strict=False):
            try:
                contents.append(Path(path).read_bytes())
            except OSError as error:
                raise ConfigError(f"cannot read {name} {path}: {error.strerror}") from None
        cert, key = contents[0], contents[1]
        ca = contents[2] if len(contents) > 2 else None
        return grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=ca)

    def _fetch(self) -> grpc.ServerCertificateConfiguration | None:
        pending, self._pending = self._pending, None
        return pending

    def reload(self) -> None:
        try:
            self._pending = self._configuration()
        except ConfigError as error:
            log.error("kept the TLS certificates in force: %s", error)
            return
        log.info("TLS certificate files changed: new connections use them")

    def watch(self) -> FileWatch:
        return FileWatch(self._paths, self.reload)
