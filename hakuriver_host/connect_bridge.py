"""The public API over the Connect protocol: the same servicers, a second transport.

The Connect plugin generates one ASGI application per service, calling snake_case methods
on an implementation object. ``bridge`` builds that object from the gRPC servicer: each
method runs the servicer's own method through the gRPC interceptor's call wrapper
(authentication, the RIGHTS table, error mapping, refusal audit, metrics), with a context
that turns its ``abort`` into a Connect error. One implementation, two transports.

A body that is not a valid request (corrupt protobuf, JSON that is not the message, or not
JSON at all) answers Connect's ``invalid_argument`` with ``request: not a valid
hakuriver.v1.XRequest message``, logged like the gRPC side's (one line per cause per
minute, no traceback): the runtime's codecs are replaced by ``LenientCodec``s (the runtime
would answer 500 and let the exception reach the ASGI server, which logs a traceback). As
over gRPC, the gate judges the caller first: a caller without a valid token, or one whose
role does not allow the method, gets that refusal (and its audit entry) whatever the body.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextvars import ContextVar
from types import SimpleNamespace
from typing import Any

import grpc
from connectrpc.code import Code
from connectrpc.codec import Codec, proto_binary_codec, proto_json_codec
from connectrpc.errors import ConnectError
from connectrpc.request import RequestContext
from connectrpc.server import ConnectASGIApplication
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor

from hakuriver_host.identity import peer_name
from hakuriver_host.interceptors import ApiInterceptor, Malformed, bearer_secret

CUT_BY_STOP = (
    "the Host stopped before answering: the call may have been carried out; check once it is back"
)
# Largest request body the Connect API reads (the gRPC server's receive limit).
READ_MAX_BYTES = 16 * 1024 * 1024

# The body of the current call that was not a valid message: ``LenientCodec.decode`` notes
# it and the bridge's method (same task: each Connect call is one) hands it to the gate
# instead of the request, as gRPC's lenient deserializer does, so refusals come first.
_MALFORMED: ContextVar[Malformed | None] = ContextVar("malformed_connect_body", default=None)


def _received(request: Any) -> Any:
    """The request the runtime decoded, or the ``Malformed`` standing for it."""
    found = _MALFORMED.get()
    if found is None:
        return request
    _MALFORMED.set(None)
    return found


class CallContext:
    """What the interceptor's call wrapper and the servicers ask of a gRPC context, for a
    call that arrived by another transport."""

    def __init__(self, client_address: str | None, deadline: float | None = None) -> None:
        """``client_address``: "host:port" as the ASGI server saw it; the peer is named
        the way gRPC names it (``ipv4:1.2.3.4:5``, ``ipv6:[::1]:5``) for the audit log.
        ``deadline``: when the call must end, on the loop's clock (None: never)."""
        self._deadline = deadline
        self._peer = ""
        if client_address:
            host, _, port = client_address.rpartition(":")
            self._peer = peer_name(host, port)

    def peer(self) -> str:
        return self._peer

    def code(self) -> grpc.StatusCode | None:
        return None

    def time_remaining(self) -> float | None:
        """Seconds until the deadline, as gRPC's context tells them (0 once it passed)."""
        if self._deadline is None:
            return None
        return max(self._deadline - asyncio.get_running_loop().time(), 0.0)

    def cancelled(self) -> bool:
        """A Connect call whose client went away ends with an exception instead."""
        return False

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        name = "CANCELED" if code is grpc.StatusCode.CANCELLED else code.name  # Connect's spelling
        raise ConnectError(Code[name], details)


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def _bearer(ctx: RequestContext[Any, Any]) -> str:
    return bearer_secret(ctx.request_headers().get("authorization") or "")


def _deadline(ctx: RequestContext[Any, Any]) -> float | None:
    """When the call must end, on the loop's clock: its Connect-Timeout-Ms, which connectrpc
    reads but leaves to us (a gRPC deadline's counterpart)."""
    left = ctx.timeout_ms()
    return None if left is None else asyncio.get_running_loop().time() + max(left, 0) / 1000


def _passed() -> ConnectError:
    return ConnectError(Code.DEADLINE_EXCEEDED, "the call's Connect-Timeout-Ms passed")


def _unary(gate: ApiInterceptor, path: str, behaviour: Callable[..., Any]) -> Callable[..., Any]:
    async def call(request: Any, ctx: RequestContext[Any, Any]) -> Any:
        wrapped = gate.call(path, _bearer(ctx), False).unary(behaviour)
        deadline = _deadline(ctx)
        if deadline is not None and asyncio.get_running_loop().time() >= deadline:
            # Passed on arrival (a timeout of 0): nothing is begun, as a gRPC call whose
            # deadline passed is not (a write once under way is carried through).
            raise _passed()
        try:
            async with asyncio.timeout_at(deadline):
                return await wrapped(
                    _received(request), CallContext(ctx.client_address(), deadline)
                )
        except TimeoutError:
            raise _passed() from None
        except asyncio.CancelledError:
            # The web server ends the calls still open when the Host stops: their callers
            # get a reason rather than a bare HTTP 500.
            raise ConnectError(Code.UNAVAILABLE, CUT_BY_STOP) from None

    return call


def _server_stream(
    gate: ApiInterceptor, path: str, behaviour: Callable[..., Any]
) -> Callable[..., AsyncIterator[Any]]:
    async def call(request: Any, ctx: RequestContext[Any, Any]) -> AsyncIterator[Any]:
        wrapped = gate.call(path, _bearer(ctx), False).streaming(behaviour)
        deadline = _deadline(ctx)
        context = CallContext(ctx.client_address(), deadline)
        stream: AsyncGenerator[Any] = wrapped(_received(request), context)
        try:
            # Each next message waited for under the deadline, never a yield inside a
            # timeout: it would cancel whatever the consumer is doing when it passes.
            while True:
                if deadline is not None and asyncio.get_running_loop().time() >= deadline:
                    raise _passed()  # even with messages ready: a timeout only cuts a wait
                try:
                    async with asyncio.timeout_at(deadline):
                        message = await anext(stream)
                except StopAsyncIteration:
                    return
                except TimeoutError:
                    raise _passed() from None
                yield message
        finally:
            await stream.aclose()  # a client gone while its message was being sent

    return call


def grpc_only(method: MethodDescriptor) -> str:
    """Why a method that streams its request is not served over Connect."""
    path = f"/{method.containing_service.full_name}/{method.name}"
    return f"{path} streams its request: call it over gRPC (browsers cannot stream a body)"


def _grpc_only(method: MethodDescriptor) -> Callable[..., Any]:
    async def refuse(request: Any, ctx: RequestContext[Any, Any]) -> Any:
        raise ConnectError(Code.UNIMPLEMENTED, grpc_only(method))

    return refuse


def bridge(gate: ApiInterceptor, servicer: Any, service: ServiceDescriptor) -> SimpleNamespace:
    """The Connect implementation object of ``service`` over its gRPC ``servicer``.
    Client- and bidi-streaming methods answer UNIMPLEMENTED: browsers cannot stream a
    request body (the terminal uses a WebSocket instead, see web_app.py)."""
    methods: dict[str, Callable[..., Any]] = {}
    for method in service.methods:
        path = f"/{service.full_name}/{method.name}"
        if method.client_streaming:
            methods[_snake(method.name)] = _grpc_only(method)
            continue
        behaviour = getattr(servicer, method.name)
        adapt = _server_stream if method.server_streaming else _unary
        methods[_snake(method.name)] = adapt(gate, path, behaviour)
    return SimpleNamespace(**methods)


class LenientCodec:
    """One of the runtime's codecs, whose ``decode`` notes a body that is not the message
    (``_MALFORMED``) instead of raising: the gate answers it after judging the caller."""

    def __init__(self, codec: Codec[Any, Any]) -> None:
        self._codec = codec

    def name(self) -> str:
        return self._codec.name()

    def encode(self, message: Any) -> bytes:
        return self._codec.encode(message)

    def decode(self, data: bytes | bytearray, message: Any) -> Any:
        try:
            return self._codec.decode(data, message)
        except Exception as exc:
            type_name = message.DESCRIPTOR.full_name
            _MALFORMED.set(Malformed(type_name, f"{self.name()}: {type(exc).__name__}: {exc}"))
            return message


def connect_app(
    application: Callable[..., ConnectASGIApplication[Any]],
    gate: ApiInterceptor,
    servicer: Any,
    service: ServiceDescriptor,
) -> ConnectASGIApplication[Any]:
    """A generated ASGI application (``application``) serving ``servicer``."""
    # Requests uncompressed only: a small gzip body can inflate to gigabytes before the
    # runtime checks its size. (Answers are small or streamed; the pages are gzipped.)
    app = application(
        bridge(gate, servicer, service), read_max_bytes=READ_MAX_BYTES, compressions=()
    )
    # The generated constructors do not pass ``codecs`` on; the runtime keeps them by name.
    codecs: dict[str, Any] = app._codecs
    assert set(codecs) == {"proto", "json"}, f"connectrpc's codecs changed: {sorted(codecs)}"
    app._codecs = {
        codec.name(): LenientCodec(codec) for codec in (proto_binary_codec(), proto_json_codec())
    }
    return app
