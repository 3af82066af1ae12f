"""The dashboard's HTTP side as one ASGI application: the Connect API, the terminal
WebSocket and the built static files, every response with the browser security headers.

- ``/hakuriver.v1.<Service>/<Method>``: the public API over the Connect protocol
  (connect_bridge.py), unary and server-streaming methods.
- ``/ws/shell``: ShellService.Shell over a WebSocket (browsers cannot stream a request
  body): binary frames, each one serialized ShellRequest up or ShellResponse down. The
  token travels as a WebSocket subprotocol ``bearer.<token>`` beside ``hakuriver.shell.v1``
  (a browser cannot set headers on a WebSocket; a URL would end up in logs). A refused or
  failed call closes with code 4000 + the gRPC status code and the message as reason.
- anything else: the single-page app (index.html for every page path).
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import html
import ipaddress
import json
import logging
import mimetypes
import re
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from connectrpc.errors import ConnectError
from connectrpc.server import ConnectASGIApplication
from google.protobuf import descriptor_pool
from google.protobuf.message import DecodeError

from hakuriver_common.proto.hakuriver.v1 import shell_service_pb2 as spb
from hakuriver_host.connect_bridge import READ_MAX_BYTES, CallContext, grpc_only
from hakuriver_host.errors import InvalidArgument, Unauthenticated
from hakuriver_host.interceptors import ApiInterceptor, bearer_secret, status_code

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

SHELL_PATH = "/ws/shell"
SHELL_METHOD = "/hakuriver.v1.ShellService/Shell"
SHELL_PROTOCOL = "hakuriver.shell.v1"
BEARER_PROTOCOL_PREFIX = "bearer."
# Largest Connect request body: the largest message plus its envelope's 5 bytes.
MAX_REQUEST_BYTES = READ_MAX_BYTES + 5
# Most of a call's body read when its token is refused as unauthenticated (none, unknown,
# revoked, expired): the refusal does not depend on it, and a stranger's many connections
# must not each hold MAX_REQUEST_BYTES (WebApp._body_limit).
STRANGER_BODY_BYTES = 64 * 1024
# How long a refused call's body is read before it is answered (_drain).
DRAIN_SECONDS = 1.0
# How long a call's body may take to arrive after its headers (MAX_REQUEST_BYTES at
# 4.5 Mbit/s): a client sending a byte every few seconds would hold its connection, and what
# it sent, for good (Hypercorn bounds only the headers).
BODY_SECONDS = 30.0
# Largest ShellRequest frame (keystrokes and pastes).
MAX_SHELL_FRAME = 1024 * 1024
# Keystrokes and pastes a terminal's process has not read yet, at most (then it is closed).
SHELL_BACKLOG = 8 * 1024 * 1024
DEFAULT_ASSETS = Path(__file__).resolve().parent / "dashboard" / "dist"

# No inline script or style, nothing from another origin, not framed by other sites.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "font-src 'self'; connect-src 'self'; manifest-src 'self'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = [
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
]
NOT_BUILT = (
    b"The dashboard's files are not built: run scripts/build-dashboard.sh "
    b"(the API on this port works without them).\n"
)

# A body over MAX_REQUEST_BYTES, as a Connect error.
TOO_LARGE = {
    "code": "resource_exhausted",
    "message": f"request: larger than the {READ_MAX_BYTES // 2**20} MiB limit",
}
# A call by a host name the dashboard does not answer to (see WebApp._known_host).
MISDIRECTED_MESSAGE = "unknown host name (dashboard.server_names)"
MISDIRECTED = {"code": "permission_denied", "message": MISDIRECTED_MESSAGE}
# One envelope holding a byte that neither codec reads as a message (see _one_envelope).
NOT_A_MESSAGE = b"\x00\x00\x00\x00\x01\xff"
NO_TRAILERS = (
    b"gRPC needs HTTP/2 trailers: call the gRPC port (network.host_port), or use the Connect "
    b"protocol (application/json, application/proto) here\n"
)


@dataclass(frozen=True)
class Asset:
    body: bytes
    gzipped: bytes | None
    content_type: str
    cache_control: str


def with_meta(page: bytes, meta: dict[str, str]) -> bytes:
    """index.html with each ``<meta name="NAME" content="">`` of ``meta`` given its value:
    what the page needs of the Host that the API does not say (the SSH proxy's port)."""
    for name, value in meta.items():
        empty = re.compile(rf'<meta name="{re.escape(name)}" content="" ?/?>'.encode())
        page = empty.sub(f'<meta name="{name}" content="{html.escape(value)}">'.encode(), page)
    return page


def load_assets(directory: Path, meta: dict[str, str] | None = None) -> dict[str, Asset]:
    """Every built file by URL path, kept in memory with a gzipped copy (the build is a few
    hundred kilobytes). Hashed files under /assets/ are cached for good; the rest revalidate.
    index.html gets ``meta`` (with_meta)."""
    found: dict[str, Asset] = {}
    if not (directory / "index.html").is_file():
        return found
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        if path.name.startswith("."):
            continue
        url = "/" + path.relative_to(directory).as_posix()
        body = path.read_bytes()
        if url == "/index.html":
            body = with_meta(body, meta or {})
        kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        if kind.startswith("text/") or kind in ("application/javascript", "image/svg+xml"):
            kind += "; charset=utf-8"
        squeezed = gzip.compress(body, 9, mtime=0)
        immutable = url.startswith("/assets/")
        found[url] = Asset(
            body=body,
            gzipped=squeezed if len(squeezed) < len(body) else None,
            content_type=kind,
            cache_control="public, max-age=31536000, immutable" if immutable else "no-cache",
        )
    return found


class AssetStore:
    """The built files, loaded off the event loop on the first request and again when a
    new build replaced index.html: rebuilding the dashboard needs no Host restart, and
    the Host's start does not wait for the compression."""

    def __init__(self, directory: Path, meta: Callable[[], dict[str, str]] = dict) -> None:
        """``meta``: the values of index.html's empty meta tags (with_meta), asked for at
        each load (after the Host has bound its ports)."""
        self.directory = directory
        self.meta = meta
        self._stamp: int | None = None
        self.assets: dict[str, Asset] = {}

    @property
    def built(self) -> bool:
        return (self.directory / "index.html").is_file()

    def _index_stamp(self) -> int:
        try:
            return (self.directory / "index.html").stat().st_mtime_ns
        except OSError:
            return 0

    async def current(self) -> dict[str, Asset]:
        stamp = self._index_stamp()
        if stamp != self._stamp:
            self._stamp = stamp
            self.assets = await asyncio.to_thread(load_assets, self.directory, self.meta())
        return self.assets


async def _connect_error(scope: Scope, send: Send, error: dict[str, str], status: int) -> None:
    """Answer a Connect call with ``error``: a stream call's end message, a unary call's
    JSON body with HTTP ``status``. Connect clients read a bare HTTP error (413, 421) as
    ``unknown``."""
    if _connect_stream(scope):  # its end message
        end = json.dumps({"error": error}).encode()
        body, status = b"\x02" + len(end).to_bytes(4, "big") + end, 200
        kind = _header(scope, b"content-type")
    else:
        body, kind = json.dumps(error).encode(), "application/json"
    headers = [(b"content-type", kind.encode("latin-1"))]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _one_envelope(scope: Scope, body: bytearray) -> bytearray:
    """A Connect stream request is one uncompressed envelope. The runtime answers any other
    framing (none, two, cut short, flagged compressed) with ``unimplemented`` or
    ``internal`` before the caller is checked; handed on as one unreadable message instead,
    it answers as any malformed request does (the caller's refusal, else invalid_argument)."""
    if not _connect_stream(scope):
        return body
    if len(body) >= 5 and body[0] == 0 and len(body) == 5 + int.from_bytes(body[1:5], "big"):
        return body
    return bytearray(NOT_A_MESSAGE)


def _content_type(scope: Scope) -> str:
    """The request's media type, without parameters, lower case."""
    return _header(scope, b"content-type").split(";", 1)[0].strip().lower()


def _connect_call(scope: Scope) -> bool:
    """A call in the Connect protocol (unary or stream), not gRPC or gRPC-Web."""
    kind = _content_type(scope)
    return kind in ("application/json", "application/proto") or _connect_stream(scope)


def _connect_stream(scope: Scope) -> bool:
    """A call of a Connect stream (its messages enveloped), not a unary one."""
    return _header(scope, b"content-type").lower().startswith("application/connect+")


def _grpc_without_trailers(scope: Scope) -> bool:
    """A gRPC call (not gRPC-Web) on a connection that cannot carry trailers (HTTP/1.1):
    the runtime would raise into the ASGI server (HTTP 500 and a traceback in the log)."""
    kind = _content_type(scope)
    grpc_proper = kind == "application/grpc" or kind.startswith("application/grpc+")
    return grpc_proper and "http.response.trailers" not in scope.get("extensions", {})


def _wrong_shape(scope: Scope) -> bytes | None:
    """What to say to a call whose content type its method does not take: a unary request
    (application/json) to a server stream, an enveloped one (application/connect+json) to a
    unary method, gRPC-Web's text form, or none of the protocols' (text/plain, none at
    all). The runtime answers those HTTP 415 with an empty body."""
    if _content_type(scope).startswith("application/grpc-web-text"):
        return (
            b"gRPC-Web text (base64) is not served: send application/grpc-web+proto or "
            b"application/grpc-web+json (docs/api.md)\n"
        )
    if scope["method"] != "POST" or _content_type(scope).startswith("application/grpc"):
        return None  # the runtime's 405; gRPC-Web, or gRPC (_grpc_without_trailers)
    service, _, name = scope["path"].strip("/").rpartition("/")
    try:
        method = descriptor_pool.Default().FindMethodByName(f"{service}.{name}")
    except KeyError:
        return None
    if method.client_streaming:  # enveloped, the bridge answers unimplemented, saying so
        return None if _connect_stream(scope) else f"{grpc_only(method)}\n".encode()
    if _connect_call(scope) and method.server_streaming == _connect_stream(scope):
        return None
    if method.server_streaming:
        return (
            f"{name} is a server stream: send Content-Type application/connect+json (or "
            "application/connect+proto) and the request as one enveloped message "
            "(docs/api.md)\n"
        ).encode()
    return (
        f"{name} is unary: send Content-Type application/json (or application/proto) and the "
        "request as the body, not enveloped (docs/api.md)\n"
    ).encode()


def _header(scope: Scope, name: bytes) -> str:
    for key, value in scope.get("headers", ()):
        if key == name:
            return bytes(value).decode("latin-1")
    return ""


def _same_origin(scope: Scope) -> bool:
    """A WebSocket opened by a page of this dashboard (browsers always send Origin; a page
    of another site must not drive a terminal even with a token it somehow has)."""
    origin = _header(scope, b"origin")
    host = _header(scope, b"host")
    return bool(origin) and origin.split("://", 1)[-1] == host


def _with_security_headers(send: Send) -> Send:
    async def wrapped(message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.start":
            message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
        await send(message)

    return wrapped


class WebApp:
    def __init__(
        self,
        gate: ApiInterceptor,
        services: list[ConnectASGIApplication[Any]],
        shell: Any,
        assets: AssetStore,
        server_names: set[str],
    ) -> None:
        """``services``: the Connect applications to serve; ``shell``: the ShellService
        servicer behind the terminal WebSocket; ``server_names``: the host names it answers
        to besides IP addresses."""
        self.server_names = {name.lower() for name in server_names}
        self.gate = gate
        self.services = {app.path: app for app in services}
        self.shell = shell
        self.assets = assets

    def _known_host(self, scope: Scope) -> bool:
        """Reached by an IP address or a name of ours: a page of another site that made its
        own name resolve to this Host (DNS rebinding) is refused."""
        host = _header(scope, b"host").strip()
        name = host[1 : host.find("]")] if host.startswith("[") else host.rsplit(":", 1)[0]
        if not name:
            return True
        try:
            ipaddress.ip_address(name)
        except ValueError:
            return name.lower() in self.server_names
        return True

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket") and not self._known_host(scope):
            await self._misdirected(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await self._websocket(scope, receive, send)
            return
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        send = _with_security_headers(send)
        path: str = scope["path"]
        service = self._service(scope)
        if service is not None and _grpc_without_trailers(scope):
            await _drain(receive)
            await _plain(send, 415, NO_TRAILERS)
        elif service is not None and (wrong := _wrong_shape(scope)) is not None:
            await _drain(receive)
            await _plain(send, 415, wrong)
        elif service is not None:
            await _call(service, scope, receive, send, self._body_limit(scope))
        elif path.startswith("/hakuriver.") or path.startswith("/grpc."):
            await _plain(send, 404, b"no such service on the dashboard's API\n")
        else:
            await self._static(scope, send)

    def _body_limit(self, scope: Scope) -> int:
        """How much of a call's body to read: STRANGER_BODY_BYTES when the gate refuses its
        token as unauthenticated, which it tells from the headers alone."""
        bearer = bearer_secret(_header(scope, b"authorization"))
        _, refused = self.gate.authorise(scope["path"], bearer)
        return STRANGER_BODY_BYTES if isinstance(refused, Unauthenticated) else MAX_REQUEST_BYTES

    def _service(self, scope: Scope) -> ConnectASGIApplication[Any] | None:
        """The Connect application whose method the path names, if any."""
        return self.services.get(scope["path"].rsplit("/", 1)[0])

    async def _misdirected(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Refuse a request by a name not ours: a Connect call as a Connect error (its
        client then says why), a page with HTTP 421."""
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
        elif self._service(scope) is not None and _connect_call(scope):
            await _drain(receive)
            await _connect_error(scope, send, MISDIRECTED, 403)
        else:
            await _plain(send, 421, f"{MISDIRECTED_MESSAGE}\n".encode())

    async def _static(self, scope: Scope, send: Send) -> None:
        if scope["method"] not in ("GET", "HEAD"):
            await _plain(send, 405, b"method not allowed\n", [(b"allow", b"GET, HEAD")])
            return
        assets = await self.assets.current()
        if not assets:
            await _plain(send, 503, NOT_BUILT)
            return
        path: str = scope["path"]
        asset = assets.get(path)
        if asset is None:
            if path.startswith("/assets/"):
                await _plain(send, 404, b"not found\n")
                return
            asset = assets["/index.html"]  # a page of the app: the router shows it
        body = asset.body
        headers = [
            (b"content-type", asset.content_type.encode()),
            (b"cache-control", asset.cache_control.encode()),
            (b"vary", b"accept-encoding"),
        ]
        if asset.gzipped is not None and "gzip" in _header(scope, b"accept-encoding"):
            body = asset.gzipped
            headers.append((b"content-encoding", b"gzip"))
        headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send(
            {"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body}
        )

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        offered = [p.strip() for p in _header(scope, b"sec-websocket-protocol").split(",")]
        if scope["path"] != SHELL_PATH or SHELL_PROTOCOL not in offered or not _same_origin(scope):
            await send({"type": "websocket.close", "code": 1008})
            return
        bearer = next(
            (p.removeprefix(BEARER_PROTOCOL_PREFIX) for p in offered if p.startswith("bearer.")),
            "",
        )
        if (await receive())["type"] != "websocket.connect":
            return
        await send({"type": "websocket.accept", "subprotocol": SHELL_PROTOCOL})
        await ShellSocket(receive, send).run(
            self.gate.call(SHELL_METHOD, bearer, True).streaming(self.shell.Shell),
            CallContext(_client(scope)),
        )


async def _body(receive: Receive, limit: int) -> bytearray | None:
    """A request's body, read until it ends or passes ``limit``; None: the client went."""
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        body += message.get("body", b"")
        if len(body) > limit or not message.get("more_body"):
            return body


async def _call(
    service: ConnectASGIApplication[Any], scope: Scope, receive: Receive, send: Send, limit: int
) -> None:
    """One Connect call: its body read first, bounded (the runtime would buffer and
    decompress any size before its own check), and the call cancelled when the client goes
    (the runtime notices only when it next sends, so a quiet stream would stay). The body
    must arrive within BODY_SECONDS; the call, once made, has no such bound. A body past
    ``limit`` (a stranger's) is not read further: the call goes on with one that is no
    message, so the gate answers it as it answers any refused call, whatever its body."""
    try:
        async with asyncio.timeout(BODY_SECONDS):
            read = await _body(receive, limit)
    except TimeoutError:
        late = f"request: its body did not arrive within {BODY_SECONDS:g} s"
        await _connect_error(scope, send, {"code": "deadline_exceeded", "message": late}, 504)
        return
    if read is None:
        return
    if len(read) > MAX_REQUEST_BYTES:
        await _connect_error(scope, send, TOO_LARGE, 429)
        return
    body = bytearray(NOT_A_MESSAGE) if len(read) > limit else _one_envelope(scope, read)
    gone = asyncio.Event()
    delivered = False

    async def replay() -> MutableMapping[str, Any]:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": bytes(body), "more_body": False}
        await gone.wait()
        return {"type": "http.disconnect"}

    async def watch() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        gone.set()

    call = asyncio.create_task(service(scope, replay, send))
    watcher = asyncio.create_task(watch())
    try:
        await asyncio.wait({call, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not call.done():
            call.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
    # A call cancelled because its client went is over: the runtime turns the cancellation
    # into ConnectError(canceled), which must not reach the ASGI server (a traceback).
    with contextlib.suppress(asyncio.CancelledError, ConnectError):
        await call


async def _lifespan(receive: Receive, send: Send) -> None:
    """Nothing to set up or tear down: the Host owns the parts the app uses."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def _grpc_code(error: ConnectError) -> grpc.StatusCode:
    """Connect spells one code differently (canceled)."""
    name = error.code.name
    return grpc.StatusCode.CANCELLED if name == "CANCELED" else grpc.StatusCode[name]


def _client(scope: Scope) -> str | None:
    client = scope.get("client")
    return f"{client[0]}:{client[1]}" if client else None


async def _drain(receive: Receive) -> None:
    """Read a refused call's body to its end (up to the limit, for up to DRAIN_SECONDS)
    before answering: hypercorn closes a connection whose request was not all read, and that
    TLS close, racing the client's own, logged an SSL error with a traceback now and then.
    Bounded in time too: a streaming client may keep its body open until it is answered."""
    read = 0
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(DRAIN_SECONDS):
            while read <= MAX_REQUEST_BYTES:
                message = await receive()
                if message["type"] != "http.request" or not message.get("more_body"):
                    return
                read += len(message.get("body", b""))


async def _plain(
    send: Send, status: int, body: bytes, extra: list[tuple[bytes, bytes]] | None = None
) -> None:
    headers = [(b"content-type", b"text/plain; charset=utf-8"), *(extra or [])]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _shell_request(data: bytes | None) -> spb.ShellRequest:
    wrong = InvalidArgument(
        f"the terminal sends binary ShellRequest frames of at most {MAX_SHELL_FRAME} bytes"
    )
    if data is None or len(data) > MAX_SHELL_FRAME:
        raise wrong
    try:
        return spb.ShellRequest.FromString(data)
    except DecodeError:
        raise wrong from None


class ShellSocket:
    """One terminal: WebSocket frames in and out of the ShellService call.

    The socket is read by a task of its own, whatever the call is doing (a write to a
    process that does not read, a feed that failed): the page leaving, a bad frame or a
    backlog past SHELL_BACKLOG ends the session, so the process never outlives its page.
    The call ending its side (its process ended) ends it normally, after its exit code."""

    def __init__(self, receive: Receive, send: Send) -> None:
        self.receive = receive
        self.send = send
        self.incoming: asyncio.Queue[spb.ShellRequest] = asyncio.Queue()
        self.backlog = 0
        self.refused: InvalidArgument | None = None

    async def _read(self) -> None:
        while True:
            message = await self.receive()
            if message["type"] == "websocket.disconnect":
                return
            try:
                request = _shell_request(message.get("bytes"))
            except InvalidArgument as exc:
                self.refused = exc
                return
            self.backlog += request.ByteSize()
            if self.backlog > SHELL_BACKLOG:
                log.warning(
                    "a terminal sent %d bytes its process did not read: closed", self.backlog
                )
                return
            self.incoming.put_nowait(request)

    async def requests(self) -> AsyncIterator[spb.ShellRequest]:
        while True:
            request = await self.incoming.get()
            self.backlog -= request.ByteSize()
            yield request

    async def run(self, call: Callable[..., AsyncIterator[Any]], context: CallContext) -> None:
        forward = asyncio.create_task(self._forward(call(self.requests(), context)))
        reader = asyncio.create_task(self._read())
        try:
            await asyncio.wait({forward, reader}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            # The page went away (or misbehaved): end the call (its finally stops the
            # process); or the call ended: stop reading.
            for task in (forward, reader):
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await forward
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader
        if self.refused is not None:
            await self._close(4000 + status_code(self.refused).value[0], self.refused.message)

    async def _forward(self, responses: AsyncIterator[spb.ShellResponse]) -> None:
        code, reason = 1000, ""
        try:
            async for response in responses:
                await self.send({"type": "websocket.send", "bytes": response.SerializeToString()})
        except ConnectError as exc:
            code, reason = 4000 + _grpc_code(exc).value[0], exc.message
        except Exception:
            log.exception("the terminal session failed")
            code, reason = 1011, "internal error"
        await self._close(code, reason)

    async def _close(self, code: int, reason: str) -> None:
        reason = reason.encode()[:120].decode(errors="ignore")
        with contextlib.suppress(Exception):
            await self.send({"type": "websocket.close", "code": code, "reason": reason})
