"""A loopback TCP proxy that passes, drops or stalls every byte on command.

Put it between a Runner and the Host's gRPC port (the Runner dials the proxy's port through
``HAKURIVER_NETWORK__HOST_PORT``; TLS passes through untouched, the certificate names
127.0.0.1 either way), or between a Runner and the Docker daemon's unix socket (the Runner
dials ``DOCKER_HOST=tcp://127.0.0.1:PORT``: the daemon away for that Runner alone):

- ``pass``: bytes flow both ways;
- ``drop``: every open connection is closed and new ones are refused (the listening socket
  is closed, so a connect gets ECONNREFUSED), as when a link or a middlebox resets;
- ``stall``: connections stay open and new ones are accepted, but no byte moves in either
  direction (held, not lost), as when a link goes dark without a reset; back to ``pass``,
  the held bytes flow on.

It runs an asyncio loop in a thread of its own, so synchronous tests drive it directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from typing import Any, Literal

Mode = Literal["pass", "drop", "stall"]
CHUNK = 65536


class ChaosProxy:
    def __init__(
        self, target_host: str, target_port: int, listen_port: int = 0, target_socket: str = ""
    ) -> None:
        self.target = (target_host, target_port)
        # A unix socket to forward to instead of ``target`` (the Docker daemon's).
        self.target_socket = target_socket
        self.port = listen_port or _free_port()
        self.mode: Mode = "pass"
        self.connections_accepted = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._flowing: asyncio.Event | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._pumps: set[asyncio.Task[None]] = set()

    # ----- control (from any thread) ----------------------------------------------------

    def start(self) -> ChaosProxy:
        self._thread.start()
        self._call(self._start())
        return self

    def set_mode(self, mode: Mode) -> None:
        """Switch mode; returns once the switch is in effect (connections closed, socket
        closed or reopened)."""
        self._call(self._set_mode(mode))

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        self._call(self._set_mode("drop"))
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    def open_connections(self) -> int:
        return len(self._writers) // 2

    def _call(self, coro: Coroutine[Any, Any, None]) -> None:
        asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    # ----- inside the loop --------------------------------------------------------------

    async def _start(self) -> None:
        self._flowing = asyncio.Event()
        self._flowing.set()
        await self._listen()

    async def _listen(self) -> None:
        if self._server is None:
            self._server = await asyncio.start_server(
                self._accept, "127.0.0.1", self.port, reuse_address=True
            )

    async def _set_mode(self, mode: Mode) -> None:
        assert self._flowing is not None
        self.mode = mode
        if mode == "drop":
            self._flowing.set()
            if self._server is not None:
                self._server.close()
                self._server = None
            for writer in list(self._writers):
                _abort(writer)
            self._writers.clear()
            for pump in list(self._pumps):
                pump.cancel()
            return
        if mode == "stall":
            self._flowing.clear()
        else:
            self._flowing.set()
        await self._listen()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.mode == "drop":
            _abort(writer)
            return
        self.connections_accepted += 1
        try:
            if self.target_socket:
                up_reader, up_writer = await asyncio.open_unix_connection(self.target_socket)
            else:
                up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            _abort(writer)
            return
        self._writers.update((writer, up_writer))
        pumps = [
            asyncio.ensure_future(self._pump(reader, up_writer, writer)),
            asyncio.ensure_future(self._pump(up_reader, writer, up_writer)),
        ]
        self._pumps.update(pumps)
        for pump in pumps:
            pump.add_done_callback(self._pumps.discard)

    async def _pump(
        self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, own: asyncio.StreamWriter
    ) -> None:
        assert self._flowing is not None
        try:
            while True:
                # Stalled: neither read (so the sender's window fills) nor forward.
                await self._flowing.wait()
                data = await source.read(CHUNK)
                if not data:
                    break
                await self._flowing.wait()
                sink.write(data)
                await sink.drain()
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            for writer in (sink, own):
                self._writers.discard(writer)
                _abort(writer)


def _abort(writer: asyncio.StreamWriter) -> None:
    """Close at once with a reset (no lingering half-close)."""
    with contextlib.suppress(Exception):
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def chaos_proxy(
    target_host: str, target_port: int, target_socket: str = ""
) -> Iterator[ChaosProxy]:
    proxy = ChaosProxy(target_host, target_port, target_socket=target_socket).start()
    try:
        yield proxy
    finally:
        proxy.stop()
