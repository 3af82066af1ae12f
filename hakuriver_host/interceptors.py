"""The one server interceptor: domain errors to gRPC status codes, and request metrics.

Every RPC of every service passes through it, unary and streaming alike, so servicers raise
``ApiError`` subclasses and never call ``context.abort`` themselves.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from hakuriver_host.errors import (
    ApiError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from hakuriver_host.metrics import HostMetrics

log = logging.getLogger(__name__)

STATUS_CODES: dict[type[ApiError], grpc.StatusCode] = {
    InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    NotFound: grpc.StatusCode.NOT_FOUND,
    FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    Unavailable: grpc.StatusCode.UNAVAILABLE,
}


def status_code(error: ApiError) -> grpc.StatusCode:
    for cls in type(error).__mro__:
        if cls in STATUS_CODES:
            return STATUS_CODES[cls]
    return grpc.StatusCode.INTERNAL


class _Method:
    """The metric series of one method, looked up once (labels() costs more than the call)."""

    def __init__(self, metrics: HostMetrics, method: str) -> None:
        self._requests = metrics.grpc_requests
        self._method = method
        self._ok = metrics.grpc_requests.labels(method=method, code="OK")
        self._latency = metrics.grpc_latency.labels(method=method)

    def record(self, start: float, exc: BaseException | None, context: Any) -> None:
        if exc is None:
            self._ok.inc()
        else:
            if isinstance(exc, ApiError):
                code = status_code(exc).name
            else:
                found = context.code()
                code = found.name if isinstance(found, grpc.StatusCode) else "UNKNOWN"
            self._requests.labels(method=self._method, code=code).inc()
        self._latency.observe(time.perf_counter() - start)


Behaviour = Callable[[Any, Any], Any]


class ApiInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, metrics: HostMetrics) -> None:
        self.metrics = metrics
        self._series: dict[str, _Method] = {}

    def _series_of(self, method: str) -> _Method:
        series = self._series.get(method)
        if series is None:
            series = self._series[method] = _Method(self.metrics, method)
        return series

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._unary(method, handler.unary_unary),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(
                self._unary(method, handler.stream_unary),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._streaming(method, handler.unary_stream),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return grpc.stream_stream_rpc_method_handler(
            self._streaming(method, handler.stream_stream),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    def _unary(self, method: str, inner: Behaviour) -> Behaviour:
        series = self._series_of(method)

        async def call(request: Any, context: Any) -> Any:
            start = time.perf_counter()
            error: BaseException | None = None
            try:
                return await inner(request, context)
            except ApiError as exc:
                error = exc
                await context.abort(status_code(exc), exc.message)
            except BaseException as exc:
                error = exc
                raise
            finally:
                series.record(start, error, context)

        return call

    def _streaming(self, method: str, inner: Behaviour) -> Behaviour:
        if not inspect.isasyncgenfunction(inner):
            # Handlers that write with ``context.write`` (the standard health service).
            return self._unary(method, inner)
        series = self._series_of(method)

        async def stream(request: Any, context: Any) -> AsyncIterator[Any]:
            start = time.perf_counter()
            error: BaseException | None = None
            try:
                async for response in inner(request, context):
                    yield response
            except ApiError as exc:
                error = exc
                await context.abort(status_code(exc), exc.message)
            except BaseException as exc:
                error = exc
                raise
            finally:
                series.record(start, error, context)

        return stream
