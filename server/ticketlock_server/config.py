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
from typing import Any, Literal

import yaml

log = logging.getLogger(__name__)

DEFAULT_LOCK_LIFETIME = 60.0
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
    """Connection and key settings shared by the Redis stores (SPEC §2)."""

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
class StoreConfig:
    """Which store to run, and its settings."""

    kind: Literal["in_memory", "redis", "custom"] = "in_memory"
    endpoint: EndpointConfig = field(default_factory=EndpointConfig)
    redis: RedisConfig | None = None
    class_path: str | None = None


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
        return StoreConfig(kind="in_memory", endpoint=endpoint)
    if store_type in ("redis", "concurrent_redis"):
        concurrent_mode = _boolean(settings.pop("concurrent_mode", False), "concurrent_mode")
        concurrent = store_type == "concurrent_redis" or concurrent_mode
        redis = _redis_config(settings, url, concurrent, env)
        return StoreConfig(kind="redis", endpoint=endpoint, redis=redis)
    if not isinstance(store_type, str) or "." not in store_type:
        raise ConfigError(
            f"lock_store.type {store_type!r} is not in_memory, redis, concurrent_redis "
            "or a module path such as package.module.ClassName"
        )
    return StoreConfig(kind="custom", endpoint=endpoint, class_path=store_type)


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
    if (minimum is not None and number < minimum) or (maximum is not None and number > maximum):
        raise ConfigError(f"lock_store.{name} {number} is out of range")
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
        return DEFAULT_LOCK_LIFETIME
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(
            f"TICKET_LOCK_LIFETIME must be a non-negative integer of seconds, not {raw!r}"
        ) from None
    if value < 0:
        raise ConfigError(f"TICKET_LOCK_LIFETIME must not be negative, got {value}")
    if value > 86400:
        raise ConfigError(f"TICKET_LOCK_LIFETIME must be at most 86400 seconds, got {value}")
    return float(value) or DEFAULT_LOCK_LIFETIME


@dataclass(frozen=True)
class ServerConfig:
    """Everything the server needs, from options, environment and endpoints file."""

    listen: str = DEFAULT_LISTEN
    store: StoreConfig = field(default_factory=StoreConfig)
    default_lifetime: float = DEFAULT_LOCK_LIFETIME
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_client_ca: str | None = None
    auth_token: str | None = field(default=None, repr=False)
    log_level: str = "INFO"
    log_format: Literal["text", "json"] = "text"
    grace_seconds: float = 5.0
    metrics_port: int | None = None
    recheck_interval: float = 5.0
    keepalive_time: float = DEFAULT_KEEPALIVE_TIME
    keepalive_timeout: float = DEFAULT_KEEPALIVE_TIMEOUT
    idle_stream_timeout: float = DEFAULT_IDLE_STREAM_TIMEOUT


def read_secret_file(path: str, what: str) -> str:
    try:
        value = Path(path).read_text(encoding="utf-8").strip()
    except OSError as error:
        raise ConfigError(f"cannot read {what} {path}: {error.strerror}") from None
    if not value:
        raise ConfigError(f"{what} {path} is empty")
    return value


def environment() -> dict[str, str]:
    return dict(os.environ)
