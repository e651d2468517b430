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


class ResourceExhaustedError(LockError):
    """A limit was reached (RESOURCE_EXHAUSTED): the conversation holds the store's
    maximum of tickets, or a ticket number would leave the exact integer range.
    Nothing was changed; the message names the limit."""


class StoreDataError(LockError):
    """The store holds data under the lock's key that is not a ticket lock
    (FAILED_PRECONDITION). Retrying cannot help; the message names the key."""


class LockLostError(LockError):
    """The lock was lost while its block ran: raised when the block is left.

    ``held.lost`` was set when it happened, so code inside the block can stop
    early. ``code`` is the status the lock's stream ended with. The two usual
    causes have their own classes, which are also the errors of their status:
    ``LockExpiredError`` (a ``TicketNotFoundError``) and ``SessionLostError`` (a
    ``StoreUnavailableError``).
    """


class LockExpiredError(LockLostError, TicketNotFoundError):
    """The ticket ran out while held (the server ended the lock with NOT_FOUND)."""


class SessionLostError(LockLostError, StoreUnavailableError):
    """The lock's stream broke while held: the server stopped, the connection
    failed, or keepalive found the peer silent. The server frees the ticket."""


_BY_CODE: dict[grpc.StatusCode, type[LockError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.NOT_FOUND: TicketNotFoundError,
    grpc.StatusCode.DEADLINE_EXCEEDED: LockTimeoutError,
    grpc.StatusCode.UNAVAILABLE: StoreUnavailableError,
    grpc.StatusCode.UNAUTHENTICATED: AuthenticationError,
    grpc.StatusCode.PERMISSION_DENIED: AuthenticationError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
    grpc.StatusCode.FAILED_PRECONDITION: StoreDataError,
}

_LOST_BY_CODE: dict[grpc.StatusCode, type[LockLostError]] = {
    grpc.StatusCode.NOT_FOUND: LockExpiredError,
    grpc.StatusCode.UNAVAILABLE: SessionLostError,
}


def from_status(code: grpc.StatusCode, details: str | None) -> LockError:
    """The ``LockError`` subclass for a status code, keeping it."""
    return _BY_CODE.get(code, LockError)(details or code.name, code)


def from_rpc_error(error: grpc.RpcError) -> LockError:
    """The ``LockError`` subclass for a failed call, keeping its status."""
    return from_status(error.code(), error.details())


def lost_error(code: grpc.StatusCode, details: str | None) -> LockLostError:
    """The ``LockLostError`` for a stream that ended with ``code`` while it held a lock."""
    if code == grpc.StatusCode.OK:
        return LockLostError("the server ended the lock's stream while it was held", code)
    return _LOST_BY_CODE.get(code, LockLostError)(details or code.name, code)
