"""Errors of the client: one family under ``LockError`` that keeps the gRPC status."""

from __future__ import annotations

import grpc


class LockError(Exception):
    """A lock operation failed. ``code`` and ``details`` are the server's gRPC status."""

    def __init__(self, message: str, code: grpc.StatusCode | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.details = message


class InvalidArgumentError(LockError):
    """The server rejected a field (INVALID_ARGUMENT); the message names it."""


class TicketNotFoundError(LockError):
    """The ticket expired, was finished, or was never issued (NOT_FOUND)."""


class LockTimeoutError(LockError):
    """The deadline ran out before the lock was acquired (DEADLINE_EXCEEDED)."""


class StoreUnavailableError(LockError):
    """The server or its store cannot be reached (UNAVAILABLE); retrying is safe."""


class AuthenticationError(LockError):
    """The server refused the credentials (UNAUTHENTICATED or PERMISSION_DENIED)."""


_BY_CODE: dict[grpc.StatusCode, type[LockError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.NOT_FOUND: TicketNotFoundError,
    grpc.StatusCode.DEADLINE_EXCEEDED: LockTimeoutError,
    grpc.StatusCode.UNAVAILABLE: StoreUnavailableError,
    grpc.StatusCode.UNAUTHENTICATED: AuthenticationError,
    grpc.StatusCode.PERMISSION_DENIED: AuthenticationError,
}


def from_status(code: grpc.StatusCode, details: str | None) -> LockError:
    """The ``LockError`` subclass for a status code, keeping it."""
    return _BY_CODE.get(code, LockError)(details or code.name, code)


def from_rpc_error(error: grpc.RpcError) -> LockError:
    """The ``LockError`` subclass for a failed call, keeping its status."""
    return from_status(error.code(), error.details())
