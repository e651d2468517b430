"""Waiting for a condition with a deadline, instead of sleeping and hoping.

A test that needs something to have happened (a server to count an RPC, a waiter
to be queued) polls for it and fails with a message naming it when the deadline
passes; the deadline is generous, because it bounds a failure, not a success.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

DEFAULT_TIMEOUT = 20.0


class ConditionTimeout(AssertionError):
    """The condition did not hold before the deadline."""


def _failure(what: str, timeout: float, last: object, error: BaseException | None) -> str:
    detail = f"; last error: {error!r}" if error is not None else f"; last value: {last!r}"
    return f"timed out after {timeout:.1f} s waiting for {what}{detail}"


def wait_until(
    condition: Callable[[], T],
    what: str,
    timeout: float = DEFAULT_TIMEOUT,
    interval: float = 0.02,
) -> T:
    """Call ``condition`` until it returns something truthy; return that.

    Exceptions raised by ``condition`` count as "not yet" until the deadline.
    """
    deadline = time.monotonic() + timeout
    last: object = None
    error: BaseException | None = None
    while True:
        try:
            value = condition()
        except Exception as raised:
            error = raised
        else:
            if value:
                return value
            last, error = value, None
        if time.monotonic() >= deadline:
            raise ConditionTimeout(_failure(what, timeout, last, error))
        time.sleep(interval)


async def eventually(
    condition: Callable[[], T | Awaitable[T]],
    what: str,
    timeout: float = DEFAULT_TIMEOUT,
    interval: float = 0.01,
) -> T:
    """``wait_until`` for a running event loop: ``condition`` may be a coroutine
    function, and the loop keeps running between attempts."""
    deadline = time.monotonic() + timeout
    last: object = None
    error: BaseException | None = None
    while True:
        try:
            value = condition()
            if inspect.isawaitable(value):
                value = await value
        except Exception as raised:
            error = raised
        else:
            if value:
                return value  # type: ignore[return-value]
            last, error = value, None
        if time.monotonic() >= deadline:
            raise ConditionTimeout(_failure(what, timeout, last, error))
        await asyncio.sleep(interval)
