"""Configuration, parsed once at start-up into typed objects and passed down.

Two sources: the server's own options (command line, or ``TICKETLOCK_<NAME>``
environment variables), and the ``lock_store:`` section of a Rasa-style
``endpoints.yml`` with ``${ENV_VAR}`` interpolation. Nothing deeper in the server
reads the environment.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from ticketlock.model import DEFAULT_LOCK_LIFETIME

if TYPE_CHECKING:
    from ticketlock_server.auth import Token

log = logging.getLogger(__name__)

# The one home of each server default (the lock lifetime's is Rasa's, in the model).
# How long the first waiter of a conversation sleeps at most before it reads its
# position again, so that a lost wake-up from another replica delays it by no more.
DEFAULT_RECHECK_INTERVAL = 5.0
DEFAULT_GRACE_SECONDS = 5.0
DEFAULT_LISTEN = "127.0.0.1:50051"
DEFAULT_SOCKET_TIMEOUT = 10.0
# gRPC keepalive: the server pings a quiet connection this often and drops it when
# the ping is not answered this long after, so a silent peer is gone within ~20 s.
DEFAULT_KEEPALIVE_TIME = 10.0
DEFAULT_KEEPALIVE_TIMEOUT = 10.0
# The shortest client keepalive interval the server accepts without complaint; it
# enforces a lower bound (MIN_CLIENT_PING_INTERVAL_ENFORCED) so timer jitter never
# costs a compliant client a strike.
MIN_CLIENT_KEEPALIVE_TIME = 5.0
MIN_CLIENT_PING_INTERVAL_ENFORCED = 1.0
DEFAULT_IDLE_STREAM_TIMEOUT = 300.0
DEFAULT_REDIS_KEY_PREFIX = "lock:"
DEFAULT_CONCURRENT_KEY_PREFIX = "concurrent_lock:"
# The longest ticket lifetime any request may ask for (24 h).
MAX_LOCK_LIFETIME = 86400
# Tickets one conversation may hold: a chatbot holds a handful (one per message
# being handled or waiting). At this many the `redis` store's scripts, which read
# and rewrite the conversation's whole JSON value, block Redis for about a
# millisecond (bench.store_costs, in the README); at 1,000 it was 10 ms and more.
DEFAULT_MAX_TICKETS_PER_CONVERSATION = 100
# The most that may be configured: a GetLock or WaitForTicket reply of this many
# tickets stays under gRPC's default 4 MiB message limit (about 2.2 MiB with the
# widest numbers and the longest id). Queues that long suit the in-memory store;
# on Redis one operation on them blocks it for a second or more.
MAX_MAX_TICKETS_PER_CONVERSATION = 100_000
# How long a conversation's next ticket number is kept after its last issue.
DEFAULT_NUMBER_RETENTION_SECONDS = 86400

_ENV_REFERENCE = re.compile(r"\$\{([^}]*)\}")


class ConfigError(Exception):
    """The configuration cannot be used; the message says which setting and why."""


@dataclass(frozen=True)
class EndpointConfig:
    """The ``lock_store:`` section as Rasa hands it to a custom store.

    Duck-types Rasa's ``rasa.utils.endpoints.EndpointConfig``: ``url``, ``type``
    and the remaining keys in ``kwargs``.
    """

    type: str | None = None
    url: str | None = None
    # Not in repr: it holds the section's secrets (password, tokens).
    kwargs: dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass(frozen=True)
class RedisConfig:
    """Connection and key settings shared by the Redis stores (``lock_store:`` keys)."""

    concurrent: bool
    host: str = "localhost"
    port: int = 6379
    db: int = 1
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    use_ssl: bool = False
    ssl_keyfile: str | None = None
    ssl_certfile: str | None = None
    ssl_ca_certs: str | None = None
    key_prefix: str = DEFAULT_REDIS_KEY_PREFIX
    socket_timeout: float = DEFAULT_SOCKET_TIMEOUT
    deployment_mode: Literal["standard", "cluster", "sentinel"] = "standard"
    endpoints: tuple[tuple[str, int], ...] = ()
    sentinel_service: str = "mymaster"
    # AWS ElastiCache IAM authentication, from the environment as in Rasa.
    iam_enabled: bool = False
    iam_cluster_name: str | None = None
    iam_region: str | None = None


@dataclass(frozen=True)
class StoreLimits:
    """Bounds every built-in store keeps (``lock_store:`` keys of the same names)."""

    # Beyond it, issuing or saving fails with RESOURCE_EXHAUSTED and changes nothing.
    max_tickets_per_conversation: int = DEFAULT_MAX_TICKETS_PER_CONVERSATION
    # Numbers are never handed out twice while they are kept: so they must be kept
    # at least as long as any ticket can live, and lifetimes are capped by it.
    number_retention_seconds: int = DEFAULT_NUMBER_RETENTION_SECONDS

    @property
    def max_lifetime(self) -> float:
        """The longest lifetime a request may ask for with these limits."""
        return float(min(MAX_LOCK_LIFETIME, self.number_retention_seconds))


@dataclass(frozen=True)
class StoreConfig:
    """Which store to run, and its settings."""

    kind: Literal["in_memory", "redis", "custom"] = "in_memory"
    endpoint: EndpointConfig = field(default_factory=EndpointConfig)
    redis: RedisConfig | None = None
    class_path: str | None = None
    limits: StoreLimits = field(default_factory=StoreLimits)


def interpolate(value: Any, env: Mapping[str, str]) -> Any:
    """Replace ``${NAME}`` in strings (recursively) by the environment's value."""
    if isinstance(value, str):

        def replace(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in env:
                raise ConfigError(
                    f"endpoints file refers to environment variable ${{{name}}}, which is not set"
                )
            return env[name]

        return _ENV_REFERENCE.sub(replace, value)
    if isinstance(value, list):
        return [interpolate(item, env) for item in value]
    if isinstance(value, dict):
        return {key: interpolate(item, env) for key, item in value.items()}
    return value


def load_store_config(path: str | None, env: Mapping[str, str]) -> StoreConfig:
    """The store named by the ``lock_store:`` section of an endpoints file."""
    if not path:
        return StoreConfig()
    try:
        document = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as error:
        raise ConfigError(f"cannot read endpoints file {path}: {error.strerror}") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"endpoints file {path} is not valid YAML: {error}") from None
    if document is None:
        return StoreConfig()
    if not isinstance(document, dict):
        raise ConfigError(f"endpoints file {path} must be a mapping of sections")
    section = document.get("lock_store")
    if section is None:
        return StoreConfig()
    if not isinstance(section, dict):
        raise ConfigError("lock_store: must be a mapping of settings")
    return store_config_from_section(interpolate(section, env), env)


def store_config_from_section(section: Mapping[str, Any], env: Mapping[str, str]) -> StoreConfig:
    settings = dict(section)
    store_type = settings.pop("type", None) or settings.pop("store_type", None)
    url = settings.pop("url", None)
    endpoint = EndpointConfig(type=store_type, url=url, kwargs=dict(settings))
    if store_type in (None, "in_memory"):
        return StoreConfig(kind="in_memory", endpoint=endpoint, limits=_limits(settings))
    if store_type in ("redis", "concurrent_redis"):
        limits = _limits(settings)
        concurrent_mode = _boolean(settings.pop("concurrent_mode", False), "concurrent_mode")
        concurrent = store_type == "concurrent_redis" or concurrent_mode
        redis = _redis_config(settings, url, concurrent, env)
        return StoreConfig(kind="redis", endpoint=endpoint, redis=redis, limits=limits)
    if not isinstance(store_type, str) or "." not in store_type:
        raise ConfigError(
            f"lock_store.type {store_type!r} is not in_memory, redis, concurrent_redis "
            "or a module path such as package.module.ClassName"
        )
    return StoreConfig(kind="custom", endpoint=endpoint, class_path=store_type)


def _limits(settings: dict[str, Any]) -> StoreLimits:
    """Takes the limit keys out of ``settings``."""
    tickets = _integer(
        settings.pop("max_tickets_per_conversation", DEFAULT_MAX_TICKETS_PER_CONVERSATION),
        "max_tickets_per_conversation",
        minimum=1,
        maximum=MAX_MAX_TICKETS_PER_CONVERSATION,
    )
    retention = _integer(
        settings.pop("number_retention_seconds", DEFAULT_NUMBER_RETENTION_SECONDS),
        "number_retention_seconds",
        minimum=1,
    )
    return StoreLimits(tickets, retention)


def check_default_lifetime(default_lifetime: float, limits: StoreLimits) -> None:
    """The default lifetime must be one that requests may ask for."""
    if default_lifetime > limits.max_lifetime:
        raise ConfigError(
            f"the default lock lifetime ({default_lifetime:g} s, TICKET_LOCK_LIFETIME) is "
            f"longer than lock_store.number_retention_seconds ({limits.number_retention_seconds})"
            ": numbers must be kept at least as long as a ticket lives"
        )


_REDIS_KEYS = {
    "host", "port", "db", "username", "password", "use_ssl", "ssl_keyfile", "ssl_certfile",
    "ssl_ca_certs", "key_prefix", "socket_timeout", "deployment_mode", "endpoints",
    "sentinel_service",
}  # fmt: skip


def _redis_config(
    settings: dict[str, Any], url: Any, concurrent: bool, env: Mapping[str, str]
) -> RedisConfig:
    unknown = sorted(set(settings) - _REDIS_KEYS)
    if unknown:
        log.warning("lock_store: ignoring unknown setting(s) %s", ", ".join(unknown))
    host = settings.get("host")
    if url is not None and host is not None:
        raise ConfigError("lock_store: set host or its deprecated alias url, not both")
    if url is not None:
        log.warning("lock_store.url is deprecated for Redis stores; use host instead")
        host = url
    mode = str(settings.get("deployment_mode") or "standard")
    if mode not in ("standard", "cluster", "sentinel"):
        raise ConfigError(
            f"lock_store.deployment_mode must be standard, cluster or sentinel, not {mode!r}"
        )
    port = _integer(settings.get("port", 6379), "port", minimum=1, maximum=65535)
    endpoints = tuple(_endpoint(item) for item in settings.get("endpoints") or ())
    if mode == "sentinel" and not endpoints:
        raise ConfigError(
            "lock_store.endpoints is required in sentinel mode (host:port of each sentinel)"
        )
    if mode == "cluster" and not endpoints:
        endpoints = ((str(host or "localhost"), port),)
    db = _integer(settings.get("db", 1), "db", minimum=0)
    if mode == "cluster" and "db" in settings:
        log.warning("lock_store.db is ignored in cluster mode: Redis Cluster has only db 0")
    default_prefix = DEFAULT_CONCURRENT_KEY_PREFIX if concurrent else DEFAULT_REDIS_KEY_PREFIX
    key_prefix = default_prefix
    prefix = settings.get("key_prefix")
    if prefix:
        if isinstance(prefix, str) and prefix.isalnum():
            key_prefix = f"{prefix}:{default_prefix}"
        else:
            log.warning(
                "lock_store.key_prefix %r is not alphanumeric; using the default %r",
                prefix, default_prefix,
            )  # fmt: skip
    timeout = settings.get("socket_timeout", DEFAULT_SOCKET_TIMEOUT)
    try:
        socket_timeout = float(timeout)
    except (TypeError, ValueError):
        raise ConfigError(f"lock_store.socket_timeout must be a number, not {timeout!r}") from None
    if not socket_timeout > 0:
        raise ConfigError("lock_store.socket_timeout must be positive")
    iam = (
        env.get("IAM_CLOUD_PROVIDER", "").lower() == "aws"
        and env.get("ELASTICACHE_REDIS_AWS_IAM_ENABLED", "").lower() == "true"
    )
    if iam and not (settings.get("username") and env.get("AWS_ELASTICACHE_CLUSTER_NAME")):
        raise ConfigError(
            "ElastiCache IAM authentication needs lock_store.username and "
            "AWS_ELASTICACHE_CLUSTER_NAME"
        )
    if iam and importlib.util.find_spec("botocore") is None:
        raise ConfigError(
            "ElastiCache IAM authentication needs botocore: pip install 'ticketlock[iam]'"
        )
    return RedisConfig(
        concurrent=concurrent,
        host=str(host or "localhost"),
        port=port,
        db=db,
        username=_optional_str(settings.get("username")),
        password=_optional_str(settings.get("password")),
        use_ssl=_boolean(settings.get("use_ssl", False), "use_ssl"),
        ssl_keyfile=_optional_str(settings.get("ssl_keyfile")),
        ssl_certfile=_optional_str(settings.get("ssl_certfile")),
        ssl_ca_certs=_optional_str(settings.get("ssl_ca_certs")),
        key_prefix=key_prefix,
        socket_timeout=socket_timeout,
        deployment_mode=mode,  # type: ignore[arg-type]
        endpoints=endpoints,
        sentinel_service=str(settings.get("sentinel_service") or "mymaster"),
        iam_enabled=iam,
        iam_cluster_name=env.get("AWS_ELASTICACHE_CLUSTER_NAME"),
        iam_region=env.get("AWS_DEFAULT_REGION"),
    )


def _endpoint(item: Any) -> tuple[str, int]:
    text = str(item)
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise ConfigError(f"lock_store.endpoints entry {text!r} is not host:port")
    return host.strip("[]"), _integer(port, "endpoints port", minimum=1, maximum=65535)


def _integer(value: Any, name: str, minimum: int | None = None, maximum: int | None = None) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"lock_store.{name} must be an integer, not {value!r}") from None
    if isinstance(value, float) and value != number:
        raise ConfigError(f"lock_store.{name} must be an integer, not {value!r}")
    if minimum is not None and number < minimum:
        raise ConfigError(f"lock_store.{name} {number} is out of range: at least {minimum}")
    if maximum is not None and number > maximum:
        raise ConfigError(f"lock_store.{name} {number} is out of range: at most {maximum}")
    return number


def _boolean(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
        return value.lower() in ("true", "yes", "1")
    raise ConfigError(f"lock_store.{name} must be true or false, not {value!r}")


def _optional_str(value: Any) -> str | None:
    return None if value is None or value == "" else str(value)


def lock_lifetime_from_env(env: Mapping[str, str]) -> float:
    """``TICKET_LOCK_LIFETIME``: non-negative integer seconds; 0 or empty = 60."""
    raw = env.get("TICKET_LOCK_LIFETIME", "").strip()
    if not raw:
        return float(DEFAULT_LOCK_LIFETIME)
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(
            f"TICKET_LOCK_LIFETIME must be a non-negative integer of seconds, not {raw!r}"
        ) from None
    if value < 0:
        raise ConfigError(f"TICKET_LOCK_LIFETIME must not be negative, got {value}")
    if value > MAX_LOCK_LIFETIME:
        raise ConfigError(
            f"TICKET_LOCK_LIFETIME must be at most {MAX_LOCK_LIFETIME} seconds, got {value}"
        )
    return float(value or DEFAULT_LOCK_LIFETIME)


@dataclass(frozen=True)
class ServerConfig:
    """Everything the server needs, from options, environment and endpoints file."""

    listen: str = DEFAULT_LISTEN
    store: StoreConfig = field(default_factory=StoreConfig)
    default_lifetime: float = float(DEFAULT_LOCK_LIFETIME)
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_client_ca: str | None = None
    auth_token_file: str | None = None
    # The tokens the file held at start (it is re-read when it changes).
    auth_tokens: tuple[Token, ...] = field(default=(), repr=False)
    log_level: str = "INFO"
    log_format: Literal["text", "json"] = "text"
    grace_seconds: float = DEFAULT_GRACE_SECONDS
    metrics_port: int | None = None
    # "token": /metrics asks for a bearer token of --auth-token-file too.
    metrics_auth: Literal["none", "token"] = "none"
    log_conversation_ids: Literal["hashed", "plain"] = "hashed"
    tracing: bool = False
    recheck_interval: float = DEFAULT_RECHECK_INTERVAL
    keepalive_time: float = DEFAULT_KEEPALIVE_TIME
    keepalive_timeout: float = DEFAULT_KEEPALIVE_TIMEOUT
    idle_stream_timeout: float = DEFAULT_IDLE_STREAM_TIMEOUT


def environment() -> dict[str, str]:
    return dict(os.environ)
