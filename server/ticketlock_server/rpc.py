"""RPC plumbing of the LockService, apart from its handlers.

Lenient parsing (a request that does not parse reaches its handler as
``Malformed``, to be refused with INVALID_ARGUMENT), the one place where errors
become status codes (``abort_for``), per-method metrics (``_counted``) and
registration (``add_to_server``). Nothing a client sends may end as UNKNOWN or
INTERNAL.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NoReturn, TypeVar

import grpc
from google.protobuf import descriptor_pb2
from google.protobuf.message import DecodeError
from google.protobuf.message import Message as ProtoMessage
from ticketlock.v1 import lock_service_pb2 as pb

from ticketlock_server.observability import Metrics
from ticketlock_server.stores.base import StoreDataError, StoreLimitExceeded, StoreUnavailable
from ticketlock_server.validation import InvalidArgument
from ticketlock_server.waiting import ShuttingDown, TicketNotFound

# The end-of-stream marker of grpc.aio reads (missing from the type stubs).
EOF: Any = grpc.aio.EOF  # type: ignore[attr-defined]

Servicer = TypeVar("Servicer")
Request = TypeVar("Request")
Response = TypeVar("Response")
Context = grpc.aio.ServicerContext[Any, Any]


# What a handler may raise to end a call with a status a client can act on.
CLIENT_ERRORS = (
    InvalidArgument,
    TicketNotFound,
    StoreUnavailable,
    ShuttingDown,
    StoreLimitExceeded,
    StoreDataError,
)


async def abort_for(error: Exception, context: Context) -> NoReturn:
    if isinstance(error, InvalidArgument):
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
    elif isinstance(error, TicketNotFound):
        await context.abort(grpc.StatusCode.NOT_FOUND, str(error))
    elif isinstance(error, StoreUnavailable):
        await context.abort(grpc.StatusCode.UNAVAILABLE, str(error))
    elif isinstance(error, StoreLimitExceeded):
        await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(error))
    elif isinstance(error, StoreDataError):
        await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(error))
    elif isinstance(error, ShuttingDown):
        await context.abort(
            grpc.StatusCode.UNAVAILABLE, "server is shutting down; retry on another server"
        )
    raise error  # not a client-facing error (abort itself raises)


def unary(
    handler: Callable[[Servicer, Request, Context], Awaitable[Response]],
) -> Callable[[Servicer, Request, Context], Awaitable[Response]]:
    @functools.wraps(handler)
    async def wrapper(self: Servicer, request: Request, context: Context) -> Response:
        try:
            return await handler(self, parsed(request), context)
        except CLIENT_ERRORS as error:
            await abort_for(error, context)

    return wrapper


class Malformed:
    """Stands in for a request that does not parse, so the handler can say so.

    grpc would otherwise fail such a call with UNKNOWN before any handler runs.
    """

    def __init__(self, type_name: str, error: DecodeError) -> None:
        self.error = InvalidArgument("request", f"is not a valid {type_name}: {error}")


def _parse(message_class: type[ProtoMessage]) -> Callable[[bytes], Any]:
    def parse(data: bytes) -> Any:
        try:
            return message_class.FromString(data)
        except DecodeError as error:
            return Malformed(message_class.DESCRIPTOR.full_name, error)

    return parse


def parsed(message: Any) -> Any:
    """The message itself, or the INVALID_ARGUMENT it stands for."""
    if isinstance(message, Malformed):
        raise message.error
    return message


def _code_name(context: Context, error: BaseException | None) -> str:
    if isinstance(error, asyncio.CancelledError):
        return "CANCELLED"
    code = context.code()
    if code is None:
        return "OK" if error is None else "UNKNOWN"
    return code.name if isinstance(code, grpc.StatusCode) else str(code)


def _counted(method: str, behaviour: Any, streaming: bool, metrics: Metrics) -> Any:
    """``behaviour`` that counts its calls by method and status code."""
    if streaming:

        async def stream(request: Any, context: Context) -> AsyncIterator[Any]:
            error: BaseException | None = None
            try:
                async for response in behaviour(request, context):
                    yield response
            except BaseException as raised:
                error = raised
                raise
            finally:
                metrics.rpcs.labels(method, _code_name(context, error)).inc()

        return stream

    async def call(request: Any, context: Context) -> Any:
        error: BaseException | None = None
        try:
            return await behaviour(request, context)
        except BaseException as raised:
            error = raised
            raise
        finally:
            metrics.rpcs.labels(method, _code_name(context, error)).inc()

    return call


def _streaming(method: Any) -> tuple[bool, bool]:
    """(client, server) streaming of an RPC, read from its descriptor proto: the
    descriptor's own attributes for them are missing on protobuf 4.23, a supported
    runtime."""
    proto = descriptor_pb2.MethodDescriptorProto()
    method.CopyToProto(proto)
    return proto.client_streaming, proto.server_streaming


def add_to_server(servicer: Any, server: grpc.aio.Server, metrics: Metrics | None = None) -> None:
    """Register the LockService like the generated helper, with lenient parsing."""
    service = pb.DESCRIPTOR.services_by_name["LockService"]
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
    for method in service.methods:
        parse = _parse(getattr(pb, method.input_type.name))
        serialize = getattr(pb, method.output_type.name).SerializeToString
        behaviour = getattr(servicer, method.name)
        client_streaming, server_streaming = _streaming(method)
        if metrics is not None:
            streams_out = server_streaming and not client_streaming
            behaviour = _counted(method.name, behaviour, streams_out, metrics)
        if client_streaming:
            make = grpc.stream_stream_rpc_method_handler
        elif server_streaming:
            make = grpc.unary_stream_rpc_method_handler
        else:
            make = grpc.unary_unary_rpc_method_handler
        handlers[method.name] = make(
            behaviour, request_deserializer=parse, response_serializer=serialize
        )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(service.full_name, handlers),)
    )
