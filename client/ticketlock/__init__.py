"""ticketlock: a client for the ticketlock gRPC lock coordination server.

>>> from ticketlock import LockClient
>>> with LockClient("localhost:50051") as client, client.lock("conv-1"):
...     ...  # one message of conv-1 at a time, in arrival order
"""

from ticketlock._order import IssueOrder
from ticketlock.client import AsyncHeldLock, AsyncLockClient, HeldLock, IssuedTicket, LockClient
from ticketlock.errors import (
    AuthenticationError,
    InvalidArgumentError,
    LockError,
    LockExpiredError,
    LockLostError,
    LockTimeoutError,
    ResourceExhaustedError,
    SessionLostError,
    StoreDataError,
    StoreUnavailableError,
    TicketNotFoundError,
)
from ticketlock.model import NO_TICKET_ISSUED, Ticket, TicketLock

__version__ = "0.1.0"

__all__ = [
    "NO_TICKET_ISSUED",
    "AsyncHeldLock",
    "AsyncLockClient",
    "AuthenticationError",
    "HeldLock",
    "InvalidArgumentError",
    "IssueOrder",
    "IssuedTicket",
    "LockClient",
    "LockError",
    "LockExpiredError",
    "LockLostError",
    "LockTimeoutError",
    "ResourceExhaustedError",
    "SessionLostError",
    "StoreDataError",
    "StoreUnavailableError",
    "Ticket",
    "TicketLock",
    "TicketNotFoundError",
    "__version__",
]
