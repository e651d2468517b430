"""Real server processes and Redis deployments on loopback ports, for the tests
and the benchmarks alike (``tests/`` and ``bench/`` both import it; it imports
neither). Run from the repository root."""
