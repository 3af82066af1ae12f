"""Calls to the Host over the Connect protocol on the dashboard's port.

Why: a Python gRPC client loads grpc, and asyncio with it, about 55 ms before its first byte;
this one needs only the standard library's http.client and ssl besides protobuf, which the
messages need anyway. It speaks Connect's unary calls (``application/proto``) and server
streams (``application/connect+proto``: enveloped messages, then an end-of-stream JSON)
over HTTP/1.1 on one kept-alive connection; a call made while a stream is still being read
(health --watch reads the readings once its watch is in place) takes a new one, the stream
keeping its own until it ends. The Host serves the same servicers there, behind
the same authentication, authorisation table and errors (hakuriver_host/connect_bridge.py).

Client and bidirectional streams, which Connect cannot carry over HTTP/1.1, go over gRPC;
so does every call when the first connection cannot be made (a dashboard turned off,
another port, a firewall): the request was not sent, so nothing is done twice.
"""

from __future__ import annotations

import http.client
import importlib
import json
import socket
import ssl
import struct
import time
import weakref
from collections.abc import Callable, Iterator
from typing import Any

from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass

from hakuriver_cli.call_error import CallError, Status
from hakuriver_cli.link import Link, proto_module

# Longest wait for the connection (TCP and TLS) before the calls go over gRPC instead.
CONNECT_SECONDS = 2.0
# A connection idle this long is not reused: the Host's web server closes idle ones after
# 5 s, and a request sent as it closes would be lost without an answer.
IDLE_SECONDS = 1.0
END_STREAM = 0x02
COMPRESSED = 0x01
# Connect's mapping of an HTTP status without a Connect error body to a code.
HTTP_STATUS = {
    400: Status.INTERNAL,
    401: Status.UNAUTHENTICATED,
    403: Status.PERMISSION_DENIED,
    404: Status.UNIMPLEMENTED,
    429: Status.UNAVAILABLE,
    502: Status.UNAVAILABLE,
    503: Status.UNAVAILABLE,
    504: Status.UNAVAILABLE,
}


class _NotConnected(Exception):
    """The connection could not be made; the request was not sent."""


def _status(code: object) -> Status:
    name = str(code).upper()
    if name == "CANCELED":
        return Status.CANCELLED
    return Status.__members__.get(name, Status.UNKNOWN)


def _connect_error(payload: bytes, http_status: int = 0) -> CallError:
    """The error in a Connect error body (unary) or end-of-stream message's ``error``."""
    try:
        found = json.loads(payload)
    except ValueError:
        found = None
    if isinstance(found, dict) and isinstance(found.get("error"), dict):
        found = found["error"]
    if isinstance(found, dict) and "code" in found:
        return CallError(_status(found["code"]), str(found.get("message", "")))
    text = payload.decode("utf-8", "replace").strip()
    return CallError(HTTP_STATUS.get(http_status, Status.UNKNOWN), text or f"HTTP {http_status}")


class _Connection(http.client.HTTPConnection):
    """HTTP/1.1, over TLS when given a context, checking the certificate for
    ``server_name`` (tls.server_name when the certificate names another address)."""

    def __init__(self, host: str, port: int, tls: ssl.SSLContext | None, server_name: str) -> None:
        super().__init__(host, port, timeout=CONNECT_SECONDS)
        self._tls = tls
        self._server_name = server_name

    def connect(self) -> None:
        sock = socket.create_connection((self.host, self.port), self.timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = (
            self._tls.wrap_socket(sock, server_hostname=self._server_name) if self._tls else sock
        )


class ConnectLink:
    def __init__(
        self,
        host: str,
        port: int,
        tls: ssl.SSLContext | None,
        server_name: str,
        token: str,
        grpc_link: Callable[[], Link],
    ) -> None:
        """``grpc_link`` opens the gRPC link used for what Connect does not carry."""
        self.address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self._host, self._port, self._tls, self._server_name = host, port, tls, server_name
        self._headers = {"Connect-Protocol-Version": "1"}
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        self._grpc_link = grpc_link
        self._grpc: Link | None = None
        self._conn: _Connection | None = None
        self._reading: http.client.HTTPResponse | None = None
        self._stream: weakref.ref[_Stream] | None = None  # the last stream, while in use
        self._used = 0.0
        self.answered = False  # the Host answered here (an error too): it serves this port
        self.over_grpc = False  # the first connection failed: every call goes over gRPC

    def stub(self, service: str) -> Any:
        return _Stub(self, service)

    def grpc(self) -> Link:
        if self._grpc is None:
            self._grpc = self._grpc_link()
        return self._grpc

    def close(self) -> None:
        self.drop()
        if self._grpc is not None:
            self._grpc.close()

    def drop(self) -> None:
        """Close the kept-alive connection (a broken one)."""
        if self._conn is not None:
            self._conn.close()
        self._conn = self._reading = None

    def release(self, conn: _Connection) -> None:
        """Close ``conn``, a call's (a stream ended early, or broken); the next call takes a
        new connection if it was the kept-alive one."""
        conn.close()
        if conn is self._conn:
            self._conn = self._reading = None

    def ended(self, conn: _Connection) -> None:
        """A stream on ``conn`` was read to its end: close it unless it is kept alive."""
        if conn is not self._conn:
            conn.close()

    def streaming(self, stream: _Stream) -> None:
        """``stream`` reads the last call's answer: while its reader keeps it, a new call
        leaves it the connection."""
        self._stream = weakref.ref(stream)

    def _connection(self, timeout: float | None) -> _Connection:
        stale = time.monotonic() - self._used > IDLE_SECONDS
        unread = self._reading is not None and not self._reading.isclosed()
        if unread and self._stream is not None and self._stream() is not None:
            # A stream still in use keeps its connection (closed when it ends or is
            # cancelled); this call takes a new one.
            self._conn = self._reading = None
        elif unread or stale:
            self.drop()  # a stream left early (dropped by its reader), or an idle connection
        if self._conn is None:
            self._conn = _Connection(self._host, self._port, self._tls, self._server_name)
        if self._conn.sock is None:
            try:
                self._conn.connect()
            except OSError as exc:
                self.drop()
                if not self.answered:
                    raise _NotConnected from exc
                raise self._failure(exc) from None
        self._conn.sock.settimeout(timeout)
        return self._conn

    def send(
        self, path: str, body: bytes, content_type: str, timeout: float | None
    ) -> tuple[http.client.HTTPResponse, _Connection]:
        """POST ``body``; the response once its head is in (a non-200 one raised), and the
        connection it is read from."""
        headers = {**self._headers, "Content-Type": content_type}
        if timeout is not None:
            headers["Connect-Timeout-Ms"] = str(max(1, int(timeout * 1000)))
        conn = self._connection(timeout)
        try:
            conn.request("POST", path, body, headers)
            response = conn.getresponse()
            self._reading = response
            self.answered = True
            if response.status != 200:
                payload = response.read()
                if "html" in (response.getheader("Content-Type") or "").lower():
                    raise self._not_the_dashboard(response)
                raise _connect_error(payload, response.status)
        except (OSError, http.client.HTTPException) as exc:
            self.drop()
            raise self._failure(exc) from None
        finally:
            self._used = time.monotonic()
        return response, conn

    def read(
        self, conn: _Connection, response: http.client.HTTPResponse, size: int | None = None
    ) -> bytes:
        """``size`` bytes of the body read from ``conn`` (fewer only at its end); all the
        rest when None."""
        data = b""
        try:
            if size is None:
                data = response.read()
            while size is not None and len(data) < size:
                more = response.read(size - len(data))
                if not more:
                    break
                data += more
        except (OSError, http.client.HTTPException) as exc:
            self.release(conn)
            raise self._failure(exc) from None
        finally:
            self._used = time.monotonic()
        return data

    def _speaks_tls(self) -> bool:
        """Whether the port completes a TLS handshake: a TLS port closes a plain HTTP request
        unanswered, as a Host that stops mid-call does, and only this tells them apart."""
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        try:
            with (
                socket.create_connection((self._host, self._port), CONNECT_SECONDS) as sock,
                context.wrap_socket(sock),
            ):
                return True
        except OSError:
            return False

    def _not_the_dashboard(self, response: http.client.HTTPResponse) -> CallError:
        """An HTML page, which the Host's API never answers with: another web server on
        the port (printed whole, its page was the error)."""
        said = f"HTTP {response.status} {response.reason}".strip()
        return CallError(
            HTTP_STATUS.get(response.status, Status.UNKNOWN),
            said,
            f"{self.address} answered {said} with a web page, not as the Host's dashboard "
            "port: is dashboard.port the one the Host's config sets?",
        )

    def _failure(self, exc: Exception) -> CallError:
        if isinstance(exc, TimeoutError):
            return CallError(Status.DEADLINE_EXCEEDED, "timed out")
        if isinstance(exc, ConnectionRefusedError):
            return CallError(
                Status.UNAVAILABLE,
                str(exc),
                f"cannot reach the host at {self.address} (is hakuriver.host running?)",
            )
        if (
            self._tls is None
            and not self.answered
            and isinstance(exc, http.client.BadStatusLine)
            and self._speaks_tls()
        ):
            return CallError(
                Status.UNAVAILABLE,
                str(exc),
                f"the host's dashboard at {self.address} did not answer plain HTTP: it "
                "expects TLS (remove dashboard.plaintext from the config)",
            )
        if isinstance(exc, http.client.RemoteDisconnected | http.client.IncompleteRead):
            when = (
                "without answering"
                if isinstance(exc, http.client.RemoteDisconnected)
                else "in the middle of its answer"
            )
            return CallError(
                Status.UNAVAILABLE,
                str(exc),
                f"the host at {self.address} closed the connection {when} "
                "(did hakuriver.host stop or restart?)",
            )
        return CallError(Status.UNAVAILABLE, f"the connection to {self.address} broke: {exc!r}")


class _Stream:
    """A server stream's responses; ``cancel`` ends it early (closing the connection)."""

    def __init__(
        self,
        link: ConnectLink,
        sent: tuple[http.client.HTTPResponse, _Connection],
        message: type[Message],
    ) -> None:
        self._link, self._message = link, message
        self._response, self._conn = sent
        self._done = False

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        if self._done:
            raise StopIteration
        head = self._link.read(self._conn, self._response, 5)
        if len(head) < 5:
            self.cancel()
            raise CallError(Status.UNAVAILABLE, f"the stream from {self._link.address} broke")
        flags, size = struct.unpack(">BI", head)
        data = self._link.read(self._conn, self._response, size)
        if len(data) < size:
            self.cancel()
            raise CallError(Status.UNAVAILABLE, f"the stream from {self._link.address} broke")
        if flags & END_STREAM:
            self._done = True
            self._link.read(self._conn, self._response)  # the body's end: the connection is free
            self._link.ended(self._conn)
            end = _connect_error(data) if b'"error"' in data else None
            if end is not None:
                raise end
            raise StopIteration
        if flags & COMPRESSED:
            self.cancel()
            raise CallError(Status.INTERNAL, "the Host sent a compressed message unasked")
        return self._message.FromString(data)

    def cancel(self) -> None:
        if not self._done:
            self._done = True
            self._link.release(self._conn)


class _Stub:
    def __init__(self, link: ConnectLink, service: str) -> None:
        self._link = link
        self._service = service
        module = importlib.import_module(proto_module(service, "_pb2"))
        self._descriptor = module.DESCRIPTOR.services_by_name[service]

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = self._descriptor.methods_by_name[name]
        path = f"/{self._descriptor.full_name}/{name}"
        message = GetMessageClass(method.output_type)
        link = self._link

        def over_grpc(request: Any, timeout: float | None = None) -> Any:
            return getattr(link.grpc().stub(self._service), name)(request, timeout=timeout)

        if method.client_streaming:
            return over_grpc

        def call(request: Message, timeout: float | None = None) -> Any:
            if not link.over_grpc:
                try:
                    return _call(link, path, request, message, method.server_streaming, timeout)
                except _NotConnected:
                    link.over_grpc = True
            return over_grpc(request, timeout)

        return call


def _call(
    link: ConnectLink,
    path: str,
    request: Message,
    message: type[Message],
    streaming: bool,
    timeout: float | None,
) -> Any:
    body = request.SerializeToString()
    if not streaming:
        response, conn = link.send(path, body, "application/proto", timeout)
        return message.FromString(link.read(conn, response))
    envelope = struct.pack(">BI", 0, len(body)) + body
    stream = _Stream(link, link.send(path, envelope, "application/connect+proto", timeout), message)
    link.streaming(stream)
    return stream
