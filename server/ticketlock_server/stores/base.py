"""The store boundary: what the servicer needs from any lock store.

Every method is one atomic step on the store's state, so that several callers
(and, for shared stores, several server processes) can never observe or create a
half-done change. Stores know nothing of gRPC: they take and return the pure
model and raise ``StoreUnavailable`` when their back end cannot be reached.
"""

from __future__ import annotations

import abc
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ticketlock.model import Position, Ticket, TicketLock


class StoreUnavailable(Exception):
    """The store's back end cannot be reached; the call may be retried."""

    def __init__(self, store: str, reason: str) -> None:
        super().__init__(f"lock store {store} is unavailable: {reason}")
        self.store = store


@dataclass(frozen=True, slots=True)
class Issued:
    """A newly issued ticket and who holds the lock at that instant."""

    ticket: Ticket
    now_serving: int
    # The conversation's numbering run (shared stores): given back to position,
    # cleanup and refresh, it keeps a ticket from being mistaken for a later one
    # with the same number after the store lost its data.
    epoch: str = ""

    @property
    def acquired(self) -> bool:
        return self.ticket.number == self.now_serving


# Called with a conversation id when another process changed that conversation.
ChangeListener = Callable[[str], None]


class LockStore(abc.ABC):
    """A place where ticket locks live. Lifetimes are seconds, already validated."""

    #: Human-readable name used in errors and logs (never contains secrets).
    name: str = "lock store"
    #: Whether a call may be interrupted half-way (a network round trip): then a
    #: ``Lock`` stream that ends while its ticket is issued releases it afterwards.
    suspends: bool = True

    def __init__(self, endpoint_config: Any = None) -> None:  # noqa: B027
        """Custom stores receive the ``lock_store:`` section as ``endpoint_config``."""

    async def start(self, on_remote_change: ChangeListener) -> None:  # noqa: B027
        """Connect, and report changes made by other processes to ``on_remote_change``.

        Stores that only one process uses (in-memory) have nothing to report.
        """

    async def close(self) -> None:  # noqa: B027
        """Release connections."""

    async def watch(self, conversation_id: str) -> None:  # noqa: B027
        """Report changes of this conversation made elsewhere from now on.

        Called before a waiter first reads its position, and returns once changes
        are sure to be reported; ``unwatch`` is called when the last one leaves.
        """

    def unwatch(self, conversation_id: str) -> None:  # noqa: B027
        """The conversation has no waiters here any more."""

    @abc.abstractmethod
    async def ping(self) -> None:
        """Return when the store answers; raise ``StoreUnavailable`` otherwise."""

    @abc.abstractmethod
    async def issue_ticket(self, conversation_id: str, lifetime: float) -> Issued:
        """Append a ticket, creating the lock if needed."""

    @abc.abstractmethod
    async def position(
        self,
        conversation_id: str,
        ticket_number: int,
        with_lock: bool = False,
        next_change: bool = True,
        epoch: str = "",
    ) -> Position | None:
        """Where a ticket stands; None when it does not exist (or is of another ``epoch``).

        With ``with_lock``, a position that holds the lock carries a snapshot of it.
        Without ``next_change``, a waiter's ``next_change_in`` may be left at None.
        """

    @abc.abstractmethod
    async def finish_serving(self, conversation_id: str, ticket_number: int) -> bool:
        """Remove a ticket; False when there was none."""

    @abc.abstractmethod
    async def cleanup(self, conversation_id: str, ticket_number: int, epoch: str = "") -> bool:
        """Remove a ticket, then delete the lock if it is empty; True when deleted.

        With an ``epoch`` of an earlier numbering run, nothing is removed.
        """

    @abc.abstractmethod
    async def refresh_ticket(
        self, conversation_id: str, ticket_number: int, lifetime: float, epoch: str = ""
    ) -> Ticket | None:
        """Give a ticket the expiry now + lifetime; None when it does not exist."""

    @abc.abstractmethod
    async def is_someone_waiting(self, conversation_id: str) -> bool:
        """Whether the lock holds any unexpired ticket."""

    @abc.abstractmethod
    async def get_lock(self, conversation_id: str) -> TicketLock | None:
        """The lock minus expired tickets; None when there is no lock."""

    @abc.abstractmethod
    async def save_lock(self, lock: TicketLock) -> None:
        """Replace the conversation's lock with ``lock``."""

    @abc.abstractmethod
    async def delete_lock(self, conversation_id: str) -> bool:
        """Delete the lock; False when there was none."""


# The calls that pass a ticket's numbering run: always as ``epoch=`` ("" for
# stores without numbering runs), so every store must accept it.
EPOCH_METHODS = ("position", "cleanup", "refresh_ticket")


def methods_without_epoch(cls: type[LockStore]) -> list[str]:
    """The methods of ``cls`` that cannot be called with ``epoch=`` (a custom store
    written against an older interface), so that it is refused at start-up."""
    missing = []
    for name in EPOCH_METHODS:
        parameters = inspect.signature(getattr(cls, name)).parameters.values()
        if not any(
            p.name == "epoch" or p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters
        ):
            missing.append(name)
    return missing
