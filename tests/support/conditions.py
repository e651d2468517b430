"""Waiting for a condition with a deadline, instead of sleeping and hoping.

A test that needs something to have happened (a server to count an RPC, a waiter
to be queued) polls for it and fails with a message naming it when the deadline
passes; the deadline is generous, because it bounds a failure, not a success.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")

DEFAULT_TIMEOUT = 20.0


class ConditionTimeout(AssertionError):
    """The condition did not hold before the deadline."""


class _Attempts:
    """The bookkeeping of one wait: the deadline and the last result or error."""

    def __init__(self, what: str, timeout: float) -> None:
        self.what, self.timeout = what, timeout
        self.deadline = time.monotonic() + timeout
        self.last: object = None
        self.error: BaseException | None = None

    def __iter__(self) -> Iterator[_Attempts]:
        while True:
            yield self
            if time.monotonic() >= self.deadline:
                detail = f"last error: {self.error!r}" if self.error else f"last: {self.last!r}"
                raise ConditionTimeout(
                    f"timed out after {self.timeout:.1f} s waiting for {self.what}; {detail}"
                )

    def record(self, value: object = None, error: BaseException | None = None) -> None:
        self.last, self.error = value, error


def wait_until(
    condition: Callable[[], T], what: str, timeout: float = DEFAULT_TIMEOUT, interval: float = 0.02
) -> T:
    """Call ``condition`` until it returns something truthy; return that.

    Exceptions raised by ``condition`` count as "not yet" until the deadline.
    """
    for attempt in _Attempts(what, timeout):
        try:
            value = condition()
        except Exception as error:
            attempt.record(error=error)
        else:
            if value:
                return value
            attempt.record(value)
        time.sleep(interval)
    raise AssertionError("unreachable")


async def eventually(
    condition: Callable[[], T | Awaitable[T]],
    what: str,
    timeout: float = DEFAULT_TIMEOUT,
    interval: float = 0.01,
) -> T:
    """``wait_until`` for a running event loop: ``condition`` may be a coroutine
    function, and the loop keeps running between attempts."""
    for attempt in _Attempts(what, timeout):
        try:
            value: Any = condition()
            if inspect.isawaitable(value):
                value = await value
        except Exception as error:
            attempt.record(error=error)
        else:
            if value:
                return value  # type: ignore[no-any-return]
            attempt.record(value)
        await asyncio.sleep(interval)
    raise AssertionError("unreachable")
