"""Installs a committed package.json + package-lock.json with ``npm ci``, once.

Used by the tests that need Node.js tools (buf from ``tools/``) or run the Node.js
example client (``examples/node/``). Nothing is skipped: a machine without Node.js
fails these tests with a message that says what to install.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

NPM_CI_TIMEOUT = 300.0


def require_executable(name: str) -> str:
    """The path of ``name`` on PATH, or fail the test saying how to get it."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(
            f"`{name}` is not on PATH: these tests need Node.js 18 or later with npm "
            "(e.g. `apt-get install nodejs npm`, or https://nodejs.org/)",
            pytrace=False,
        )
    return path


def _installed(directory: Path) -> bool:
    """True when node_modules holds exactly the versions package-lock.json pins."""
    lock_file = directory / "package-lock.json"
    hidden = directory / "node_modules" / ".package-lock.json"  # npm writes it on install
    if not hidden.is_file():
        return False
    try:
        wanted = json.loads(lock_file.read_text(encoding="utf-8"))["packages"]
        have = json.loads(hidden.read_text(encoding="utf-8"))["packages"]
    except (OSError, ValueError, KeyError):
        return False
    for path, entry in wanted.items():
        if not path:  # the root project itself
            continue
        installed = have.get(path)
        if installed is None:
            if entry.get("optional"):  # another platform's binary: npm leaves it out
                continue
            return False
        if installed.get("version") != entry.get("version"):
            return False
        if not (directory / path / "package.json").is_file():
            return False
    return True


def npm_ci(directory: Path) -> Path:
    """``npm ci`` in ``directory`` unless its node_modules is already up to date.

    Quiet when there is nothing to do; on failure, the test fails with npm's output.
    Returns the ``node_modules`` folder.
    """
    node_modules = directory / "node_modules"
    if _installed(directory):
        return node_modules
    npm = require_executable("npm")
    require_executable("node")
    command = [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"]
    try:
        result = subprocess.run(
            command,
            cwd=directory,
            capture_output=True,
            text=True,
            timeout=NPM_CI_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired as error:
        pytest.fail(f"`npm ci` in {directory} took over {error.timeout:g} s", pytrace=False)
    if result.returncode != 0 or not _installed(directory):
        pytest.fail(
            f"`npm ci` in {directory} failed (exit {result.returncode}):\n"
            f"{result.stdout}\n{result.stderr}",
            pytrace=False,
        )
    return node_modules
