"""The operations options: metrics auth, tracing, conversation ids in logs, the token file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from ticketlock_server.auth import RateLimitedLog, TokenTable, bearer, parse_tokens
from ticketlock_server.cli import build_config
from ticketlock_server.config import ConfigError


def test_defaults() -> None:
    config = build_config([], {})
    assert config.metrics_auth == "none"
    assert config.tracing is False
    assert config.log_conversation_ids == "hashed"


def test_options_from_flags_and_environment(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("t\n")
    env = {
        "TICKETLOCK_AUTH_TOKEN_FILE": str(tokens),
        "TICKETLOCK_METRICS_AUTH": "token",
        "TICKETLOCK_TRACING": "on",
        "TICKETLOCK_LOG_CONVERSATION_IDS": "plain",
    }
    config = build_config([], env)
    assert (config.metrics_auth, config.tracing, config.log_conversation_ids) == (
        "token", True, "plain",
    )  # fmt: skip
    assert config.auth_token_file == str(tokens)
    flagged = build_config(["--tracing", "off", "--log-conversation-ids", "hashed"], env)
    assert (flagged.tracing, flagged.log_conversation_ids) == (False, "hashed")


def test_metrics_token_needs_a_token_file() -> None:
    with pytest.raises(ConfigError, match="--metrics-auth token needs --auth-token-file"):
        build_config(["--metrics-auth", "token"], {})


def test_token_file_environment_references_come_from_the_environment(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("${BOT}\n")
    config = build_config(["--auth-token-file", str(tokens)], {"BOT": "from-env"})
    assert [t.secret for t in config.auth_tokens] == [b"from-env"]
    with pytest.raises(ConfigError, match="line 1"):
        build_config(["--auth-token-file", str(tokens)], {})


@pytest.mark.parametrize(
    ("header", "token"),
    [
        ("Bearer abc", b"abc"),
        ("bearer abc", b"abc"),
        ("BEARER  abc ", b"abc"),
        (b"Bearer abc", b"abc"),
        ("Basic abc", None),
        ("Bearer", None),
        ("Bearerabc", None),
        (None, None),
    ],
)
def test_bearer_scheme(header: str | bytes | None, token: bytes | None) -> None:
    assert bearer(header) == token


def test_token_table_finds_the_token_and_its_tenant() -> None:
    table = TokenTable(parse_tokens("a\nb tenant=x prefix=x:\n", {}, "f"))
    found = table.find(b"b")
    assert found is not None and (found.tenant, found.prefix) == ("x", "x:")
    assert table.find(b"c") is None and table.find(None) is None
    assert table.authorizes("Bearer a") and not table.authorizes("Bearer c")


def test_rate_limited_log_allows_a_burst_then_counts_what_it_dropped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [100.0]
    limited = RateLimitedLog(interval=10, burst=2, clock=lambda: now[0])
    for _ in range(5):
        limited.warning("refused %s", "x")
    assert [r.getMessage() for r in caplog.records] == ["refused x", "refused x"]
    now[0] += 9.9  # not quite one interval: still nothing
    limited.warning("refused %s", "x")
    assert len(caplog.records) == 2
    now[0] += 0.2
    limited.warning("refused %s", "y")
    assert caplog.records[-1].getMessage() == "refused y (4 similar lines suppressed)"
    limited.warning("refused %s", "z")
    assert len(caplog.records) == 3


def test_tracing_on_without_opentelemetry_is_a_config_error() -> None:
    code = (
        "import sys; sys.modules['opentelemetry'] = None\n"
        "from ticketlock_server.cli import build_config\n"
        "from ticketlock_server.config import ConfigError\n"
        "try:\n    build_config(['--tracing', 'on'], {})\nexcept ConfigError as e:\n"
        "    print(e)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert "ticketlock[server,tracing]" in result.stdout
