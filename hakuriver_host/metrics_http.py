"""The /metrics HTTP endpoint, optionally behind a bearer token (auth.metrics_token).

Prometheus sends the token with ``authorization: {credentials_file: ...}`` in its scrape
config. Served from a thread, like prometheus_client's own server, off the event loop.
"""

from __future__ import annotations

import hmac
import socket
import threading
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer, _SilentHandler

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def _bearer_only(app: WsgiApp, token: str) -> WsgiApp:
    expected = f"Bearer {token}".encode()

    def guarded(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        given = environ.get("HTTP_AUTHORIZATION", "").encode()
        if hmac.compare_digest(given, expected):
            return app(environ, start_response)
        start_response(
            "401 Unauthorized",
            [("Content-Type", "text/plain"), ("WWW-Authenticate", 'Bearer realm="metrics"')],
        )
        return [b"a bearer token is required (auth.metrics_token)\n"]

    return guarded


def serve_metrics(registry: CollectorRegistry, host: str, port: int, token: str) -> WSGIServer:
    """Serve ``registry`` on host:port (token: required as a bearer token); returns the
    server, whose ``shutdown`` stops it."""

    class _Server(ThreadingWSGIServer):
        address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

    app: WsgiApp = make_wsgi_app(registry)
    if token:
        app = _bearer_only(app, token)
    server = make_server(host, port, app, _Server, handler_class=_SilentHandler)
    threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
    return server
