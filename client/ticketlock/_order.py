"""``IssueOrder``: tickets of one conversation issued in the order ``lock()`` was called.

Rasa issues a ticket synchronously when ``lock()`` is entered, so messages that
arrive together keep their order. Over gRPC, calls started one after another may
reach the server in any order. So within a process, each ``lock()`` (and
``issue()``) of a conversation takes a turn here, and sends its request only once
the call before it has its ticket: a chain per conversation. An uncontended call
finds no one ahead and goes at once, without waiting for anything.

The chain is shared by threads and by event loops (a Rasa server runs one loop,
but a ``RemoteLockStore`` may serve several), so it is guarded by a thread lock and
wakes asyncio waiters through ``call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable


class Turn:
    """One call's place in a conversation's issue chain.

    ``finish()`` once the call's ticket is issued, or it failed: the next call
    goes on. A call that gives up before its turn came must still finish, and
    does so only after the call ahead of it (``finish_after``), so that the order
    of the calls behind it holds.
    """

    __slots__ = ("_callbacks", "_done", "_order", "ahead", "conversation_id")

    def __init__(self, order: IssueOrder, conversation_id: str, ahead: Turn | None) -> None:
        self._order = order
        self.conversation_id = conversation_id
        self.ahead = ahead
        self._done = threading.Event()
        self._callbacks: list[Callable[[], None]] = []

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def finish(self) -> None:
        with self._order._mutex:
            if self._done.is_set():
                return
            self._done.set()
            callbacks, self._callbacks = self._callbacks, []
            if self._order._tails.get(self.conversation_id) is self:
                del self._order._tails[self.conversation_id]
            self.ahead = None
        for callback in callbacks:
            callback()

    def finish_after_ahead(self) -> None:
        """Finish now if nobody is ahead any more, else as soon as the call ahead does."""
        ahead = self.ahead
        if ahead is None:
            self.finish()
        else:
            ahead.on_done(self.finish)

    def on_done(self, callback: Callable[[], None]) -> None:
        with self._order._mutex:
            if not self._done.is_set():
                self._callbacks.append(callback)
                return
        callback()

    def wait_ahead(self, timeout: float | None) -> bool:
        """Block until the call ahead has its ticket; False when ``timeout`` ran out."""
        ahead = self.ahead
        return ahead is None or ahead._done.wait(timeout)

    async def wait_ahead_async(self) -> None:
        """Wait until the call ahead has its ticket (from any thread or event loop)."""
        ahead = self.ahead
        if ahead is None or ahead.done:
            return
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()

        def wake() -> None:
            loop.call_soon_threadsafe(_resolve, ready)

        ahead.on_done(wake)
        await ready


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class IssueOrder:
    """Per-conversation issue chains, shared by the clients that should keep one order.

    Each ``LockClient``/``AsyncLockClient`` has its own; pass one to several
    clients (``issue_order=``) to order their calls together, as
    ``ticketlock.rasa.RemoteLockStore`` does for all its clients.
    """

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._tails: dict[str, Turn] = {}

    def take(self, conversation_id: str) -> Turn:
        """Join the conversation's chain; ``turn.ahead`` is the call to wait for, if any."""
        with self._mutex:
            ahead = self._tails.get(conversation_id)
            turn = Turn(self, conversation_id, ahead)
            self._tails[conversation_id] = turn
            return turn

    def take_if_first(self, conversation_id: str) -> Turn | None:
        """Join the chain only when no other call of the conversation is being issued."""
        with self._mutex:
            if conversation_id in self._tails:
                return None
            turn = Turn(self, conversation_id, None)
            self._tails[conversation_id] = turn
            return turn

    def issuing(self, conversation_id: str) -> bool:
        """Whether a call of the conversation is being issued now."""
        with self._mutex:
            return conversation_id in self._tails
