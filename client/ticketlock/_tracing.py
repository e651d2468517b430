"""Trace context for outgoing calls, when OpenTelemetry is installed.

The client depends on grpcio and protobuf only: OpenTelemetry is used if the
application has it (``pip install 'ticketlock[tracing]'``), so that the server's
spans join the caller's trace through W3C ``traceparent`` metadata.
"""

from __future__ import annotations

from collections.abc import Callable

Metadata = tuple[tuple[str, str], ...]

_inject: Callable[[dict[str, str]], None] | None
try:
    from opentelemetry.propagate import inject as _inject
except ImportError:  # tracing is an optional extra
    _inject = None


def with_trace(metadata: Metadata | None) -> Metadata | None:
    """``metadata`` plus the current trace context, if there is one."""
    if _inject is None:
        return metadata
    carrier: dict[str, str] = {}
    _inject(carrier)
    if not carrier:
        return metadata
    return (*(metadata or ()), *carrier.items())
