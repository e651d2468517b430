"""Wrapping a gRPC method handler's behaviour, for server interceptors that must see
the call itself (its requests, its status, its duration), not only its metadata.

A ``grpc.aio`` server interceptor receives the method name and metadata and returns
the handler; to look inside the call it returns a copy of the handler whose
behaviour runs inside an ``Around``. The behaviour keeps running in the task grpc
gave it (the servicer cancels that task to interrupt a held lock), and the
servicer's reads go through ``Around.check``, so a stream's later messages pass
the same checks as its first.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

import grpc

if TYPE_CHECKING:
    Handler = grpc.RpcMethodHandler[Any, Any]
    Context = grpc.aio.ServicerContext[Any, Any]

# The end-of-stream marker of grpc.aio reads (missing from the type stubs).
EOF: Any = grpc.aio.EOF  # type: ignore[attr-defined]


class Around:
    """What one interceptor does around one call; subclasses override what they need.

    ``enter`` and ``exit`` run in the call's own task (and context), so what
    ``enter`` makes current (a trace span) is current for the servicer too.
    """

    def enter(self, context: Context) -> None:
        """Called as the call starts."""

    async def check(self, message: Any, context: Context) -> None:
        """Called with each request message before the servicer sees it (may abort)."""

    def sent(self, message: Any) -> None:
        """Called with each response message as the servicer sends it."""

    def exit(self, context: Context, error: BaseException | None) -> None:
        """Called as the call ends, with the exception that ended it (None if none)."""


class _CheckedReads:
    """The servicer's context, with ``read()`` passing each message through ``check``
    and ``write()`` reporting each to ``sent``."""

    def __init__(self, context: Context, around: Around) -> None:
        self._context = context
        self._around = around

    async def read(self) -> Any:
        message = await self._context.read()
        if message is not EOF:
            await self._around.check(message, self._context)
        return message

    async def write(self, message: Any) -> None:
        await self._context.write(message)
        self._around.sent(message)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)


def wrap(handler: Handler, make: Callable[[], Around]) -> Handler:
    """A copy of ``handler`` whose every call runs inside a fresh ``make()``."""
    behaviour: Any
    factory: Any
    inner: Any
    if handler.response_streaming and not handler.request_streaming:
        streaming: Any = handler.unary_stream

        async def server_streaming(request: Any, context: Context) -> AsyncIterator[Any]:
            around = make()
            around.enter(context)
            error: BaseException | None = None
            try:
                await around.check(request, context)
                async for response in streaming(request, context):
                    yield response
                    around.sent(response)
            except BaseException as raised:
                error = raised
                raise
            finally:
                around.exit(context, error)

        behaviour, factory = server_streaming, grpc.unary_stream_rpc_method_handler
    else:
        if handler.request_streaming:
            inner = handler.stream_stream if handler.response_streaming else handler.stream_unary
        else:
            inner = handler.unary_unary

        async def call(request: Any, context: Context) -> Any:
            around = make()
            around.enter(context)
            error: BaseException | None = None
            try:
                if handler.request_streaming:
                    return await inner(request, _CheckedReads(context, around))
                await around.check(request, context)
                return await inner(request, context)
            except BaseException as raised:
                error = raised
                raise
            finally:
                around.exit(context, error)

        behaviour = call
        if handler.request_streaming and handler.response_streaming:
            factory = grpc.stream_stream_rpc_method_handler
        elif handler.request_streaming:
            factory = grpc.stream_unary_rpc_method_handler
        else:
            factory = grpc.unary_unary_rpc_method_handler
    return factory(  # type: ignore[no-any-return]
        behaviour,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


def conversation_ids(message: Any) -> list[str]:
    """Every conversation id a LockService request names: its ``conversation_id``,
    a SaveLock's ``lock.conversation_id``, a Lock stream's ``acquire.conversation_id``."""
    found = []
    for path in (("conversation_id",), ("lock", "conversation_id"),
                 ("acquire", "conversation_id")):  # fmt: skip
        value: Any = message
        for name in path:
            if name in ("lock", "acquire"):
                # Only a member that is set: an unset acquire is another action.
                try:
                    present = bool(value.HasField(name))
                except (AttributeError, ValueError):  # no such field, or not a message
                    present = False
                if not present:
                    value = None
                    break
            value = getattr(value, name, None)
        if isinstance(value, str):
            found.append(value)
    return found
