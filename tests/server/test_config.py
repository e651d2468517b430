"""Start-up configuration: the endpoints file (SPEC §2) and the server options (SPEC §4)."""

from __future__ import annotations

import logging
import textwrap
from pathlib import Path
from typing import Any

import pytest
from ticketlock_server.cli import build_config
from ticketlock_server.config import (
    DEFAULT_CONCURRENT_KEY_PREFIX,
    DEFAULT_LISTEN,
    DEFAULT_LOCK_LIFETIME,
    DEFAULT_REDIS_KEY_PREFIX,
    ConfigError,
    EndpointConfig,
    RedisConfig,
    ServerConfig,
    StoreConfig,
    interpolate,
    load_store_config,
    lock_lifetime_from_env,
    store_config_from_section,
)

CONFIG_LOGGER = "ticketlock_server.config"


def write(tmp_path: Path, text: str, name: str = "endpoints.yml") -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return str(path)


def redis_of(section: dict[str, Any], env: dict[str, str] | None = None) -> RedisConfig:
    config = store_config_from_section(section, env or {})
    assert config.kind == "redis"
    assert config.redis is not None
    return config.redis


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == CONFIG_LOGGER and r.levelno == logging.WARNING
    ]


@pytest.fixture(autouse=True)
def _capture_config_warnings(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger=CONFIG_LOGGER)


# -- no store configured: in-memory -------------------------------------------------


@pytest.mark.parametrize("path", [None, ""])
def test_no_file_is_the_in_memory_store(path: str | None) -> None:
    config = load_store_config(path, {})
    assert config == StoreConfig()
    assert config.kind == "in_memory"
    assert config.redis is None
    assert config.class_path is None


@pytest.mark.parametrize(
    "text",
    [
        "",
        "# only a comment\n",
        "tracker_store:\n  type: sql\n",
        "lock_store:\n",
        "lock_store:\n  url: somewhere\n",
        "lock_store:\n  type: in_memory\n",
        "lock_store:\n  type:\n",
    ],
    ids=["empty", "comment", "other-section", "empty-section", "no-type", "in_memory", "null"],
)
def test_no_type_is_the_in_memory_store(tmp_path: Path, text: str) -> None:
    config = load_store_config(write(tmp_path, text), {})
    assert config.kind == "in_memory"
    assert config.redis is None


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    path = str(tmp_path / "nope.yml")
    with pytest.raises(ConfigError, match=r"nope\.yml"):
        load_store_config(path, {})


def test_invalid_yaml_is_a_config_error(tmp_path: Path) -> None:
    path = write(tmp_path, "lock_store: [unclosed\n")
    with pytest.raises(ConfigError, match="YAML"):
        load_store_config(path, {})


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n"])
def test_document_not_a_mapping_is_a_config_error(tmp_path: Path, text: str) -> None:
    with pytest.raises(ConfigError, match="mapping"):
        load_store_config(write(tmp_path, text), {})


def test_lock_store_not_a_mapping_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="lock_store"):
        load_store_config(write(tmp_path, "lock_store: redis\n"), {})


# -- ${ENV} interpolation -------------------------------------------------------------


def test_interpolate_strings_lists_and_dicts() -> None:
    env = {"HOST": "redis.internal", "PORT": "6380", "USER": "bot", "EMPTY": ""}
    value = {
        "host": "${HOST}",
        "url": "redis://${USER}@${HOST}:${PORT}/1",
        "endpoints": ["${HOST}:${PORT}", "other:1", ["${USER}"]],
        "nested": {"deeper": {"name": "x-${USER}-y"}, "list": [{"p": "${PORT}"}]},
        "empty": "${EMPTY}",
        "port": 6379,
        "flag": True,
        "none": None,
        "plain": "no references here $HOST {HOST}",
    }
    assert interpolate(value, env) == {
        "host": "redis.internal",
        "url": "redis://bot@redis.internal:6380/1",
        "endpoints": ["redis.internal:6380", "other:1", ["bot"]],
        "nested": {"deeper": {"name": "x-bot-y"}, "list": [{"p": "6380"}]},
        "empty": "",
        "port": 6379,
        "flag": True,
        "none": None,
        "plain": "no references here $HOST {HOST}",
    }


def test_interpolation_is_not_recursive() -> None:
    assert interpolate("${A}", {"A": "${B}", "B": "no"}) == "${B}"


@pytest.mark.parametrize(
    "value",
    ["${MISSING_VAR}", ["ok", "${MISSING_VAR}"], {"a": {"b": ["x-${MISSING_VAR}"]}}],
    ids=["string", "list", "nested"],
)
def test_missing_variable_is_a_config_error_naming_it(value: Any) -> None:
    with pytest.raises(ConfigError, match="MISSING_VAR"):
        interpolate(value, {"OTHER": "x"})


def test_endpoints_file_is_interpolated(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        lock_store:
          type: ${STORE_TYPE}
          host: ${REDIS_HOST}
          port: ${REDIS_PORT}
          password: ${REDIS_PASSWORD}
          key_prefix: ${PREFIX}
          use_ssl: ${USE_SSL}
          deployment_mode: cluster
          endpoints:
            - ${REDIS_HOST}:${REDIS_PORT}
            - "node2:${REDIS_PORT}"
        """,
    )
    env = {
        "STORE_TYPE": "redis",
        "REDIS_HOST": "redis.internal",
        "REDIS_PORT": "7000",
        "REDIS_PASSWORD": "pw",
        "PREFIX": "tenant1",
        "USE_SSL": "true",
    }
    redis = load_store_config(path, env).redis
    assert redis is not None
    assert redis.host == "redis.internal"
    assert redis.port == 7000
    assert redis.password == "pw"
    assert redis.key_prefix == "tenant1:lock:"
    assert redis.use_ssl is True
    assert redis.endpoints == (("redis.internal", 7000), ("node2", 7000))


def test_endpoints_file_with_missing_variable_is_a_config_error(tmp_path: Path) -> None:
    path = write(tmp_path, "lock_store:\n  type: redis\n  password: ${REDIS_PASSWORD}\n")
    with pytest.raises(ConfigError, match="REDIS_PASSWORD"):
        load_store_config(path, {})


def test_other_sections_are_not_interpolated(tmp_path: Path) -> None:
    path = write(tmp_path, "tracker_store:\n  url: ${NOT_SET}\nlock_store:\n  type: redis\n")
    assert load_store_config(path, {}).kind == "redis"


# -- Redis stores -----------------------------------------------------------------------


def test_redis_defaults_are_rasas(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    config = load_store_config(write(tmp_path, "lock_store:\n  type: redis\n"), {})
    assert config.kind == "redis"
    assert config.endpoint.type == "redis"
    assert config.redis == RedisConfig(concurrent=False)
    redis = config.redis
    assert redis.host == "localhost"
    assert redis.port == 6379
    assert redis.db == 1
    assert redis.username is None
    assert redis.password is None
    assert redis.use_ssl is False
    assert (redis.ssl_keyfile, redis.ssl_certfile, redis.ssl_ca_certs) == (None, None, None)
    assert redis.key_prefix == DEFAULT_REDIS_KEY_PREFIX == "lock:"
    assert redis.socket_timeout == 10.0
    assert redis.deployment_mode == "standard"
    assert redis.endpoints == ()
    assert redis.sentinel_service == "mymaster"
    assert redis.iam_enabled is False
    assert warnings(caplog) == []


def test_concurrent_redis_type(caplog: pytest.LogCaptureFixture) -> None:
    redis = redis_of({"type": "concurrent_redis"})
    assert redis.concurrent is True
    assert redis.key_prefix == DEFAULT_CONCURRENT_KEY_PREFIX == "concurrent_lock:"
    assert (redis.port, redis.db, redis.socket_timeout) == (6379, 1, 10.0)
    assert warnings(caplog) == []


@pytest.mark.parametrize("flag", [True, "true", "True", "yes", "1"])
def test_redis_with_concurrent_mode(flag: Any, caplog: pytest.LogCaptureFixture) -> None:
    redis = redis_of({"type": "redis", "concurrent_mode": flag})
    assert redis.concurrent is True
    assert redis.key_prefix == "concurrent_lock:"
    assert warnings(caplog) == []


@pytest.mark.parametrize("flag", [False, "false", "no", "0"])
def test_redis_with_concurrent_mode_off(flag: Any) -> None:
    redis = redis_of({"type": "redis", "concurrent_mode": flag})
    assert redis.concurrent is False
    assert redis.key_prefix == "lock:"


def test_concurrent_mode_from_the_endpoints_file(tmp_path: Path) -> None:
    path = write(tmp_path, "lock_store:\n  type: redis\n  concurrent_mode: true\n")
    redis = load_store_config(path, {}).redis
    assert redis is not None
    assert redis.concurrent is True


def test_concurrent_mode_must_be_a_boolean() -> None:
    with pytest.raises(ConfigError, match="concurrent_mode"):
        store_config_from_section({"type": "redis", "concurrent_mode": "sometimes"}, {})


def test_concurrent_redis_with_concurrent_mode_does_not_warn(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """``concurrent_mode`` is a known setting: saying it twice is not "unknown"."""
    redis = redis_of({"type": "concurrent_redis", "concurrent_mode": True})
    assert redis.concurrent is True
    assert warnings(caplog) == []


def test_all_redis_settings(caplog: pytest.LogCaptureFixture) -> None:
    redis = redis_of(
        {
            "type": "redis",
            "host": "r.example",
            "port": "6380",
            "db": 3,
            "username": "bot",
            "password": "secret",
            "use_ssl": True,
            "ssl_keyfile": "/k.pem",
            "ssl_certfile": "/c.pem",
            "ssl_ca_certs": "/ca.pem",
            "key_prefix": "abc",
            "socket_timeout": 2.5,
        }
    )
    assert redis == RedisConfig(
        concurrent=False,
        host="r.example",
        port=6380,
        db=3,
        username="bot",
        password="secret",
        use_ssl=True,
        ssl_keyfile="/k.pem",
        ssl_certfile="/c.pem",
        ssl_ca_certs="/ca.pem",
        key_prefix="abc:lock:",
        socket_timeout=2.5,
    )
    assert warnings(caplog) == []


@pytest.mark.parametrize(
    ("store_type", "prefix", "expected"),
    [
        ("redis", "abc", "abc:lock:"),
        ("redis", "Tenant42", "Tenant42:lock:"),
        ("concurrent_redis", "abc", "abc:concurrent_lock:"),
    ],
)
def test_alphanumeric_key_prefix(
    store_type: str, prefix: str, expected: str, caplog: pytest.LogCaptureFixture
) -> None:
    assert redis_of({"type": store_type, "key_prefix": prefix}).key_prefix == expected
    assert warnings(caplog) == []


@pytest.mark.parametrize("prefix", ["ab-c", "a b", "a:b", "abc:", "tenant_1", "a.b", "{x}"])
@pytest.mark.parametrize(
    ("store_type", "default"), [("redis", "lock:"), ("concurrent_redis", "concurrent_lock:")]
)
def test_non_alphanumeric_key_prefix_warns_and_uses_the_default(
    prefix: str, store_type: str, default: str, caplog: pytest.LogCaptureFixture
) -> None:
    assert redis_of({"type": store_type, "key_prefix": prefix}).key_prefix == default
    messages = warnings(caplog)
    assert len(messages) == 1
    assert "key_prefix" in messages[0]
    assert prefix in messages[0]


def test_empty_key_prefix_is_the_default_without_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    assert redis_of({"type": "redis", "key_prefix": ""}).key_prefix == "lock:"
    assert redis_of({"type": "redis", "key_prefix": None}).key_prefix == "lock:"
    assert warnings(caplog) == []


def test_url_is_a_deprecated_alias_of_host(caplog: pytest.LogCaptureFixture) -> None:
    config = store_config_from_section({"type": "redis", "url": "r.example"}, {})
    assert config.redis is not None
    assert config.redis.host == "r.example"
    assert config.endpoint.url == "r.example"
    messages = warnings(caplog)
    assert len(messages) == 1
    assert "url" in messages[0]
    assert "deprecated" in messages[0]
    assert "host" in messages[0]


def test_url_and_host_together_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="host") as info:
        store_config_from_section({"type": "redis", "url": "a", "host": "b"}, {})
    assert "url" in str(info.value)


def test_unknown_redis_setting_warns(caplog: pytest.LogCaptureFixture) -> None:
    redis_of({"type": "redis", "hots": "typo"})
    messages = warnings(caplog)
    assert len(messages) == 1
    assert "hots" in messages[0]


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("port", "abc"),
        ("port", 0),
        ("port", 70000),
        ("db", -1),
        ("db", "one"),
        ("socket_timeout", "soon"),
        ("socket_timeout", 0),
        ("socket_timeout", -1),
        ("use_ssl", "perhaps"),
    ],
)
def test_bad_redis_values_are_config_errors_naming_the_setting(setting: str, value: Any) -> None:
    with pytest.raises(ConfigError, match=setting):
        store_config_from_section({"type": "redis", setting: value}, {})


# -- deployment modes -------------------------------------------------------------------


def test_cluster_falls_back_to_host_and_port(caplog: pytest.LogCaptureFixture) -> None:
    redis = redis_of({"type": "redis", "deployment_mode": "cluster", "host": "c1", "port": 7000})
    assert redis.deployment_mode == "cluster"
    assert redis.endpoints == (("c1", 7000),)
    assert warnings(caplog) == []


def test_cluster_falls_back_to_localhost_default_port() -> None:
    redis = redis_of({"type": "redis", "deployment_mode": "cluster"})
    assert redis.endpoints == (("localhost", 6379),)


def test_cluster_falls_back_to_the_url_alias() -> None:
    redis = redis_of({"type": "redis", "deployment_mode": "cluster", "url": "c1"})
    assert redis.endpoints == (("c1", 6379),)


def test_cluster_with_endpoints() -> None:
    redis = redis_of(
        {
            "type": "redis",
            "deployment_mode": "cluster",
            "host": "ignored",
            "endpoints": ["c1:7000", "c2:7001", "[::1]:7002"],
        }
    )
    assert redis.endpoints == (("c1", 7000), ("c2", 7001), ("::1", 7002))


def test_cluster_warns_that_db_is_ignored(caplog: pytest.LogCaptureFixture) -> None:
    redis_of({"type": "redis", "deployment_mode": "cluster", "db": 2})
    messages = warnings(caplog)
    assert len(messages) == 1
    assert "db" in messages[0]
    assert "cluster" in messages[0]


def test_standard_mode_does_not_warn_about_db(caplog: pytest.LogCaptureFixture) -> None:
    assert redis_of({"type": "redis", "db": 2}).db == 2
    assert warnings(caplog) == []


def test_sentinel_requires_endpoints() -> None:
    with pytest.raises(ConfigError, match="endpoints"):
        store_config_from_section({"type": "redis", "deployment_mode": "sentinel"}, {})
    with pytest.raises(ConfigError, match="sentinel"):
        store_config_from_section(
            {"type": "redis", "deployment_mode": "sentinel", "endpoints": []}, {}
        )


def test_sentinel_with_endpoints() -> None:
    redis = redis_of(
        {"type": "redis", "deployment_mode": "sentinel", "endpoints": ["s1:26379", "s2:26379"]}
    )
    assert redis.deployment_mode == "sentinel"
    assert redis.endpoints == (("s1", 26379), ("s2", 26379))
    assert redis.sentinel_service == "mymaster"
    other = redis_of(
        {
            "type": "concurrent_redis",
            "deployment_mode": "sentinel",
            "endpoints": ["s1:26379"],
            "sentinel_service": "primary",
        }
    )
    assert other.sentinel_service == "primary"
    assert other.concurrent


@pytest.mark.parametrize("mode", ["galaxy", "Cluster", "replica"])
def test_invalid_deployment_mode(mode: str) -> None:
    with pytest.raises(ConfigError, match="deployment_mode") as info:
        store_config_from_section({"type": "redis", "deployment_mode": mode}, {})
    assert mode in str(info.value)


@pytest.mark.parametrize("endpoint", ["c1", ":7000", "c1:port", "c1:0", "c1:65536"])
def test_bad_endpoint_is_a_config_error(endpoint: str) -> None:
    with pytest.raises(ConfigError, match="endpoints"):
        store_config_from_section(
            {"type": "redis", "deployment_mode": "cluster", "endpoints": [endpoint]}, {}
        )


# -- AWS ElastiCache IAM ------------------------------------------------------------------

IAM_ENV = {
    "IAM_CLOUD_PROVIDER": "aws",
    "ELASTICACHE_REDIS_AWS_IAM_ENABLED": "true",
    "AWS_ELASTICACHE_CLUSTER_NAME": "my-cache",
    "AWS_DEFAULT_REGION": "eu-west-1",
}


@pytest.mark.parametrize("mode", ["standard", "cluster", "sentinel"])
def test_iam_from_the_environment(mode: str) -> None:
    section: dict[str, Any] = {"type": "redis", "username": "bot", "deployment_mode": mode}
    if mode == "sentinel":
        section["endpoints"] = ["s1:26379"]
    redis = redis_of(section, IAM_ENV)
    assert redis.iam_enabled is True
    assert redis.iam_cluster_name == "my-cache"
    assert redis.iam_region == "eu-west-1"
    assert redis.username == "bot"


def test_iam_values_are_case_insensitive() -> None:
    env = dict(IAM_ENV, IAM_CLOUD_PROVIDER="AWS", ELASTICACHE_REDIS_AWS_IAM_ENABLED="True")
    assert redis_of({"type": "redis", "username": "bot"}, env).iam_enabled is True


@pytest.mark.parametrize(
    "change",
    [
        {"IAM_CLOUD_PROVIDER": "gcp"},
        {"IAM_CLOUD_PROVIDER": ""},
        {"ELASTICACHE_REDIS_AWS_IAM_ENABLED": "false"},
        {"ELASTICACHE_REDIS_AWS_IAM_ENABLED": ""},
    ],
)
def test_iam_is_off_unless_both_variables_say_so(change: dict[str, str]) -> None:
    env = dict(IAM_ENV, **change)
    assert redis_of({"type": "redis"}, env).iam_enabled is False


def test_iam_is_off_without_environment() -> None:
    redis = redis_of({"type": "redis", "username": "bot"}, {})
    assert redis.iam_enabled is False
    assert redis.iam_cluster_name is None
    assert redis.iam_region is None


def test_iam_requires_a_username() -> None:
    with pytest.raises(ConfigError, match="username"):
        store_config_from_section({"type": "redis"}, IAM_ENV)


def test_iam_requires_the_cluster_name() -> None:
    env = {k: v for k, v in IAM_ENV.items() if k != "AWS_ELASTICACHE_CLUSTER_NAME"}
    with pytest.raises(ConfigError, match="AWS_ELASTICACHE_CLUSTER_NAME"):
        store_config_from_section({"type": "redis", "username": "bot"}, env)


def test_iam_through_load_store_config(tmp_path: Path) -> None:
    path = write(tmp_path, "lock_store:\n  type: concurrent_redis\n  username: bot\n")
    redis = load_store_config(path, IAM_ENV).redis
    assert redis is not None
    assert redis.iam_enabled
    assert redis.concurrent


# -- custom stores ------------------------------------------------------------------------


def test_module_path_type_is_a_custom_store(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        lock_store:
          type: my_package.stores.MyLockStore
          url: my-host
          token: ${TOKEN}
          retries: 3
        """,
    )
    config = load_store_config(path, {"TOKEN": "t"})
    assert config.kind == "custom"
    assert config.class_path == "my_package.stores.MyLockStore"
    assert config.redis is None
    assert config.endpoint == EndpointConfig(
        type="my_package.stores.MyLockStore", url="my-host", kwargs={"token": "t", "retries": 3}
    )


def test_store_type_key_is_accepted_as_type() -> None:
    config = store_config_from_section({"store_type": "pkg.mod.Store"}, {})
    assert config.kind == "custom"
    assert config.class_path == "pkg.mod.Store"


@pytest.mark.parametrize("store_type", ["mongo", "sql", "RedisLockStore", "inmemory", 42])
def test_unknown_bare_type_is_a_config_error(store_type: Any) -> None:
    with pytest.raises(ConfigError, match=r"lock_store\.type") as info:
        store_config_from_section({"type": store_type}, {})
    assert str(store_type) in str(info.value)


# -- TICKET_LOCK_LIFETIME --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, 60.0),
        ({"TICKET_LOCK_LIFETIME": ""}, 60.0),
        ({"TICKET_LOCK_LIFETIME": "  "}, 60.0),
        ({"TICKET_LOCK_LIFETIME": "0"}, 60.0),
        ({"TICKET_LOCK_LIFETIME": "5"}, 5.0),
        ({"TICKET_LOCK_LIFETIME": " 5 "}, 5.0),
        ({"TICKET_LOCK_LIFETIME": "3600"}, 3600.0),
        ({"TICKET_LOCK_LIFETIME": "86400"}, 86400.0),
    ],
)
def test_lock_lifetime_from_env(env: dict[str, str], expected: float) -> None:
    value = lock_lifetime_from_env(env)
    assert value == expected
    assert isinstance(value, float)
    assert DEFAULT_LOCK_LIFETIME == 60.0


@pytest.mark.parametrize("raw", ["-1", "abc", "1.5", "5s", "86401"])
def test_bad_lock_lifetime_is_a_config_error(raw: str) -> None:
    with pytest.raises(ConfigError, match="TICKET_LOCK_LIFETIME"):
        lock_lifetime_from_env({"TICKET_LOCK_LIFETIME": raw})


# -- the command line and TICKETLOCK_<NAME> -------------------------------------------------


@pytest.fixture
def files(tmp_path: Path) -> dict[str, str]:
    """Two of each file option, so that flag and environment can differ."""
    paths = {
        "endpoints_a": write(tmp_path, "lock_store:\n  type: redis\n", "a.yml"),
        "endpoints_b": write(tmp_path, "lock_store:\n  type: concurrent_redis\n", "b.yml"),
        "token_a": write(tmp_path, "token-a\n", "token-a"),
        "token_b": write(tmp_path, "  token-b  \n", "token-b"),
    }
    return paths


def test_defaults_without_options_or_environment() -> None:
    config = build_config([], {})
    assert config == ServerConfig()
    assert config.listen == DEFAULT_LISTEN == "127.0.0.1:50051"
    assert config.store.kind == "in_memory"
    assert config.default_lifetime == 60.0
    assert (config.tls_cert, config.tls_key, config.tls_client_ca) == (None, None, None)
    assert config.auth_token is None
    assert config.log_level == "INFO"
    assert config.log_format == "text"
    assert config.grace_seconds == 5.0


def test_every_option_from_the_environment(files: dict[str, str]) -> None:
    env = {
        "TICKETLOCK_ENDPOINTS": files["endpoints_a"],
        "TICKETLOCK_LISTEN": "[::]:6000",
        "TICKETLOCK_TLS_CERT": "/env/cert.pem",
        "TICKETLOCK_TLS_KEY": "/env/key.pem",
        "TICKETLOCK_TLS_CLIENT_CA": "/env/ca.pem",
        "TICKETLOCK_AUTH_TOKEN_FILE": files["token_a"],
        "TICKETLOCK_LOG_LEVEL": "debug",
        "TICKETLOCK_LOG_FORMAT": "json",
        "TICKETLOCK_GRACE": "2.5",
        "TICKET_LOCK_LIFETIME": "7",
    }
    config = build_config([], env)
    assert config.store.kind == "redis"
    assert config.store.redis is not None
    assert not config.store.redis.concurrent
    assert config.listen == "[::]:6000"
    assert config.tls_cert == "/env/cert.pem"
    assert config.tls_key == "/env/key.pem"
    assert config.tls_client_ca == "/env/ca.pem"
    assert config.auth_token == "token-a"
    assert config.log_level == "DEBUG"
    assert config.log_format == "json"
    assert config.grace_seconds == 2.5
    assert config.default_lifetime == 7.0


def test_flags_win_over_the_environment(files: dict[str, str]) -> None:
    env = {
        "TICKETLOCK_ENDPOINTS": files["endpoints_a"],
        "TICKETLOCK_LISTEN": "[::]:6000",
        "TICKETLOCK_TLS_CERT": "/env/cert.pem",
        "TICKETLOCK_TLS_KEY": "/env/key.pem",
        "TICKETLOCK_TLS_CLIENT_CA": "/env/ca.pem",
        "TICKETLOCK_AUTH_TOKEN_FILE": files["token_a"],
        "TICKETLOCK_LOG_LEVEL": "debug",
        "TICKETLOCK_LOG_FORMAT": "json",
        "TICKETLOCK_GRACE": "2.5",
    }
    argv = [
        "--endpoints",
        files["endpoints_b"],
        "--listen",
        "unix:/tmp/ticketlock.sock",
        "--tls-cert",
        "/flag/cert.pem",
        "--tls-key",
        "/flag/key.pem",
        "--tls-client-ca",
        "/flag/ca.pem",
        "--auth-token-file",
        files["token_b"],
        "--log-level",
        "warning",
        "--log-format",
        "text",
        "--grace",
        "9",
    ]
    config = build_config(argv, env)
    assert config.store.redis is not None
    assert config.store.redis.concurrent
    assert config.listen == "unix:/tmp/ticketlock.sock"
    assert config.tls_cert == "/flag/cert.pem"
    assert config.tls_key == "/flag/key.pem"
    assert config.tls_client_ca == "/flag/ca.pem"
    assert config.auth_token == "token-b"
    assert config.log_level == "WARNING"
    assert config.log_format == "text"
    assert config.grace_seconds == 9.0


def test_empty_environment_values_mean_the_default() -> None:
    env = {"TICKETLOCK_LISTEN": "", "TICKETLOCK_LOG_LEVEL": "", "TICKETLOCK_ENDPOINTS": ""}
    config = build_config([], env)
    assert config.listen == DEFAULT_LISTEN
    assert config.log_level == "INFO"
    assert config.store.kind == "in_memory"


def test_metrics_port_option(tmp_path: Path) -> None:
    """SPEC §4 lists ``--metrics-port`` among the options (also TICKETLOCK_METRICS_PORT)."""
    from_flag = build_config(["--metrics-port", "9100"], {})
    assert getattr(from_flag, "metrics_port", None) == 9100
    from_env = build_config([], {"TICKETLOCK_METRICS_PORT": "9101"})
    assert getattr(from_env, "metrics_port", None) == 9101


@pytest.mark.parametrize(
    "env",
    [
        {"TICKETLOCK_LOG_LEVEL": "loud"},
        {"TICKETLOCK_LOG_FORMAT": "xml"},
        {"TICKETLOCK_GRACE": "soon"},
    ],
    ids=["log-level", "log-format", "grace"],
)
def test_bad_option_from_the_environment_is_rejected_like_a_bad_flag(env: dict[str, str]) -> None:
    """A value argparse would refuse on the command line must not slip in by environment."""
    with pytest.raises((ConfigError, SystemExit)):
        build_config([], env)


@pytest.mark.parametrize(
    "argv",
    [["--log-level", "loud"], ["--log-format", "xml"], ["--grace", "soon"], ["--bogus"]],
)
def test_bad_flag_is_a_usage_error(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as info:
        build_config(argv, {})
    assert info.value.code == 2


def test_missing_auth_token_file_is_a_config_error(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope")
    with pytest.raises(ConfigError, match="auth-token-file"):
        build_config(["--auth-token-file", missing], {})
    with pytest.raises(ConfigError, match="auth-token-file"):
        build_config([], {"TICKETLOCK_AUTH_TOKEN_FILE": missing})


def test_empty_auth_token_file_is_a_config_error(tmp_path: Path) -> None:
    empty = write(tmp_path, "  \n", "empty-token")
    with pytest.raises(ConfigError, match="empty"):
        build_config(["--auth-token-file", empty], {})


def test_bad_endpoints_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        build_config(["--endpoints", str(tmp_path / "nope.yml")], {})
    with pytest.raises(ConfigError, match="TICKET_LOCK_LIFETIME"):
        build_config([], {"TICKET_LOCK_LIFETIME": "-1"})


# -- secrets --------------------------------------------------------------------------------

PASSWORD = "hunter2-Pa55w0rd"
TOKEN = "tok-0123456789abcdef"


def test_password_is_not_in_repr_of_redis_config() -> None:
    redis = redis_of({"type": "redis", "password": PASSWORD})
    assert redis.password == PASSWORD
    assert PASSWORD not in repr(redis)
    assert PASSWORD not in str(redis)


@pytest.mark.parametrize("store_type", ["redis", "concurrent_redis", "pkg.mod.Store"])
def test_password_is_not_in_repr_of_store_config(store_type: str) -> None:
    config = store_config_from_section({"type": store_type, "password": PASSWORD}, {})
    assert PASSWORD not in repr(config)
    assert PASSWORD not in str(config)
    assert PASSWORD not in repr(config.endpoint)


def test_secrets_are_not_in_repr_of_server_config(tmp_path: Path) -> None:
    endpoints = write(
        tmp_path, "lock_store:\n  type: redis\n  username: bot\n  password: ${REDIS_PASSWORD}\n"
    )
    token = write(tmp_path, TOKEN + "\n", "token")
    config = build_config(
        ["--endpoints", endpoints, "--auth-token-file", token], {"REDIS_PASSWORD": PASSWORD}
    )
    assert config.store.redis is not None
    assert config.store.redis.password == PASSWORD
    assert config.auth_token == TOKEN
    assert PASSWORD not in repr(config)
    assert PASSWORD not in str(config)
    assert TOKEN not in repr(config)
    assert "bot" in repr(config)  # the rest is still there to read


def test_keepalive_and_idle_stream_options() -> None:
    defaults = build_config([], {})
    assert (defaults.keepalive_time, defaults.keepalive_timeout) == (10.0, 10.0)
    assert defaults.idle_stream_timeout == 300.0
    env = {
        "TICKETLOCK_KEEPALIVE_TIME": "4",
        "TICKETLOCK_KEEPALIVE_TIMEOUT": "2.5",
        "TICKETLOCK_IDLE_STREAM_TIMEOUT": "60",
    }
    from_env = build_config([], env)
    assert (from_env.keepalive_time, from_env.keepalive_timeout) == (4.0, 2.5)
    assert from_env.idle_stream_timeout == 60.0
    argv = ["--keepalive-time", "20", "--keepalive-timeout", "5", "--idle-stream-timeout", "1"]
    from_flags = build_config(argv, env)
    assert (from_flags.keepalive_time, from_flags.keepalive_timeout) == (20.0, 5.0)
    assert from_flags.idle_stream_timeout == 1.0


@pytest.mark.parametrize(
    "option", ["--keepalive-time", "--keepalive-timeout", "--idle-stream-timeout"]
)
@pytest.mark.parametrize("value", ["0", "-1", "soon", "inf", "nan"])
def test_keepalive_and_idle_values_must_be_positive_seconds(
    option: str, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        build_config([option, value], {})
    assert info.value.code == 2
    assert option in capsys.readouterr().err
