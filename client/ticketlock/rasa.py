"""``RemoteLockStore``: a drop-in Rasa lock store backed by a ticketlock server.

In Rasa's ``endpoints.yml``::

    lock_store:
      type: ticketlock.rasa.RemoteLockStore
      url: localhost:50051
      # token: ${TICKETLOCK_TOKEN}    # when the server requires a bearer token
      # use_tls: true                 # TLS with the system roots, or:
      # ssl_ca_certs: /path/ca.pem    # a private CA (ssl_certfile/ssl_keyfile for mTLS)

Rasa constructs it with ``endpoint_config=`` (its ``EndpointConfig``: ``url``,
``type``, ``kwargs``); Rasa itself need not be installed. Every method of Rasa's
``LockStore`` is here with Rasa's calling conventions: the store methods are
synchronous like Rasa's, and ``lock()`` is an async context manager. ``lock()``
waits on a session-bound stream, so the lock is handed over the moment it is
free (``wait_time_in_seconds`` is accepted and ignored: nothing polls), and if
this process dies, the server releases its lock at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc

from ticketlock._order import IssueOrder
from ticketlock.client import DEFAULT_TIMEOUT, AsyncLockClient, LockClient
from ticketlock.errors import LockError, LockLostError
from ticketlock.model import DEFAULT_LOCK_LIFETIME, TicketLock

logger = logging.getLogger(__name__)


def _lock_lifetime() -> int:
    """Rasa's rule: ``TICKET_LOCK_LIFETIME`` seconds, 0 or unset = 60."""
    return int(os.environ.get("TICKET_LOCK_LIFETIME", 0) or 0) or DEFAULT_LOCK_LIFETIME


LOCK_LIFETIME = _lock_lifetime()


@functools.cache
def _acquire_error_class() -> type[LockError]:
    """ticketlock's ``LockError``, and Rasa's own too when Rasa is installed.

    Rasa raises ``rasa.core.lock_store.LockError`` when a ticket cannot be issued
    or the lock cannot be acquired, and its callers catch that class.
    """
    try:
        from rasa.core.lock_store import LockError as RasaLockError  # type: ignore[import-not-found]
    except ImportError:
        return LockError

    class RemoteLockError(LockError, RasaLockError):  # type: ignore[misc]
        """A ticketlock ``LockError`` that Rasa's ``except LockError`` catches too."""

    return RemoteLockError


def _as_rasa_error(error: LockError) -> LockError:
    return _acquire_error_class()(f"Error while acquiring lock. Error:\n{error}", error.code)


@functools.cache
def _lost_error_class(lost: type[LockLostError]) -> type[LockLostError]:
    """``lost``, and Rasa's ``LockError`` too when Rasa is installed: a message whose
    lock was lost ends in the error Rasa's callers catch for lock failures."""
    rasa_error = _acquire_error_class()
    if rasa_error is LockError:
        return lost
    return type(lost.__name__, (lost, rasa_error), {"__doc__": lost.__doc__})


def _as_rasa_lost(error: LockLostError) -> LockLostError:
    lost: Any = type(error)  # a class is hashable; mypy reads the type as an instance's
    return _lost_error_class(lost)(str(error), error.code)


def _truthy(value: Any) -> bool:
    return value is True or str(value).lower() in ("true", "1", "yes")


def _credentials(settings: dict[str, Any]) -> bool | grpc.ChannelCredentials:
    ca, cert, key = (settings.get(k) for k in ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile"))
    if not (ca or cert or key):
        return _truthy(settings.get("use_tls", settings.get("use_ssl", False)))
    return grpc.ssl_channel_credentials(
        root_certificates=Path(ca).read_bytes() if ca else None,
        private_key=Path(key).read_bytes() if key else None,
        certificate_chain=Path(cert).read_bytes() if cert else None,
    )


class RemoteLockStore:
    """Rasa's ``LockStore`` interface over a ticketlock server.

    Built by Rasa from ``endpoints.yml`` (``endpoint_config=``: ``url``, and in its
    ``kwargs`` ``token``, ``timeout``, ``use_tls`` or ``ssl_ca_certs`` /
    ``ssl_certfile`` / ``ssl_keyfile``), or directly with keyword arguments. The
    store methods are synchronous (one blocking gRPC call each, as Rasa's are);
    ``lock()`` is an async context manager. All of its clients share one issue
    order, so the tickets of a conversation follow the order of the calls.

    >>> store = RemoteLockStore(url="localhost:50051")
    >>> async with store.lock("sender-1"):
    ...     ...
    """

    def __init__(
        self,
        endpoint_config: Any = None,
        *,
        url: str | None = None,
        token: str | None = None,
        tls: bool | grpc.ChannelCredentials | None = None,
        timeout: float | None = None,
    ) -> None:
        settings: dict[str, Any] = dict(getattr(endpoint_config, "kwargs", None) or {})
        self.url = url or getattr(endpoint_config, "url", None) or "localhost:50051"
        self._token = token if token is not None else settings.get("token")
        self._tls = tls if tls is not None else _credentials(settings)
        self._timeout = float(timeout or settings.get("timeout") or DEFAULT_TIMEOUT)
        # One issue order for every client of this store: Rasa's issue is synchronous,
        # so the tickets of one conversation follow the order of the calls.
        self._issue_order = IssueOrder()
        self._client = LockClient(
            self.url,
            tls=self._tls,
            token=self._token,
            timeout=self._timeout,
            issue_order=self._issue_order,
        )
        # grpc.aio channels belong to one event loop; one client per loop.
        self._async_clients: dict[asyncio.AbstractEventLoop, AsyncLockClient] = {}

    # -- Rasa's static helpers -------------------------------------------------

    @staticmethod
    def create(obj: Any) -> RemoteLockStore:
        """Rasa's factory convention: a store is returned as it is."""
        return obj if isinstance(obj, RemoteLockStore) else RemoteLockStore(obj)

    @staticmethod
    def create_lock(conversation_id: str) -> TicketLock:
        """A new, empty lock for the conversation (not stored)."""
        return TicketLock(conversation_id)

    # -- the storage methods -----------------------------------------------------

    def get_lock(self, conversation_id: str) -> TicketLock | None:
        """The conversation's lock minus expired tickets, or None. Raises ``LockError``."""
        return self._client.get_lock(conversation_id)

    def delete_lock(self, conversation_id: str) -> None:
        """Delete the conversation's lock and its tickets. Raises ``LockError``."""
        deleted = self._client.delete_lock(conversation_id)
        logger.debug("Deleted lock for conversation '%s': %s.", conversation_id, deleted)

    def save_lock(self, lock: Any) -> None:
        """Store a lock: ours, or anything shaped like Rasa's ``TicketLock``."""
        if not isinstance(lock, TicketLock):
            lock = TicketLock.loads(lock.dumps())
        self._client.save_lock(lock)

    # -- the ticket protocol (each call one atomic step on the server) ----------

    def issue_ticket(self, conversation_id: str, lock_lifetime: float = LOCK_LIFETIME) -> int:
        """Queue a ticket and return its number, as Rasa's ``issue_ticket``.

        Raises ``LockError`` ("Error while acquiring lock", Rasa's wording) when the
        server refuses or cannot be reached.
        """
        try:
            return self._client.issue_ticket(conversation_id, lock_lifetime)
        except LockError as error:
            raise _as_rasa_error(error) from None

    def update_lock(self, conversation_id: str) -> None:
        """Rasa uses this to drop expired tickets; the server does that on every read."""
        self._client.get_lock(conversation_id)

    def get_or_create_lock(self, conversation_id: str) -> TicketLock:
        """The stored lock, or a new empty one (not stored)."""
        return self.get_lock(conversation_id) or self.create_lock(conversation_id)

    def is_someone_waiting(self, conversation_id: str) -> bool:
        """Whether the conversation's queue holds any unexpired ticket."""
        return self._client.is_someone_waiting(conversation_id)

    def finish_serving(self, conversation_id: str, ticket_number: int) -> None:
        """Remove the ticket from the queue; a missing ticket is no error."""
        self._client.finish_serving(conversation_id, ticket_number)

    def cleanup(self, conversation_id: str, ticket_number: int) -> None:
        """Finish the ticket, then delete the lock when nobody waits (one atomic step)."""
        self._client.cleanup(conversation_id, ticket_number)

    def increment_ticket_number(self, lock: TicketLock) -> int:
        """Rasa's helper: the number after the lock's last issued ticket."""
        return lock.last_issued + 1

    # -- the lock ------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def lock(
        self,
        conversation_id: str,
        lock_lifetime: float = LOCK_LIFETIME,
        wait_time_in_seconds: float = 1,
        *,
        auto_refresh: bool = True,
    ) -> AsyncIterator[TicketLock]:
        """Hold the conversation's lock; yields the lock as its holder sees it.

        Calls of one conversation are served in the order they were made (the
        ticket is issued in call order, as Rasa's synchronous ``issue_ticket``
        does). ``wait_time_in_seconds`` is Rasa's poll interval; waiting here is
        pushed by the server, so it is accepted and ignored.

        ``auto_refresh`` (default True) keeps the ticket alive while the message
        is handled, however long that takes (an LLM call may outlast
        ``lock_lifetime``): the next message of the conversation waits as long as
        this process is alive and holds the lock. A crashed process frees it at
        once, by its session. With ``auto_refresh=False``, Rasa's behaviour: the
        lock ends after ``lock_lifetime``.

        Raises ``LockError`` when the lock cannot be acquired (with Rasa installed,
        one that is Rasa's ``LockError`` too, as Rasa's stores raise), and
        ``LockLostError`` on leaving the block when it was lost while held.

        >>> async with store.lock(sender_id):
        ...     await processor.handle_message(message)
        """
        client = self._async_client()
        try:
            context = client.lock(conversation_id, lock_lifetime, auto_refresh=auto_refresh)
            held = await context.__aenter__()
        except LockError as error:
            raise _as_rasa_error(error) from None
        try:
            try:
                yield TicketLock(conversation_id, [held.ticket])
            except BaseException:
                if not await context.__aexit__(*sys.exc_info()):
                    raise
            else:
                await context.__aexit__(None, None, None)
        except LockLostError as error:
            raise _as_rasa_lost(error) from error
        # Rasa reads the store with the blocking client right after a message
        # (another channel): the release must have landed by then, so wait for it.
        await client._flush(conversation_id)

    def _async_client(self) -> AsyncLockClient:
        loop = asyncio.get_running_loop()
        client = self._async_clients.get(loop)
        if client is None:
            for old in [old for old in self._async_clients if old.is_closed()]:
                del self._async_clients[old]
            client = AsyncLockClient(
                self.url,
                tls=self._tls,
                token=self._token,
                timeout=self._timeout,
                issue_order=self._issue_order,
            )
            self._async_clients[loop] = client
        return client

    def close(self) -> None:
        """Close the blocking client (the async clients close with their event loops)."""
        self._client.close()
