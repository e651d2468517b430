"""The store limits of the ``lock_store:`` section, and the Redis version check."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from ticketlock_server.cli import build_config
from ticketlock_server.config import (
    DEFAULT_MAX_TICKETS_PER_CONVERSATION,
    DEFAULT_NUMBER_RETENTION_SECONDS,
    MAX_MAX_TICKETS_PER_CONVERSATION,
    ConfigError,
    StoreLimits,
    store_config_from_section,
)
from ticketlock_server.stores import create_store
from ticketlock_server.stores.redis_store import version_error


@pytest.mark.parametrize("store_type", ["in_memory", "redis", "concurrent_redis"])
def test_limits_default_to_a_hundred_tickets_and_a_day_of_numbers(store_type: str) -> None:
    limits = store_config_from_section({"type": store_type}, {}).limits
    assert limits == StoreLimits()
    assert limits.max_tickets_per_conversation == DEFAULT_MAX_TICKETS_PER_CONVERSATION == 100
    assert limits.number_retention_seconds == DEFAULT_NUMBER_RETENTION_SECONDS == 86400
    assert limits.max_lifetime == 86400


@pytest.mark.parametrize("store_type", ["in_memory", "redis", "concurrent_redis"])
def test_limits_are_read_for_every_built_in_store(
    store_type: str, caplog: pytest.LogCaptureFixture
) -> None:
    section = {
        "type": store_type,
        "max_tickets_per_conversation": 50,
        "number_retention_seconds": "3600",
    }
    config = store_config_from_section(section, {})
    assert config.limits == StoreLimits(50, 3600)
    assert config.limits.max_lifetime == 3600
    assert "unknown" not in caplog.text  # not mistaken for an unknown Redis setting
    store = create_store(config)
    assert store.max_lifetime == 3600


@pytest.mark.parametrize(
    ("key", "value", "why"),
    [
        ("max_tickets_per_conversation", 0, "at least 1"),
        ("max_tickets_per_conversation", MAX_MAX_TICKETS_PER_CONVERSATION + 1, "at most 100000"),
        ("max_tickets_per_conversation", "many", "must be an integer"),
        ("max_tickets_per_conversation", 2.5, "must be an integer"),
        ("number_retention_seconds", 0, "at least 1"),
        ("number_retention_seconds", "a day", "must be an integer"),
    ],
)
def test_bad_limits_are_config_errors_naming_the_key(key: str, value: Any, why: str) -> None:
    with pytest.raises(ConfigError, match=f"lock_store.{key}.*{why}"):
        store_config_from_section({"type": "in_memory", key: value}, {})


def test_the_default_lifetime_must_fit_in_the_number_retention(tmp_path: Path) -> None:
    path = tmp_path / "endpoints.yml"
    path.write_text("lock_store:\n  number_retention_seconds: 30\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="number_retention_seconds"):
        build_config(["--endpoints", str(path)], {})
    config = build_config(["--endpoints", str(path)], {"TICKET_LOCK_LIFETIME": "30"})
    assert config.default_lifetime == 30 and config.store.limits.max_lifetime == 30


@pytest.mark.parametrize(
    ("versions", "sharded", "problem"),
    [
        (["7.0.15"], False, None),
        (["6.2.0"], False, None),
        (["6.0.16"], False, "Redis 6.0.16 is too old: ticketlock needs Redis 6.2 or newer"),
        (["5.0.7"], False, "needs Redis 6.2"),
        (["7.0.0", "7.2.4"], True, None),
        (["7.0.0", "6.2.14"], True, "Redis 6.2.14 is too old: ticketlock needs Redis 7.0"),
    ],
)
def test_redis_older_than_the_minimum_is_refused_with_a_clear_error(
    versions: list[str], sharded: bool, problem: str | None
) -> None:
    found = version_error(versions, sharded)
    if problem is None:
        assert found is None
    else:
        assert found is not None and problem in found
