"""The one server interceptor: who is calling and may they, domain errors to gRPC status
codes, refusals to the audit log, and request metrics.

Every RPC of every service passes through it, unary and streaming alike, so servicers raise
``ApiError`` subclasses and never call ``context.abort`` themselves.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from hakuriver_common.roles import AuditOutcome
from hakuriver_host.access import Access
from hakuriver_host.audit import AuditLog
from hakuriver_host.authorization import RIGHTS, Right, refusal
from hakuriver_host.errors import (
    ApiError,
    FailedPrecondition,
    Hidden,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
    WatcherBehind,
)
from hakuriver_host.identity import ANONYMOUS, Principal, set_caller
from hakuriver_host.metrics import HostMetrics

log = logging.getLogger(__name__)
# How long a refused client-streaming call may take to send its first message (see
# _Call._take_first).
FIRST_MESSAGE_SECONDS = 5.0

STATUS_CODES: dict[type[ApiError], grpc.StatusCode] = {
    InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    NotFound: grpc.StatusCode.NOT_FOUND,
    FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    Unavailable: grpc.StatusCode.UNAVAILABLE,
    Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    WatcherBehind: grpc.StatusCode.RESOURCE_EXHAUSTED,
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


def bearer_secret(authorization: str) -> str:
    """The secret of an ``Authorization: Bearer <secret>`` value ("" for any other scheme);
    the scheme is case-insensitive (RFC 7235)."""
    scheme, _, secret = authorization.partition(" ")
    return secret.strip() if scheme.lower() == "bearer" else ""


def _bearer(details: grpc.HandlerCallDetails) -> str:
    for key, value in details.invocation_metadata or ():
        if key == "authorization":
            return bearer_secret(value if isinstance(value, str) else value.decode())
    return ""


class ApiInterceptor(grpc.aio.ServerInterceptor):
    """Authenticates and authorises every call (authorization.RIGHTS), hands the principal
    to the servicer (identity.caller), maps domain errors, audits refusals, counts calls."""

    def __init__(self, metrics: HostMetrics, access: Access, audit: AuditLog) -> None:
        self.metrics = metrics
        self.access = access
        self.audit = audit
        self._series: dict[str, _Method] = {}

    def _series_of(self, method: str) -> _Method:
        series = self._series.get(method)
        if series is None:
            series = self._series[method] = _Method(self.metrics, method)
        return series

    def call(self, method: str, bearer: str, request_streaming: bool) -> _Call:
        """One call of ``method`` by the holder of ``bearer``: how the other transports (the
        dashboard's Connect API and its terminal WebSocket) pass the same checks."""
        who, refused = self.authorise(method, bearer)
        return _Call(self, method, who, refused, request_streaming)

    def authorise(self, method: str, bearer: str) -> tuple[Principal, ApiError | None]:
        """Who holds ``bearer``, and why they may not call ``method`` (None: they may)."""
        if RIGHTS.get(method) is Right.PUBLIC:
            return ANONYMOUS, None
        if self.access.open:
            return self.access.anyone, None
        try:
            who = self.access.authenticate(bearer)
        except Unauthenticated as exc:
            return ANONYMOUS, exc
        why = refusal(method, who)
        return who, None if why is None else PermissionDenied(why)

    def _refused(self, who: Principal, method: str, exc: ApiError, context: Any) -> None:
        self.audit.record(
            who, "rpc", method, AuditOutcome.REFUSED, f"{type(exc).__name__}: {exc}", context.peer()
        )

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        call = self.call(
            handler_call_details.method,
            _bearer(handler_call_details),
            bool(handler.request_streaming),
        )
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                call.unary(handler.unary_unary),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(
                call.unary(handler.stream_unary),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                call.streaming(handler.unary_stream),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return grpc.stream_stream_rpc_method_handler(
            call.streaming(handler.stream_stream),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


class _Call:
    """One call: its principal (or why it is refused) around the servicer's behaviour."""

    def __init__(
        self,
        owner: ApiInterceptor,
        method: str,
        who: Principal,
        refused: ApiError | None,
        request_streaming: bool,
    ) -> None:
        self.owner = owner
        self.method = method
        self.who = who
        self.refused = refused
        self.request_streaming = request_streaming
        self.series = owner._series_of(method)

    async def _enter(self, request: Any, context: Any) -> None:
        """Refuse the call, or make its principal the caller for the servicer."""
        if self.refused is not None:
            if self.request_streaming:
                await self._take_first(request)
            raise self.refused
        set_caller(self.who, context)

    async def _take_first(self, request: Any) -> None:
        """Read a refused client-streaming call's first message before refusing it: an
        asyncio client whose first write is still under way when the status arrives
        reports INTERNAL "Internal error from Core" instead of the refusal (grpc/grpc#36066),
        so a Runner refused on its register message would not learn why."""
        with contextlib.suppress(Exception):
            await asyncio.wait_for(anext(aiter(request)), FIRST_MESSAGE_SECONDS)

    async def _fail(self, exc: ApiError, context: Any) -> None:
        if isinstance(exc, Unauthenticated | PermissionDenied | Hidden):
            self.owner._refused(self.who, self.method, exc, context)
        await context.abort(status_code(exc), exc.message)

    def unary(self, inner: Behaviour) -> Behaviour:
        async def call(request: Any, context: Any) -> Any:
            start = time.perf_counter()
            error: BaseException | None = None
            try:
                await self._enter(request, context)
                return await inner(request, context)
            except ApiError as exc:
                error = exc
                await self._fail(exc, context)
            except BaseException as exc:
                error = exc
                raise
            finally:
                self.series.record(start, error, context)

        return call

    def streaming(self, inner: Behaviour) -> Behaviour:
        if not inspect.isasyncgenfunction(inner):
            # Handlers that write with ``context.write`` (the standard health service).
            return self.unary(inner)

        async def stream(request: Any, context: Any) -> AsyncIterator[Any]:
            start = time.perf_counter()
            error: BaseException | None = None
            try:
                await self._enter(request, context)
                async for response in inner(request, context):
                    yield response
            except ApiError as exc:
                error = exc
                await self._fail(exc, context)
            except BaseException as exc:
                error = exc
                raise
            finally:
                self.series.record(start, error, context)

        return stream
