"""``python -m ticketlock_server.healthcheck``: the container HEALTHCHECK probe."""

from __future__ import annotations

import subprocess
import sys

import pytest
from ticketlock_server import healthcheck

from harness.server import ServerProcess, free_port


@pytest.mark.parametrize(
    ("listen", "address"),
    [
        ("0.0.0.0:50051", "127.0.0.1:50051"),
        ("[::]:7000", "[::1]:7000"),
        (":7000", "127.0.0.1:7000"),
        ("127.0.0.1:6000", "127.0.0.1:6000"),
        ("localhost:6000", "localhost:6000"),
        ("unix:/run/ticketlock.sock", "unix:/run/ticketlock.sock"),
        ("0.0.0.0:0", None),
        ("nonsense", None),
        ("", None),
    ],
)
def test_address_from_listen(listen: str, address: str | None) -> None:
    assert healthcheck.address_from_listen(listen) == address


def test_default_address_order() -> None:
    assert healthcheck.default_address({}) == "127.0.0.1:50051"
    assert healthcheck.default_address({"TICKETLOCK_LISTEN": "0.0.0.0:6001"}) == "127.0.0.1:6001"
    both = {"TICKETLOCK_LISTEN": "0.0.0.0:6001", "TICKETLOCK_HEALTH_ADDR": "10.0.0.1:6002"}
    assert healthcheck.default_address(both) == "10.0.0.1:6002"


def test_serving_server_exits_0(server: ServerProcess, capsys: pytest.CaptureFixture[str]) -> None:
    assert healthcheck.main([server.target], env={}) == 0
    assert capsys.readouterr().out == f"{server.target}: SERVING\n"


def test_address_from_environment(server: ServerProcess) -> None:
    assert healthcheck.main([], env={"TICKETLOCK_HEALTH_ADDR": server.target}) == 0
    assert healthcheck.main([], env={"TICKETLOCK_LISTEN": f"0.0.0.0:{server.port}"}) == 0


def test_named_service(server: ServerProcess) -> None:
    assert healthcheck.main(["--service", "ticketlock.v1.LockService", server.target], env={}) == 0
    assert healthcheck.main(["--service", "no.such.Service", server.target], env={}) == 1


def test_no_server_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    address = f"127.0.0.1:{free_port()}"
    assert healthcheck.main([address, "--timeout", "2"], env={}) == 1
    assert f"{address}: UNAVAILABLE" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["--timeout", "0"], ["--timeout", "x"], ["--bogus"]])
def test_bad_command_line_exits_1_not_2(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        healthcheck.main(argv, env={})
    assert exit_info.value.code == 1


def test_runs_as_a_module(server: ServerProcess) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ticketlock_server.healthcheck", server.target],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "SERVING" in result.stdout
