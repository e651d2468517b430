"""The wheel and sdist a user installs from an index: what they hold and declare.

Both are built from the checkout with ``python -m build --no-isolation`` (the
build backend comes from the dev extra, so no network is needed), then a
client-only install of the wheel is tried in a fresh virtualenv.
"""

from __future__ import annotations

import email
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Iterator
from email.message import Message
from pathlib import Path

import pytest
import ticketlock

ROOT = Path(__file__).resolve().parent.parent
PROTO = "ticketlock/v1/lock_service.proto"
BUILD_TIMEOUT = 300
NAME = f"ticketlock-{ticketlock.__version__}"


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    out = tmp_path_factory.mktemp("dist")
    result = subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--sdist", "--wheel",
         "--outdir", str(out), str(ROOT)],
        capture_output=True, text=True, timeout=BUILD_TIMEOUT,
    )  # fmt: skip
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    yield out


@pytest.fixture(scope="module")
def wheel(dist: Path) -> Path:
    (found,) = dist.glob("ticketlock-*.whl")
    return found


@pytest.fixture(scope="module")
def sdist(dist: Path) -> Path:
    (found,) = dist.glob("ticketlock-*.tar.gz")
    return found


def _metadata(wheel: Path) -> Message:
    with zipfile.ZipFile(wheel) as archive:
        return email.message_from_bytes(archive.read(f"{NAME}.dist-info/METADATA"))


def test_wheel_ships_the_proto_next_to_its_stubs_and_the_license(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        assert archive.read(PROTO) == (ROOT / "protos" / PROTO).read_bytes()
    for stub in ("lock_service_pb2.py", "lock_service_pb2_grpc.py", "lock_service_pb2.pyi"):
        assert f"ticketlock/v1/{stub}" in names
    assert {"ticketlock/py.typed", "ticketlock_server/py.typed"} <= names
    assert "ticketlock_server/launcher.py" in names
    assert any(n.startswith("ticketlock_server/stores/lua/") and n.endswith(".lua") for n in names)
    assert f"{NAME}.dist-info/licenses/LICENSE" in names
    assert not [n for n in names if n.startswith(("tests/", "bench/", "scripts/"))]
    assert not [n for n in names if "__pycache__" in n]


def test_wheel_metadata_license_classifiers_requirements_and_command(wheel: Path) -> None:
    meta = _metadata(wheel)
    assert meta["Version"] == ticketlock.__version__
    assert meta["License-Expression"] == "Apache-2.0"
    assert meta.get_all("License-File") == ["LICENSE"]
    classifiers = meta.get_all("Classifier") or []
    for minor in (10, 11, 12, 13):
        assert f"Programming Language :: Python :: 3.{minor}" in classifiers
    assert "Typing :: Typed" in classifiers
    requires = meta.get_all("Requires-Dist") or []
    plain = sorted(r for r in requires if "extra ==" not in r)
    assert plain == ["grpcio>=1.64.0", "protobuf<8,>=4.23.3"], plain
    botocore = [r for r in requires if r.startswith("botocore")]
    assert botocore == ['botocore>=1.44.0; extra == "iam"'], botocore
    assert set(meta.get_all("Provides-Extra") or []) >= {"server", "iam", "test", "dev"}
    with zipfile.ZipFile(wheel) as archive:
        entry_points = archive.read(f"{NAME}.dist-info/entry_points.txt")
    assert b"ticketlock-server = ticketlock_server.launcher:main" in entry_points


def test_sdist_holds_the_protos_license_and_sources(sdist: Path) -> None:
    with tarfile.open(sdist) as archive:
        names = {name.partition("/")[2] for name in archive.getnames()}
        proto = archive.extractfile(f"{NAME}/protos/{PROTO}")
        assert proto is not None and proto.read() == (ROOT / "protos" / PROTO).read_bytes()
    assert {"LICENSE", "README.md", "pyproject.toml", "MANIFEST.in"} <= names
    assert f"client/{PROTO}" in names
    assert "client/ticketlock/__init__.py" in names
    assert "server/ticketlock_server/launcher.py" in names
    license_words = (ROOT / "LICENSE").read_text().split()
    assert license_words[:4] == ["Apache", "License", "Version", "2.0,"], license_words[:4]


@pytest.mark.slow
@pytest.mark.timeout(BUILD_TIMEOUT + 300)
def test_client_only_install_has_no_broken_command(wheel: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    installed = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "--quiet", "--disable-pip-version-check",
         str(wheel)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert installed.returncode == 0, installed.stderr
    command = venv / "bin" / "ticketlock-server"

    refused = subprocess.run([str(command)], capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2
    assert refused.stdout == ""
    lines = refused.stderr.splitlines()
    assert len(lines) == 1, refused.stderr
    assert "pip install 'ticketlock[server]'" in lines[0]

    version = subprocess.run(
        [str(command), "--version"], capture_output=True, text=True, timeout=60
    )
    assert (version.returncode, version.stdout) == (
        0,
        f"ticketlock-server {ticketlock.__version__}\n",
    )

    probe = (
        "import importlib.resources, ticketlock, ticketlock.rasa; "
        "print(ticketlock.__version__); "
        "print(len(importlib.resources.files('ticketlock.v1').joinpath('lock_service.proto')"
        ".read_text()))"
    )
    shown = subprocess.run(
        [str(venv / "bin" / "python"), "-c", probe],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.split() == [
        ticketlock.__version__,
        str(len((ROOT / "protos" / PROTO).read_text())),
    ]


def test_server_version_option_with_the_server_extra() -> None:
    shown = subprocess.run(
        [sys.executable, "-m", "ticketlock_server", "--version"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert (shown.returncode, shown.stdout) == (0, f"ticketlock-server {ticketlock.__version__}\n")
