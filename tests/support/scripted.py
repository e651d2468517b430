"""A scripted ``LockService`` (a test's own servicer) on a real loopback port, for
client tests that need the server to do one exact thing."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from concurrent import futures

import grpc
from ticketlock.v1 import lock_service_pb2_grpc as pb_grpc

from harness.server import free_port


@contextlib.contextmanager
def scripted_server(service: pb_grpc.LockServiceServicer) -> Iterator[str]:
    """Serve ``service`` on a free loopback port; yields its address."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    pb_grpc.add_LockServiceServicer_to_server(service, server)
    port = free_port()
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(None)
