"""ticketlock: a client for the ticketlock gRPC lock coordination server.

>>> from ticketlock import LockClient
>>> with LockClient("localhost:50051") as client, client.lock("conv-1"):
...     ...  # one message of conv-1 at a time, in arrival order
"""

from ticketlock.client import AsyncLockClient, HeldLock, IssuedTicket, LockClient
from ticketlock.errors import (
    AuthenticationError,
    InvalidArgumentError,
    LockError,
    LockTimeoutError,
    StoreUnavailableError,
    TicketNotFoundError,
)
from ticketlock.model import NO_TICKET_ISSUED, Ticket, TicketLock

__version__ = "0.1.0"

__all__ = [
    "NO_TICKET_ISSUED",
    "AsyncLockClient",
    "AuthenticationError",
    "HeldLock",
    "InvalidArgumentError",
    "IssuedTicket",
    "LockClient",
    "LockError",
    "LockTimeoutError",
    "StoreUnavailableError",
    "Ticket",
    "TicketLock",
    "TicketNotFoundError",
    "__version__",
]
