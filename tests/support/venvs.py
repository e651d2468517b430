"""Virtualenvs with the checkout installed, built once and cached between runs.

A venv lives in ``$TICKETLOCK_CACHE/venvs/<name>-<key>`` (default cache
``~/.cache/ticketlock``). The key hashes the interpreter, the pip requirements and
the requirements ``pyproject.toml`` declares, so a changed dependency builds a new
venv (and removes the old ones of that name); a changed checkout is only
reinstalled into it, without dependencies, since its requirements are those the
venv was resolved for. Builds are serialised by a file lock, so parallel test
runs share one venv.
"""

from __future__ import annotations

import datetime
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("TICKETLOCK_CACHE") or Path.home() / ".cache" / "ticketlock")
PIP_TIMEOUT = 900.0
# The checkout as it is installed: what a reinstall must follow.
SOURCES = ("pyproject.toml", "README.md", "LICENSE", "client", "server")


class VenvError(RuntimeError):
    """Building or refreshing a venv failed; the message holds pip's output."""


def interpreter(minor: str) -> Path:
    """``python3.<minor>``: from PATH, else from pyenv's versions folder."""
    found = shutil.which(f"python{minor}")
    if found:
        resolved = subprocess.run(
            [found, "-c", "import sys; print(sys.executable)"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if resolved.returncode == 0:
            return Path(resolved.stdout.strip())
    pyenv = Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv") / "versions"
    for candidate in sorted(pyenv.glob(f"{minor}.*"), reverse=True):
        if (candidate / "bin" / "python").exists():
            return candidate / "bin" / "python"
    raise VenvError(f"Python {minor} not found (install it, e.g. with pyenv)")


def declared_requirements() -> dict[str, object]:
    """What pyproject.toml asks pip for: a change here means a new resolution."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return {
        "dependencies": project.get("dependencies", []),
        # Not the dev extra: no venv here installs it.
        "optional": {
            group: requirements
            for group, requirements in project.get("optional-dependencies", {}).items()
            if group != "dev"
        },
        "python": project.get("requires-python", ""),
    }


def checkout_digest() -> str:
    """A hash of the files an install of the checkout is built from."""
    digest = hashlib.sha256()
    for name in SOURCES:
        path = ROOT / name
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        for file in files:
            if "__pycache__" in file.parts or file.suffix == ".pyc" or ".egg-info" in str(file):
                continue
            digest.update(str(file.relative_to(ROOT)).encode() + b"\0" + file.read_bytes())
    return digest.hexdigest()


def run(args: Sequence[str | Path], timeout: float = PIP_TIMEOUT, **kwargs: object) -> str:
    """Run a command; its output, or VenvError with the output when it fails."""
    result = subprocess.run(
        [str(a) for a in args],
        capture_output=True,
        text=True,
        timeout=timeout,
        **kwargs,  # type: ignore[call-overload]
    )
    if result.returncode != 0:
        command = " ".join(str(a) for a in args)
        raise VenvError(f"{command} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
    return str(result.stdout)


@contextmanager
def _locked(name: str) -> Iterator[None]:
    CACHE.mkdir(parents=True, exist_ok=True)
    with (CACHE / f"{name}.lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@dataclass(frozen=True)
class Venv:
    path: Path
    built: bool  # False when it came from the cache

    @property
    def python(self) -> Path:
        return self.path / "bin" / "python"

    def pip(self, *args: str, timeout: float = PIP_TIMEOUT) -> str:
        return run([self.python, "-m", "pip", "--disable-pip-version-check", *args], timeout)


def cached_venv(
    name: str,
    minor: str,
    requirements: Sequence[str],
    constraints: Sequence[str] = (),
    daily: bool = False,
) -> Venv:
    """A venv ``name`` on Python 3.<minor> where ONE pip run installed ``requirements``.

    ``requirements`` name the checkout as ``{checkout}`` (e.g. ``{checkout}[server]``);
    ``constraints`` are pinned with ``--constraint``. ``daily`` adds the date to the
    key: for venvs that follow the newest releases.
    """
    python = interpreter(minor)
    key_parts = {
        "python": str(python),
        "requirements": list(requirements),
        "constraints": list(constraints),
        "declared": declared_requirements(),
        "day": datetime.date.today().isoformat() if daily else "",
    }
    key = hashlib.sha256(json.dumps(key_parts, sort_keys=True).encode()).hexdigest()[:16]
    path = CACHE / "venvs" / f"{name}-{key}"
    complete = path / ".ticketlock-complete"
    installed = path / ".ticketlock-checkout"
    with _locked(name):
        built = not complete.exists()
        venv = Venv(path, built)
        if built:
            for old in (CACHE / "venvs").glob(f"{name}-*"):
                shutil.rmtree(old, ignore_errors=True)
            path.parent.mkdir(parents=True, exist_ok=True)
            run([python, "-m", "venv", path], timeout=120)
            venv.pip("install", "--quiet", "--upgrade", "pip")
            args = ["install", "--quiet"]
            if constraints:
                pins = path / "constraints.txt"
                pins.write_text("".join(f"{line}\n" for line in constraints))
                args += ["--constraint", str(pins)]
            args += [r.format(checkout=ROOT) for r in requirements]
            venv.pip(*args)
            installed.write_text(checkout_digest())
            complete.write_text(json.dumps(key_parts, indent=1))
        elif installed.read_text() != checkout_digest():
            # Same requirements, newer code: put the checkout in again, as it is now.
            venv.pip("install", "--quiet", "--no-deps", "--force-reinstall", str(ROOT))
            installed.write_text(checkout_digest())
    return venv


def interpreter_version(python: Path) -> str:
    return run([python, "-c", "import sys; print(sys.version.split()[0])"], timeout=60).strip()


if __name__ == "__main__":  # pragma: no cover - a manual helper
    print(CACHE, checkout_digest(), sys.version)
