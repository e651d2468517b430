"""The ``ticketlock-server`` command: the server, or how to install it.

The command comes with every install of the ``ticketlock`` distribution, also the
client-only one, which lacks the server's dependencies. There it prints the one
install command that brings them and exits with 2 (``--version`` still answers),
instead of dying on an import.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Sequence

from ticketlock import __version__

INSTALL = "pip install 'ticketlock[server]'"

# Import name -> distribution, for what the server imports from the server extra.
SERVER_MODULES = {
    "yaml": "PyYAML",
    "redis": "redis",
    "grpc_health": "grpcio-health-checking",
    "grpc_reflection": "grpcio-reflection",
    "prometheus_client": "prometheus-client",
}


def missing_distributions() -> list[str]:
    """The server extra's distributions that are not importable here."""
    return [dist for name, dist in SERVER_MODULES.items() if importlib.util.find_spec(name) is None]


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    missing = missing_distributions()
    if not missing:
        from ticketlock_server.cli import main as serve

        serve(args)
        return
    if "--version" in args:
        print(f"ticketlock-server {__version__}")
        return
    print(
        f"ticketlock-server needs the server extra ({', '.join(missing)} missing): {INSTALL}",
        file=sys.stderr,
    )
    raise SystemExit(2)


if __name__ == "__main__":
    main()
