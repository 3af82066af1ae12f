"""The one server interceptor: who is calling and may they, domain errors to gRPC status
codes, refusals to the audit log, and request metrics.

Every RPC of every service passes through it, unary and streaming alike, so servicers raise
``ApiError`` subclasses and never call ``context.abort`` themselves.

It also makes sure no request, however malformed, makes the Host print a traceback or
answer a status the API does not document:

- Request bytes that are not a valid message of the method's request type never reach the
  servicer: the interceptor registers every method with a deserializer that does not raise
  (``lenient``) and answers INVALID_ARGUMENT ``request: not a valid hakuriver.v1.XRequest
  message``. A corrupt message in a client or bidirectional stream ends that stream the
  same way: the servicer's read of it is cancelled (``MalformedRequest`` is a
  ``CancelledError``, so every servicer's clean-up for a vanished client runs), then the
  call answers INVALID_ARGUMENT.
- Any other exception that escapes a servicer is a bug: the call answers INTERNAL
  ("internal error", nothing of the exception shown to the caller).

Both are logged through ``LimitedLog``: one line per cause (method and message type; or
method, exception type and where it was raised), then a count per minute. A malformed
request is a WARNING without traceback; an internal error is an ERROR, with its traceback
the first time its cause is seen in an interval only.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from connectrpc.errors import ConnectError

from hakuriver_common.limits import MAX_ANONYMOUS_STREAMS
from hakuriver_common.roles import AuditOutcome
from hakuriver_host.access import Access
from hakuriver_host.audit import AuditLog, source_of
from hakuriver_host.authorization import RIGHTS, Right, refusal
from hakuriver_host.caller_turns import UNTURNED, CallerTurns
from hakuriver_host.errors import (
    ApiError,
    FailedPrecondition,
    Hidden,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    TooManyStreams,
    Unauthenticated,
    Unavailable,
    WatcherBehind,
)
from hakuriver_host.holdings import Holdings
from hakuriver_host.identity import ANONYMOUS, Kind, Principal, role_changed, set_caller
from hakuriver_host.log_limits import LimitedLog
from hakuriver_host.metrics import HostMetrics
from hakuriver_host.store import database_unavailable

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
    TooManyStreams: grpc.StatusCode.RESOURCE_EXHAUSTED,
}


INTERNAL_MESSAGE = "internal error (logged on the Host)"


class Malformed:
    """What the lenient deserializer hands over instead of a request it could not parse."""

    __slots__ = ("reason", "type_name")

    def __init__(self, type_name: str, reason: str) -> None:
        self.type_name = type_name
        self.reason = reason

    def error(self) -> InvalidArgument:
        return InvalidArgument(f"request: not a valid {self.type_name} message")


class MalformedRequest(asyncio.CancelledError):
    """Raised into a servicer that reads a corrupt message from its request stream: the
    servicer unwinds as for a client that went away; the call then answers
    INVALID_ARGUMENT. (A CancelledError so that no servicer logs or maps it.)"""


class RefusedNow(asyncio.CancelledError):
    """Raised into a servicer that reads its request stream once its caller's token no
    longer holds (revoked, expired, its user removed): unwound like ``MalformedRequest``,
    the call then answers the refusal."""


def message_type_name(deserializer: Callable[[bytes], Any] | None) -> str:
    """``hakuriver.v1.XRequest`` for a generated message's ``FromString``."""
    cls = getattr(deserializer, "__self__", None)
    descriptor = getattr(cls, "DESCRIPTOR", None)
    return str(getattr(descriptor, "full_name", "") or "request")


def lenient(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """``deserializer`` returning a ``Malformed`` instead of raising (grpc.aio would log a
    traceback and answer UNKNOWN)."""
    if deserializer is None:
        return None
    type_name = message_type_name(deserializer)

    def parse(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as exc:
            return Malformed(type_name, f"{type(exc).__name__}: {exc}")

    return parse


def _where(exc: BaseException) -> str:
    """file:line of the innermost frame of ``exc``'s traceback (part of its cause)."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is None:
        return "?"
    return f"{tb.tb_frame.f_code.co_filename}:{tb.tb_lineno}"


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
            # Ended without raising: the status the servicer set (a Runner's stream that
            # went away), or CANCELLED when the caller went away and the servicer took its
            # request stream's end as an end (which of the two it sees first is a race).
            found = _gone(context) if context.cancelled() else context.code()
            code = found.name if isinstance(found, grpc.StatusCode) else "OK"
        elif isinstance(exc, ApiError):
            code = status_code(exc).name
        elif isinstance(exc, _Internal):
            code = grpc.StatusCode.INTERNAL.name
        elif isinstance(exc, asyncio.CancelledError | GeneratorExit):
            code = _gone(context).name
        else:
            found = context.code()
            code = found.name if isinstance(found, grpc.StatusCode) else "UNKNOWN"
        if code == "OK":
            self._ok.inc()
        else:
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

    def __init__(
        self,
        metrics: HostMetrics,
        access: Access,
        audit: AuditLog,
        calls_per_caller: int = 0,
        streams_per_caller: int = 0,
    ) -> None:
        self.metrics = metrics
        self.access = access
        self.audit = audit
        # None: no limit (see caller_turns).
        self.turns = CallerTurns(calls_per_caller) if calls_per_caller else None
        if self.turns is not None:
            metrics.calls_waiting.set_function(self.turns.waiting)
        self._series: dict[str, _Method] = {}
        # The streams of API callers under way (``end_streams``, ``end_revoked``).
        self.streams: set[_Call] = set()
        # Streams each user holds open, bounded by ``streams_per_caller`` (0: no bound).
        self.streams_per_caller = streams_per_caller
        self.open_streams = Holdings()
        access.on_revoked(self.end_revoked)
        self.malformed_log = LimitedLog(log)
        self.internal_log = LimitedLog(log)

    def end_streams(self, why: ApiError) -> None:
        """End every API caller's stream with ``why`` (the Host stopping), not a Runner's:
        cancelled by the web server as it stops, a Connect stream ended as if it were
        complete (the runtime sends a clean end for a cancelled call), and a follower took
        a running task's output for finished."""
        for call in list(self.streams):
            call.end(why)

    def end_revoked(self) -> None:
        """End, with its refusal, every stream whose token was just revoked or whose user
        was removed: at once, not at its next message, which an idle one may never send
        (one whose token expires ends then: ``_Call._end_at_expiry``)."""
        for call in list(self.streams):
            if (refused := call.refused_now()) is not None:
                call.end(refused)

    def open_stream(self, who: Principal, peer: str) -> str | None:
        """Count a stream ``who`` opens from ``peer``, refused past ``streams_per_caller``
        (a user's), or MAX_ANONYMOUS_STREAMS (an address's without a token): each holds the
        Host's memory and a share of its loop for as long as its caller likes. The key to
        ``close_stream`` it by; None: not counted (Runners, the open Host's anyone)."""
        if who is ANONYMOUS:
            key, limit = source_of(peer), MAX_ANONYMOUS_STREAMS
            why = f"{key} holds {limit} streams open without a token, the most allowed"
        elif who.kind is Kind.USER and self.streams_per_caller and not self.access.open:
            key, limit = who.actor, self.streams_per_caller
            why = (
                f"{key} holds {limit} streams open, the most auth.streams_per_caller allows: "
                "end one (a watch, a followed log, a terminal, a dashboard tab) first"
            )
        else:
            return None
        if not self.open_streams.take(key, limit):
            raise TooManyStreams(why)
        return key

    def close_stream(self, key: str | None) -> None:
        if key is not None:
            self.open_streams.give(key)

    def note_malformed(self, method: str, malformed: Malformed) -> None:
        """One log line per method and message type per interval."""
        self.malformed_log.log(
            (method, malformed.type_name),
            logging.WARNING,
            "%s: refused a request that is not a valid %s message (%s)",
            method,
            malformed.type_name,
            " ".join(malformed.reason.split())[:200],
        )

    def note_database(self, method: str, why: str, exc: BaseException) -> None:
        """One log line per method and reason per interval: the database refused a
        statement for now (SQLite locked by another program, PostgreSQL unreachable)."""
        reason = str(getattr(exc, "orig", exc)).splitlines()[0][:200]
        self.internal_log.log(
            (method, why), logging.WARNING, "%s: refused: %s (%s)", method, why, reason
        )

    def note_internal(self, method: str, exc: BaseException) -> None:
        """One log line per method, exception type and place per interval; the traceback
        with the first only."""
        self.internal_log.log(
            (method, type(exc).__name__, _where(exc)),
            logging.ERROR,
            "%s: internal error %s: %s",
            method,
            type(exc).__name__,
            " ".join(str(exc).split())[:500],
            exc_info=exc,
        )

    def close(self) -> None:
        """Write the pending summaries (the Host stops)."""
        self.malformed_log.close()
        self.internal_log.close()

    def _series_of(self, method: str) -> _Method:
        series = self._series.get(method)
        if series is None:
            series = self._series[method] = _Method(self.metrics, method)
        return series

    def call(self, method: str, bearer: str, request_streaming: bool) -> _Call:
        """One call of ``method`` by the holder of ``bearer``: how the other transports (the
        dashboard's Connect API and its terminal WebSocket) pass the same checks."""
        who, refused = self.authorise(method, bearer)
        return _Call(self, method, bearer, who, refused, request_streaming)

    def authorise(self, method: str, bearer: str) -> tuple[Principal, ApiError | None]:
        """Who holds ``bearer``, and why they may not call ``method`` (None: they may)."""
        if RIGHTS.get(method) is Right.PUBLIC:
            return ANONYMOUS, None
        if self.access.open:
            return self.access.anyone, None
        try:
            who = self.access.authenticate(bearer)
        except Unauthenticated as exc:
            return self.access.claimed_by(bearer), exc
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
        parse = lenient(handler.request_deserializer)
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                call.unary(handler.unary_unary),
                request_deserializer=parse,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(
                call.unary(handler.stream_unary),
                request_deserializer=parse,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                call.streaming(handler.unary_stream),
                request_deserializer=parse,
                response_serializer=handler.response_serializer,
            )
        return grpc.stream_stream_rpc_method_handler(
            call.streaming(handler.stream_stream),
            request_deserializer=parse,
            response_serializer=handler.response_serializer,
        )


class _Internal(Exception):
    """Marks, for the metrics, a call that ended with INTERNAL."""


class _NeverRaised(Exception):
    pass


# grpc's error for a status it could not send, the call having ended meanwhile (its client
# cancelled, its deadline passed): grpc logs it with a traceback at ERROR. Not a public name.
_STATUS_UNSENT: type[Exception] = getattr(
    importlib.import_module("grpc._cython.cygrpc"), "ExecuteBatchError", _NeverRaised
)


def _deadline_passed(context: Any, slack: float = 0.0) -> bool:
    """Has the call's deadline passed (a gRPC deadline, a Connect-Timeout-Ms), or is it
    within ``slack`` seconds of it?"""
    left = context.time_remaining()
    return left is not None and left <= slack


# A call cut short this close to its deadline counts as exceeding it: its client gives up at
# its own deadline, and the stream's reset may reach the Host a moment before the Host's
# timer (receipt time plus the grpc-timeout the client sent) fires.
DEADLINE_SLACK_SECONDS = 0.05


def _gone(context: Any) -> grpc.StatusCode:
    """How a call cut short ended: its deadline passed (grpc cancels the call then too),
    or its caller went away."""
    if _deadline_passed(context, DEADLINE_SLACK_SECONDS):
        return grpc.StatusCode.DEADLINE_EXCEEDED
    return grpc.StatusCode.CANCELLED


async def end_call(context: Any, code: grpc.StatusCode, message: str) -> None:
    """End the call with ``code``. A call whose client is gone (it cancelled, its deadline
    passed, before or while the status goes) ends as cancelled instead: a loaded Host may
    get to refuse a call only after its client's deadline (seen in the fuzz tier's runs)."""
    done = getattr(context, "done", None)  # the Connect transport's context has none
    if (done is not None and done()) or _deadline_passed(context):
        raise asyncio.CancelledError()
    try:
        await context.abort(code, message)
    except _STATUS_UNSENT:
        raise asyncio.CancelledError() from None


class _Call:
    """One call: its principal (or why it is refused) around the servicer's behaviour."""

    def __init__(
        self,
        owner: ApiInterceptor,
        method: str,
        bearer: str,
        who: Principal,
        refused: ApiError | None,
        request_streaming: bool,
    ) -> None:
        self.owner = owner
        self.method = method
        self.bearer = bearer
        self.who = who
        self.refused = refused
        self.request_streaming = request_streaming
        self.series = owner._series_of(method)
        # The corrupt message that ended the request stream, if one did.
        self.malformed: Malformed | None = None
        # What the interceptor ended the call with after it began (a corrupt message's
        # INVALID_ARGUMENT, or the refusal of a token that no longer holds), if anything.
        self.cut: ApiError | None = None
        # The task serving the call (a servicer may read its requests in another), and
        # whether it is out of the servicer, handing a response on (``streaming``): a
        # cancel there would land in the transport's send, which answers nothing.
        self.serving: asyncio.Task[Any] | None = None
        self.handing_on = False
        # Whether the call ended as cancelled where it was refused (``end_call``).
        self.went_away = False
        # A stream's end when its token expires (``_end_at_expiry``).
        self.expiry: asyncio.TimerHandle | None = None
        # Whether the call streams its responses, and its place among its caller's open
        # streams (``ApiInterceptor.open_stream``).
        self.response_streaming = False
        self.slot: str | None = None

    async def _enter(self, request: Any, context: Any) -> Any:
        """Refuse the call, or make its principal the caller for the servicer; the request
        to hand the servicer (a stream checked message by message)."""
        if self.refused is not None:
            if self.request_streaming:
                await self._take_first(request)
            raise self.refused
        if isinstance(request, Malformed):
            self.malformed = request
            raise request.error()
        set_caller(self.who, context)
        self.serving = asyncio.current_task()
        if self.request_streaming:
            return self._checked(request)
        return request

    async def _checked(self, requests: Any) -> AsyncIterator[Any]:
        """The request stream, ended by ``MalformedRequest`` at a corrupt message, and by
        ``RefusedNow`` once the caller may no longer call (``refused_now``)."""
        async for message in requests:
            if isinstance(message, Malformed):
                self.malformed = message
                self.cut = message.error()
                raise MalformedRequest(self.cut.message)
            if (refused := self.refused_now()) is not None:
                if self.serving is asyncio.current_task():
                    self.cut = refused
                else:  # its reader task ending would not end the call
                    self.end(refused)
                raise RefusedNow(refused.message)
            yield message

    def end(self, why: ApiError) -> None:
        """End the call with ``why``: the serving task is cancelled while in the servicer;
        handing a response on, it ends once the transport took it (``streaming``)."""
        self.cut = why
        if self.serving is not None and not self.handing_on:
            self.serving.cancel()

    def _end_at_expiry(self) -> None:
        """End the stream when its token expires, idle or not (each message checks too)."""
        left = self.owner.access.seconds_left(self.who)
        if left is not None:
            self.expiry = asyncio.get_running_loop().call_later(left, self._expired)

    def _expired(self) -> None:
        if (refused := self.refused_now()) is not None:
            self.end(refused)
        else:  # the loop's clock was a little ahead of the wall clock
            self._end_at_expiry()

    def refused_now(self) -> ApiError | None:
        """Why the caller may no longer go on with a stream authorised when it began (its
        token revoked or expired, its user removed, or given another role: what the stream
        shows was chosen under the old one); None: they may. Checked at each message the
        stream passes on, so a revoked token gets nothing more."""
        if not self.who.token_id:  # a Runner (revoking it closes its stream) or open mode
            return None
        now, refused = self.owner.authorise(self.method, self.bearer)
        if refused is None and now.role != self.who.role:
            return Unavailable(role_changed(now, self.who))
        return refused

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
        if self.malformed is not None:
            self.owner.note_malformed(self.method, self.malformed)
        await self._abort(context, status_code(exc), exc.message)

    async def _abort(self, context: Any, code: grpc.StatusCode, message: str) -> None:
        try:
            await end_call(context, code, message)
        except asyncio.CancelledError:
            self.went_away = True
            raise

    def _record(self, start: float, error: BaseException | None, context: Any) -> None:
        """Count the call: a refusal whose client had gone counts as it went, CANCELLED or
        DEADLINE_EXCEEDED (a bug still counts as INTERNAL)."""
        gone = self.went_away and not isinstance(error, _Internal)
        self.series.record(start, asyncio.CancelledError() if gone else error, context)

    def _judge(self, exc: BaseException) -> BaseException:
        """What a call that ``exc`` ended answers: INVALID_ARGUMENT (an InvalidArgument)
        when a corrupt message ended its request stream, the refusal when its caller's
        token stopped holding (``cut``), INTERNAL (``_Internal``) when
        ``exc`` is a bug; ``exc`` itself when it is how a call ends (grpc's abort, a
        cancellation)."""
        if self.cut is not None and (
            isinstance(exc, asyncio.CancelledError) or not isinstance(exc, PASSED_THROUGH)
        ):
            return self.cut
        if isinstance(exc, PASSED_THROUGH) or not isinstance(exc, Exception):
            return exc
        why = database_unavailable(exc)
        if why is not None:  # not a bug: nothing of the call was written
            self.owner.note_database(self.method, why, exc)
            return Unavailable(why)
        self.owner.note_internal(self.method, exc)
        return _Internal()

    async def _answer(self, error: BaseException, context: Any) -> None:
        if isinstance(error, ApiError):
            await self._fail(error, context)
        await self._abort(context, grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE)

    async def _in_turn(self, inner: Behaviour, request: Any, context: Any) -> Any:
        """Serve a unary call in one of its caller's turns (caller_turns). Client streams,
        calls that wait for Runners (UNTURNED), anonymous callers, and everybody when nobody
        is authenticated take none. A call that waited is authorised again: its token may
        have been revoked, its user removed or their role changed meanwhile."""
        turns = self.owner.turns
        if (
            turns is None
            or self.request_streaming
            or self.method in UNTURNED
            or self.who is ANONYMOUS
            or self.owner.access.open
        ):
            return await inner(request, context)
        caller = self.who.actor
        waited = await turns.take(caller)
        try:
            if waited:
                self.who, refused = self.owner.authorise(self.method, self.bearer)
                if refused is not None:
                    raise refused
                set_caller(self.who, context)
            return await inner(request, context)
        finally:
            turns.give_back(caller)

    def unary(self, inner: Behaviour) -> Behaviour:
        async def call(request: Any, context: Any) -> Any:
            start = time.perf_counter()
            error: BaseException | None = None
            try:
                request = await self._enter(request, context)
                if self.response_streaming:  # one written with context.write
                    self.slot = self.owner.open_stream(self.who, context.peer())
                response = await self._in_turn(inner, request, context)
                if self.cut is not None:  # the servicer took the early end as an end
                    raise MalformedRequest()
                return response
            except ApiError as exc:
                error = exc
                await self._fail(exc, context)
            except BaseException as exc:
                error = self._judge(exc)
                if error is exc:
                    raise
                await self._answer(error, context)
            finally:
                self.owner.close_stream(self.slot)
                self._record(start, error, context)

        return call

    def streaming(self, inner: Behaviour) -> Behaviour:
        self.response_streaming = True
        if not inspect.isasyncgenfunction(inner):
            # Handlers that write with ``context.write`` (the standard health service).
            return self.unary(inner)

        async def stream(request: Any, context: Any) -> AsyncIterator[Any]:
            start = time.perf_counter()
            error: BaseException | None = None
            if self.who.kind not in (Kind.RUNNER, Kind.JOINING):
                self.owner.streams.add(self)
            try:
                request = await self._enter(request, context)
                self.slot = self.owner.open_stream(self.who, context.peer())
                self._end_at_expiry()
                async with contextlib.aclosing(inner(request, context)) as responses:
                    async for response in responses:
                        if (refused := self.refused_now()) is not None:
                            raise refused
                        self.handing_on = True
                        try:
                            yield response
                        finally:
                            self.handing_on = False
                        if self.cut is not None:  # refused while it was handed on
                            raise asyncio.CancelledError
                if self.cut is not None:  # the servicer took the early end as an end
                    raise MalformedRequest()
            except ApiError as exc:
                error = exc
                await self._fail(exc, context)
            except BaseException as exc:
                error = self._judge(exc)
                if error is exc:
                    raise
                await self._answer(error, context)
            finally:
                self.owner.close_stream(self.slot)
                self.owner.streams.discard(self)
                if self.expiry is not None:
                    self.expiry.cancel()
                self._record(start, error, context)

        return stream


# Exceptions that are how a call ends, not bugs: grpc's abort, the Connect transport's
# error (what CallContext.abort raises), cancellation.
PASSED_THROUGH: tuple[type[BaseException], ...] = (
    grpc.aio.AbortError,
    ConnectError,
    asyncio.CancelledError,
    GeneratorExit,
    KeyboardInterrupt,
    SystemExit,
)
