"""A watchdog that stops a benchmark's servers if the benchmark itself is killed.

The servers are stopped by context managers on every ordinary exit (an error, ^C,
``--timeout``). A SIGKILL of the benchmark, which is what ``subprocess.run``
sends when a caller's timeout runs out (a smoke test, a CI step), runs no
cleanup: the redis-server (its own session) and the ticketlock servers would be
left running. So a small process in its own session is told each server's pid
over a pipe only the benchmark holds; when the pipe closes without a ``clear``,
the benchmark died, and it stops those processes (SIGTERM, then SIGKILL) and
removes the benchmark's temporary directory.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import IO

# Runs in the watchdog: argv is the directory to remove, then the process names. It
# only stops processes that still look like the servers it was told about, in case
# a pid was reused after one of them exited.
WATCHDOG = r"""
import shutil
import sys
import psutil

pids = []
for line in sys.stdin:
    line = line.strip()
    if line == "clear":
        pids = []
    elif line:
        pids.append(int(line))
victims = []
for pid in pids:
    try:
        process = psutil.Process(pid)
        if any(name in " ".join(process.cmdline()) for name in sys.argv[2:]):
            process.terminate()
            victims.append(process)
    except psutil.Error:
        pass
_, alive = psutil.wait_procs(victims, timeout=5)
for process in alive:
    try:
        process.kill()
    except psutil.Error:
        pass
if pids and sys.argv[1]:
    psutil.wait_procs(alive, timeout=5)
    shutil.rmtree(sys.argv[1], ignore_errors=True)
"""
NAMES = ("redis-server", "ticketlock_server")


class Reaper:
    """Use as a context manager around everything that starts servers; ``watch`` each pid.

    ``directory``: removed too if the benchmark dies (its ``TemporaryDirectory``).
    """

    def __init__(self, directory: Path | None = None, names: tuple[str, ...] = NAMES) -> None:
        self._directory = "" if directory is None else str(directory)
        self._names = names
        self._process: subprocess.Popen[str] | None = None

    def __enter__(self) -> Reaper:
        self._process = subprocess.Popen(
            [sys.executable, "-c", WATCHDOG, self._directory, *self._names],
            stdin=subprocess.PIPE,
            text=True,
            start_new_session=True,  # outlives a ^C or a kill of the benchmark's group
        )
        return self

    @property
    def _pipe(self) -> IO[str]:
        assert self._process is not None and self._process.stdin is not None
        return self._process.stdin

    def watch(self, pid: int | None) -> None:
        """Stop process ``pid`` should the benchmark die before its own cleanup."""
        if pid is not None:
            self._pipe.write(f"{pid}\n")
            self._pipe.flush()

    def __exit__(self, *exc: object) -> None:
        # Everything has been stopped in order by now: the watchdog has nothing to do.
        assert self._process is not None
        self._pipe.write("clear\n")
        self._pipe.close()
        try:
            self._process.wait(10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
