"""The proto passes ``buf lint`` (STANDARD + COMMENTS) with the buf pinned in tools/.

buf comes from the ``@bufbuild/buf`` npm package, installed by ``npm ci`` from the
committed ``tools/package.json`` and ``tools/package-lock.json`` into
``tools/node_modules`` once per test session.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest

from tests.support.npm import npm_ci

ROOT = Path(__file__).resolve().parents[1]
TOOLS = ROOT / "tools"
PROTO = Path("protos/ticketlock/v1/lock_service.proto")
BUF_TIMEOUT = 60.0


@pytest.fixture(scope="session")
def buf() -> Path:
    """The buf executable, installed with ``npm ci`` in tools/ if needed."""
    executable = npm_ci(TOOLS) / ".bin" / "buf"
    if not executable.exists():
        pytest.fail(f"npm ci in {TOOLS} did not install {executable}", pytrace=False)
    return executable


def run_buf(buf: Path, args: Sequence[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(buf), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=BUF_TIMEOUT,
        check=False,
    )


def test_proto_passes_buf_lint(buf: Path) -> None:
    result = run_buf(buf, ["lint"], ROOT)
    assert result.returncode == 0 and not result.stdout.strip(), (
        f"buf lint failed (exit {result.returncode}):\n{result.stdout}{result.stderr}"
    )


def test_buf_module_holds_the_proto(buf: Path) -> None:
    """buf.yaml's module is protos/, so buf lint really looked at the contract."""
    result = run_buf(buf, ["ls-files"], ROOT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [str(PROTO)]


def test_lint_config_requires_comments(buf: Path, tmp_path: Path) -> None:
    """The COMMENTS rules are in force: an undocumented message fails the lint."""
    shutil.copy(ROOT / "buf.yaml", tmp_path / "buf.yaml")
    copy = tmp_path / PROTO
    copy.parent.mkdir(parents=True)
    source = (ROOT / PROTO).read_text(encoding="utf-8")
    assert "// Request of GetLock.\n" in source
    copy.write_text(source.replace("// Request of GetLock.\n", ""), encoding="utf-8")

    result = run_buf(buf, ["lint"], tmp_path)

    assert result.returncode != 0
    assert 'Message "GetLockRequest" should have a non-empty comment' in result.stdout
