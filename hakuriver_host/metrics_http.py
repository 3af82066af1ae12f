"""The /metrics HTTP endpoint, optionally behind a bearer token (auth.metrics_token).

Prometheus sends the token with ``authorization: {credentials_file: ...}`` in its scrape
config. Served from a thread, like prometheus_client's own server, off the event loop.
"""

from __future__ import annotations

import hmac
import logging
import socket
import sys
import threading
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer, _SilentHandler

from hakuriver_common.config import is_loopback

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
log = logging.getLogger(__name__)
POLL_SECONDS = 0.05
# A connection that sends nothing for this long is closed: each holds a thread, and one
# that never sent its request held its thread for ever (a port scan, a stalled client, or
# anyone who can reach the port opening connections until the Host ran out of threads).
READ_SECONDS = 30.0


def _bearer_only(app: WsgiApp, token: str, refused: Callable[[str], None]) -> WsgiApp:
    """Only a scrape with the token gets the metrics; ``refused(peer)`` is told of the others
    (audited: a wrong token is a refusal like any other caller's)."""
    expected = token.encode()

    def guarded(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        # The scheme is case-insensitive (RFC 7235); the token is compared in constant time.
        scheme, _, given = environ.get("HTTP_AUTHORIZATION", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), expected):
            return app(environ, start_response)
        refused(str(environ.get("REMOTE_ADDR", "")))
        start_response(
            "401 Unauthorized",
            [("Content-Type", "text/plain"), ("WWW-Authenticate", 'Bearer realm="metrics"')],
        )
        return [b"a bearer token is required (auth.metrics_token)\n"]

    return guarded


def _once_ready(app: WsgiApp, ready: threading.Event) -> WsgiApp:
    """503 until ``ready`` is set (the Host has loaded its state): before, its gauges read 0
    (no task running, none queued, no node), and a scrape would store those false zeros.
    A scrape that fails is what Prometheus expects of a target starting."""

    def gated(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if ready.is_set():
            return app(environ, start_response)
        start_response("503 Service Unavailable", [("Content-Type", "text/plain")])
        return [b"the Host is starting: its metrics are served once it has loaded its state\n"]

    return gated


def _at_metrics_only(app: WsgiApp) -> WsgiApp:
    """prometheus_client answers every path with the metrics: only /metrics is served, so
    a wrong scrape path (or a probe of the port) is told so instead of looking right."""

    def routed(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO", "") in ("/metrics", "/metrics/"):
            return app(environ, start_response)
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found: the metrics are at /metrics\n"]

    return routed


def _head_as_get(app: WsgiApp) -> WsgiApp:
    """HEAD answered as GET, with the body's length and no body: prometheus_client answers
    405 to it, so a load balancer's or monitor's health check by HEAD found the target down
    while every scrape worked. ``Allow`` names HEAD too."""

    def answered(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        head = environ.get("REQUEST_METHOD") == "HEAD"
        answer: list[Any] = []
        body = b"".join(
            app(
                {**environ, "REQUEST_METHOD": "GET"} if head else environ,
                lambda status, headers, *_: answer.extend((status, headers)),
            )
        )
        status, headers = answer
        headers = [
            (name, "OPTIONS,GET,HEAD" if name.lower() == "allow" else value)
            for name, value in headers
            if name.lower() != "content-length"
        ]
        start_response(status, [*headers, ("Content-Length", str(len(body)))])
        return [] if head else [body]

    return answered


def serve_metrics(
    registry: CollectorRegistry,
    host: str,
    port: int,
    token: str,
    ready: threading.Event,
    refused: Callable[[str], None] = lambda peer: None,
) -> WSGIServer:
    """Serve ``registry`` on host:port once ``ready`` is set, 503 until then (token:
    required as a bearer token, ``refused`` called from the server's thread with the peer
    of each scrape without it); returns the server, whose ``shutdown`` stops it and closes
    its socket."""

    class _Server(ThreadingWSGIServer):
        address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

        def shutdown(self) -> None:
            super().shutdown()
            self.server_close()  # free the port now, not when the object is collected

        def handle_error(self, request: Any, client_address: Any) -> None:
            if isinstance(sys.exception(), OSError):
                return  # the client went away or sent nothing in time: no traceback
            super().handle_error(request, client_address)

    class _Handler(_SilentHandler):
        timeout = READ_SECONDS

    app: WsgiApp = _once_ready(make_wsgi_app(registry), ready)
    if token:
        app = _bearer_only(app, token, refused)
    elif not is_loopback(host):
        log.warning(
            "/metrics on %s is open to anyone who can reach it: set auth.metrics_token", host
        )
    app = _head_as_get(_at_metrics_only(app))
    server = make_server(host, port, app, _Server, handler_class=_Handler)
    # shutdown() waits for the serving loop's next poll: a short poll keeps a Host's stop quick.
    threading.Thread(
        target=server.serve_forever, args=(POLL_SECONDS,), name="metrics-http", daemon=True
    ).start()
    return server
