"""Serves the dashboard's ASGI application with Hypercorn, inside the Host's event loop.

Hypercorn speaks HTTP/2 over TLS (ALPN), so a browser multiplexes every open stream of
every dashboard tab on one connection; over HTTP/1.1 a browser keeps at most six
connections to a host, and each followed log or watch holds one.

The Host binds the socket itself (a taken port is one clear line, and the Host stops before
starting anything else) and hands Hypercorn a duplicate of it; Hypercorn never installs
signal handlers here: the Host owns its process and says when to stop.

Anybody who reaches the port may connect, so no connection waits long for bytes that are not
a request in progress: its TLS handshake gets HANDSHAKE_SECONDS, and a connection with no
request open (just accepted, between requests, or still sending a request's headers, however
slowly) is closed after KEEP_ALIVE_SECONDS. There is no read timeout (Hypercorn's would end a
stream whose client sends nothing, as a followed log's does for hours): a request's body has
its own bound in web_app.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from typing import Any

from hypercorn.asyncio import serve
from hypercorn.config import Config as HypercornConfig

log = logging.getLogger(__name__)

# Seconds open responses (a followed log) get to finish when the Host stops.
GRACE_SECONDS = 1.0
MAX_WEBSOCKET_MESSAGE = 1024 * 1024
BACKLOG = 512
# Beyond the grace, how long stopping may wait for Hypercorn before cancelling it.
STOP_SECONDS = 2.0
# A TLS handshake's most (Hypercorn's default, 60 s, let a silent connection stay a minute).
HANDSHAKE_SECONDS = 10.0
# A connection with no request open is closed after this: idle between requests, or still
# sending a request's headers (Hypercorn does not restart it on each byte that arrives).
KEEP_ALIVE_SECONDS = 5.0


def bind(host: str, port: int) -> socket.socket:
    """A socket bound to host:port (OSError, with the reason, when it is taken or not
    available). SO_REUSEADDR as a server has it: the connections of a Host that just
    stopped (TIME_WAIT) must not block its restart, while a live listener still does."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # As Hypercorn sets on sockets it binds itself; accepted connections inherit it, so a
        # stream's small writes go out at once instead of waiting for the client's ACK.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


class WebServer:
    def __init__(
        self, app: Any, sock: socket.socket, certfile: str = "", keyfile: str = ""
    ) -> None:
        """Listens on ``sock`` (bound); HTTPS (HTTP/2 and HTTP/1.1) when ``certfile`` and
        ``keyfile`` are given, plain HTTP/1.1 otherwise."""
        sock.listen(BACKLOG)
        self.app = app
        self.socket = sock
        self.port = int(sock.getsockname()[1])
        self.tls = bool(certfile)
        config = HypercornConfig()
        if self.tls:
            config.certfile, config.keyfile = certfile, keyfile
        config.graceful_timeout = GRACE_SECONDS
        config.ssl_handshake_timeout = HANDSHAKE_SECONDS
        config.keep_alive_timeout = KEEP_ALIVE_SECONDS
        config.read_timeout = None
        config.websocket_max_message_size = MAX_WEBSOCKET_MESSAGE
        config.include_server_header = False
        config.accesslog = None
        config.errorlog = log
        self.config = config
        self._stop = asyncio.Event()
        self._serving: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.config.bind = [f"fd://{os.dup(self.socket.fileno())}"]
        self.socket.close()  # Hypercorn listens on the duplicate
        self._serving = asyncio.create_task(
            serve(self.app, self.config, shutdown_trigger=self._stop.wait, mode="asgi")
        )
        self._serving.add_done_callback(self._ended)

    def _ended(self, serving: asyncio.Task[None]) -> None:
        if not serving.cancelled() and serving.exception() is not None:
            log.warning("the dashboard stopped serving: %s", serving.exception())

    async def stop(self) -> None:
        if self._serving is None:  # never started (the Host failed to start)
            self.socket.close()
            return
        self._stop.set()
        # Hypercorn waits for open connections to close; bounded, as a client that stops
        # reading (or Python >= 3.12's Server.wait_closed, hypercorn#308) can hold it.
        done, _ = await asyncio.wait({self._serving}, timeout=GRACE_SECONDS + STOP_SECONDS)
        if not done:
            self._serving.cancel()
            log.warning("the dashboard's connections did not close in time: cancelled")
            await asyncio.gather(self._serving, return_exceptions=True)
