"""``buf breaking``: the proto stays wire- and source-compatible with what main shipped.

The baseline is the proto of the last commit on ``main`` that changed it, read
from git history (``HEAD`` where there is no ``main`` branch, e.g. a detached CI
checkout). When the proto under test is that very version (the suite runs on
main itself), the change that commit made is checked instead: against the
version before it. So an incompatible change fails the suite. A deliberately
incompatible contract goes into a new package (``ticketlock.v2`` in
``protos/ticketlock/v2/``), beside v1, which stays as it was.

One kind of finding is accepted: a language option (``go_package``,
``java_package``...) set for the first time, from its default. It names the
generated package of a language that had none; changing it once set fails.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.test_buf_lint import BUF_TIMEOUT, PROTO, ROOT, buf, run_buf

__all__ = ["buf"]  # the fixture, re-used from the lint tests


def git(*args: str) -> str:
    executable = shutil.which("git")
    if executable is None:
        pytest.fail("git is needed to read the proto's history (apt-get install git)")
    result = subprocess.run(
        [executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=BUF_TIMEOUT,
        check=False,
    )  # fmt: skip
    if result.returncode != 0:
        pytest.fail(f"git {' '.join(args)} failed: {result.stderr}")
    return result.stdout


def baseline_ref() -> str:
    has_main = subprocess.run(
        ["git", "rev-parse", "--verify", "--quiet", "refs/heads/main"],
        cwd=ROOT, capture_output=True, timeout=BUF_TIMEOUT, check=False,
    ).returncode == 0  # fmt: skip
    return "main" if has_main else "HEAD"


def module_at(tmp_path: Path, name: str, proto_text: str) -> Path:
    """A buf module (buf.yaml + the proto) holding ``proto_text``."""
    module = tmp_path / name
    (module / PROTO).parent.mkdir(parents=True)
    shutil.copy(ROOT / "buf.yaml", module / "buf.yaml")
    (module / PROTO).write_text(proto_text, encoding="utf-8")
    return module


def baseline(tmp_path: Path) -> tuple[str, Path]:
    """(the commit, a module holding the proto to compare against)."""
    commits = git("log", "--format=%H", baseline_ref(), "--", PROTO.as_posix()).split()
    if not commits:
        pytest.fail(f"no commit on {baseline_ref()} changed {PROTO}: is the clone shallow?")
    current = (ROOT / PROTO).read_text(encoding="utf-8")
    for commit in commits:
        text = git("show", f"{commit}:{PROTO.as_posix()}")
        if text != current:
            return commit, module_at(tmp_path, "baseline", text)
    pytest.fail(f"{PROTO} has a single version in history: nothing to compare with")


# A file option set where it had its default: the first naming of a language's package.
FIRST_OPTION = re.compile(r'File option "\w+" changed from "(false)?" to ".+"\.$')


def breaking_findings(output: str) -> list[str]:
    return [line for line in output.splitlines() if line and not FIRST_OPTION.search(line)]


def test_first_language_options_are_the_only_accepted_findings() -> None:
    accepted = 'a.proto:3:1:File option "go_package" changed from "" to "x/y;y".'
    assert breaking_findings(accepted) == []
    assert breaking_findings('a:1:1:File option "java_multiple_files" changed from "false" to '
                             '"true".') == []  # fmt: skip
    changed = 'a.proto:3:1:File option "go_package" changed from "x/y;y" to "z;z".'
    assert breaking_findings(changed) == [changed]


def test_proto_is_compatible_with_the_last_version_on_main(buf: Path, tmp_path: Path) -> None:
    commit, against = baseline(tmp_path)
    result = run_buf(buf, ["breaking", ".", "--against", str(against)], ROOT)
    assert not result.stderr.strip(), result.stderr
    findings = breaking_findings(result.stdout)
    assert not findings, (
        f"buf breaking against {PROTO} of commit {commit[:12]} failed (a breaking change "
        f"belongs in a new package, e.g. ticketlock.v2):\n" + "\n".join(findings)
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("int64 number = 1;", "int64 number = 9;"), "deleted"),
        (("string conversation_id = 1;", "int64 conversation_id = 1;"), "type"),
        (('option go_package = "', 'option go_package = "x/'), "go_package"),
    ],
    ids=["field renumbered", "field type changed", "go_package changed"],
)
def test_a_deliberately_broken_copy_fails(
    buf: Path, tmp_path: Path, change: tuple[str, str], message: str
) -> None:
    source = (ROOT / PROTO).read_text(encoding="utf-8")
    old, new = change
    assert old in source
    broken = module_at(tmp_path, "broken", source.replace(old, new, 1))
    current = module_at(tmp_path, "current", source)
    result = run_buf(buf, ["breaking", str(broken), "--against", str(current)], tmp_path)
    assert result.returncode != 0
    findings = breaking_findings(result.stdout)
    assert findings and any(message in line.lower() for line in findings), result.stdout
