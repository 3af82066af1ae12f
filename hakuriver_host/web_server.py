"""Serves the dashboard's ASGI application with uvicorn, inside the Host's event loop.

The Host binds the socket itself (a taken port is one clear line, and the Host stops before
starting anything else), then hands it to uvicorn without uvicorn's signal handling or
process lifecycle: the Host owns both.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any

import uvicorn

log = logging.getLogger(__name__)

# Seconds open responses (a followed log) get to finish when the Host stops.
GRACE_SECONDS = 1
MAX_WEBSOCKET_FRAME = 1024 * 1024


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port (OSError when it is taken or not available)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(512)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


class WebServer:
    def __init__(
        self, app: Any, sock: socket.socket, certfile: str = "", keyfile: str = ""
    ) -> None:
        """HTTPS when ``certfile`` and ``keyfile`` are given, plain HTTP otherwise."""
        self.socket = sock
        self.port = int(sock.getsockname()[1])
        self.tls = bool(certfile)
        config = uvicorn.Config(
            app,
            lifespan="off",
            log_config=None,
            access_log=False,
            ws="websockets-sansio",
            ws_max_size=MAX_WEBSOCKET_FRAME,
            timeout_graceful_shutdown=GRACE_SECONDS,
            ssl_certfile=certfile or None,
            ssl_keyfile=keyfile or None,
            server_header=False,
        )
        config.load()
        self._server = uvicorn.Server(config)
        self._server.lifespan = config.lifespan_class(config)
        self._ticker: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self._server.startup(sockets=[self.socket])
        self._ticker = asyncio.create_task(self._server.main_loop())

    async def stop(self) -> None:
        if self._ticker is None:  # never started (the Host failed to start)
            self.socket.close()
            return
        self._server.should_exit = True
        await self._ticker
        await self._server.shutdown(sockets=[self.socket])
