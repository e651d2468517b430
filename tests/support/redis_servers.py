"""Moved to ``harness.redis_servers`` (the benchmarks use it too); this name stays for
tests written against it on other branches. New code imports ``harness.redis_servers``."""

from harness.redis_servers import *  # noqa: F403
from harness.redis_servers import __all__ as __all__
