"""Moved to ``harness.server`` (the benchmarks use it too); this name stays for
tests written against it on other branches. New code imports ``harness.server``."""

from harness.server import ServerProcess, free_port, start_servers, stop_servers

__all__ = ["ServerProcess", "free_port", "start_servers", "stop_servers"]
