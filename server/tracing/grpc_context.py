"""A trace across the gRPC services: the client sends its span's context as `traceparent`
metadata (W3C, as on HTTP), the service continues it in a server span.

A client span is made only for a call inside a trace (a relay batch with a sampled
journal): the background calls (reserving a block of codes) start none of their own. A
service makes a server span only for a call that brought a traceparent.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from opentelemetry import trace
from opentelemetry.trace import SpanKind, StatusCode

from server.tracing import spans

_CARRIED = ("traceparent", "tracestate")


def _method(details: Any) -> str:
    method = details.method
    return (method.decode() if isinstance(method, bytes) else str(method)).lstrip("/")


def _attributes(method: str) -> dict[str, str | int | bool]:
    service, _, name = method.partition("/")
    return {"rpc.system": "grpc", "rpc.service": service, "rpc.method": name}


class TraceSend(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """The client span of a call made inside a trace, its context sent as metadata."""

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        if not trace.get_current_span().get_span_context().is_valid:
            return await continuation(details, request)
        method = _method(details)
        with spans.step(method, SpanKind.CLIENT, _attributes(method)) as span:
            metadata = [*(details.metadata or ()), *spans.inject({}).items()]
            call = await continuation(details._replace(metadata=metadata), request)
            try:
                await call  # the span lasts the round trip; the caller reads the result
            except grpc.aio.AioRpcError as exc:
                span.set_status(StatusCode.ERROR, exc.code().name)
            return call


class TraceReceive(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """The server span of a unary call that brought a traceparent."""

    async def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        carrier = {k: str(v) for k, v in details.invocation_metadata or () if k in _CARRIED}
        if handler is None or handler.unary_unary is None or "traceparent" not in carrier:
            return handler
        inner = handler.unary_unary
        method = _method(details)

        async def traced(request: Any, context: grpc.aio.ServicerContext) -> Any:
            with spans.server_span(method, carrier, _attributes(method)):
                return await inner(request, context)

        return grpc.unary_unary_rpc_method_handler(
            traced, request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer)


def client_interceptors() -> list[grpc.aio.UnaryUnaryClientInterceptor]:
    return [TraceSend()] if spans.ENABLED else []


def server_interceptors() -> list[grpc.aio.ServerInterceptor]:
    return [TraceReceive()] if spans.ENABLED else []
