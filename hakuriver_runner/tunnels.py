"""SSH tunnels: bytes between the Host's SSH proxy and a VPS's sshd on this runner.

A VPS's sshd listens on loopback only, so the Runner relays each SSH connection: on a
connection it dials to the Host's SSH proxy port (proven the tunnel's with its one-time
secret; plain TCP, as the client's: the bytes are SSH's own encrypted stream), or, when it
cannot, as TunnelData messages on the Connect stream. The session hands tunnel
messages over in arrival order, which keeps each tunnel's bytes in order.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from hakuriver_common import tunnel_proof
from hakuriver_common.addresses import bare
from hakuriver_common.proto.hakuriver.v1 import runner_service_pb2 as rpb
from hakuriver_common.socket_copy import LineSocket, connect, copy, until_first
from hakuriver_runner.outbox import Outbox

log = logging.getLogger(__name__)

TUNNEL_CHUNK = 64 * 1024
CONNECT_SECONDS = 5
# Bytes for an sshd that it has not read yet, at most: one that stops reading (its VPS
# paused by its owner, who keeps sending) has its tunnel closed rather than the Runner's
# memory grow without bound.
TUNNEL_BACKLOG = 4 * 1024 * 1024
# The Host's handshake lines' most.
LINE_LIMIT = 4096


@dataclass(frozen=True)
class _Tunnel:
    pump: asyncio.Task[None]
    # The sshd's side when the bytes ride the stream; a dialled tunnel's pump owns its
    # sockets and closes them once its copies have returned.
    writer: asyncio.StreamWriter | None = None

    def end(self) -> None:
        self.pump.cancel()
        if self.writer is not None:
            self.writer.close()


def _closed(tunnel_id: int, error: str = "") -> rpb.ConnectRequest:
    return rpb.ConnectRequest(tunnel_close=rpb.TunnelClose(tunnel_id=tunnel_id, error=error))


async def _answer(host: LineSocket) -> bytes:
    """The Host's next line; one past LINE_LIMIT is not the Host's (the port it dialled
    is something else's): ConnectionError, as for a Host it cannot reach."""
    try:
        return await host.readline(LINE_LIMIT)
    except ValueError as exc:
        raise ConnectionError(f"not the Host's SSH proxy: {exc}") from None


class Refused(Exception):
    """The Host answered a dial with ERROR: no tunnel waits for it there (its client gave up
    meanwhile, or it ended), so it is carried nowhere, not on the stream either."""


@dataclass(frozen=True)
class HostDial:
    """How this Runner reaches the Host's SSH proxy port: at the address it reaches the
    Host's gRPC port by (an IPv6 one with or without brackets)."""

    address: str

    async def dial(self, request: rpb.TunnelOpen) -> tuple[socket.socket, bytes]:
        """A connection to the Host proven to be ``request``'s tunnel, and what the Host
        sent after its answer (the client's first bytes, already). Refused: the Host
        refused it; OSError: it cannot be reached."""
        sock = await connect(bare(self.address), request.dial_port)
        host = LineSocket(sock)
        try:
            await host.send(f"TUNNEL {request.tunnel_id}\n".encode())
            said = (await _answer(host)).decode(errors="replace").split()
            if len(said) != 2 or said[0] != "CHALLENGE":
                raise ConnectionError(f"the Host answered {' '.join(said)!r}, not a challenge")
            proof = tunnel_proof.proof(request.dial_secret, request.tunnel_id, said[1])
            await host.send(f"{proof}\n".encode())
            answer = await _answer(host)
            if answer.startswith(b"ERROR "):
                raise Refused(answer.removeprefix(b"ERROR ").decode(errors="replace").strip())
            if answer != b"SUCCESS\n":
                raise ConnectionError(answer.decode(errors="replace").strip() or "it closed")
        except BaseException:
            sock.close()
            raise
        return sock, host.rest


class Tunnels:
    def __init__(
        self, outbox: Outbox, ssh_port: Callable[[int], int], host: HostDial | None = None
    ) -> None:
        """``ssh_port``: the sshd port of a VPS task running here (0: none). ``host``: how
        to dial the Host for a tunnel's bytes (None: always on the stream)."""
        self._outbox = outbox
        self._ssh_port = ssh_port
        self._host = host
        self._open: dict[int, _Tunnel] = {}
        # The tunnels being opened (connecting to the sshd, dialling the Host), by id.
        self._opening: dict[int, asyncio.Task[Any]] = {}

    async def open(self, request: rpb.TunnelOpen) -> None:
        """Connect to the sshd of a VPS running here, and only that: whatever the Host
        asks, no tunnel leads anywhere else on this node. The Host closing the tunnel
        meanwhile cancels the opening (its connections closed)."""
        opening = asyncio.current_task()
        if opening is not None:
            self._opening[request.tunnel_id] = opening
        try:
            await self._connect(request)
        finally:
            if self._opening.get(request.tunnel_id) is opening:
                del self._opening[request.tunnel_id]

    async def _connect(self, request: rpb.TunnelOpen) -> None:
        port = self._ssh_port(request.task_id)
        if not port or port != request.port:
            error = f"task {request.task_id} is not a VPS with sshd on port {request.port} here"
            await self._outbox.send(_closed(request.tunnel_id, error))
            return
        try:
            sshd = await asyncio.wait_for(connect("127.0.0.1", request.port), CONNECT_SECONDS)
        except (OSError, TimeoutError) as exc:
            error = f"cannot reach the SSH server of task {request.task_id}: {exc}"
            await self._outbox.send(_closed(request.tunnel_id, error))
            return
        try:
            host = await self._dial(request)
        except Refused as exc:
            sshd.close()
            error = f"the Host refused the tunnel's connection: {exc}"
            await self._outbox.send(_closed(request.tunnel_id, error))
            return
        except BaseException:
            sshd.close()
            raise
        if host is not None:
            pump = asyncio.create_task(self._splice(request.tunnel_id, sshd, *host))
            self._opened(request.tunnel_id, _Tunnel(pump))
            return
        try:
            reader, writer = await asyncio.open_connection(sock=sshd, limit=TUNNEL_CHUNK)
        except BaseException:
            sshd.close()
            raise
        pump = asyncio.create_task(self._pump(request.tunnel_id, reader, writer))
        self._opened(request.tunnel_id, _Tunnel(pump, writer))
        await self._outbox.send(
            rpb.ConnectRequest(tunnel_opened=rpb.TunnelOpened(tunnel_id=request.tunnel_id))
        )

    async def _dial(self, request: rpb.TunnelOpen) -> tuple[socket.socket, bytes] | None:
        """The Host's connection for the tunnel's bytes; None: they go on the stream (the
        Host did not ask, or this Runner cannot reach its SSH proxy port). Refused: they go
        nowhere."""
        if self._host is None or not request.dial_port or not request.dial_secret:
            return None
        try:
            return await asyncio.wait_for(self._host.dial(request), CONNECT_SECONDS)
        except (OSError, TimeoutError) as exc:
            log.warning(
                "cannot reach the Host's SSH proxy at %s:%d (%s): tunnel %d goes on the "
                "stream, slower",
                self._host.address,
                request.dial_port,
                exc or "timed out",
                request.tunnel_id,
            )
            return None

    async def _splice(
        self, tunnel_id: int, sshd: socket.socket, host: socket.socket, first: bytes
    ) -> None:
        """Bytes both ways between the sshd and the Host's connection, until either ends."""
        try:
            await until_first([copy(sshd, host), copy(host, sshd, first)])
        finally:
            self._open.pop(tunnel_id, None)
            sshd.close()
            host.close()

    def write(self, data: rpb.TunnelData) -> Coroutine[Any, Any, None] | None:
        """Hand the bytes to the sshd; the tunnel's close to send (and spawn) when the sshd
        has left more than TUNNEL_BACKLOG unread."""
        tunnel = self._open.get(data.tunnel_id)
        if tunnel is None or tunnel.writer is None:
            return None
        tunnel.writer.write(data.data)
        if tunnel.writer.transport.get_write_buffer_size() <= TUNNEL_BACKLOG:
            return None
        self.close(data.tunnel_id)
        error = f"the SSH server left more than {TUNNEL_BACKLOG} bytes unread (is its VPS paused?)"
        return self._outbox.send(_closed(data.tunnel_id, error))

    def _opened(self, tunnel_id: int, tunnel: _Tunnel) -> None:
        """From opening to open, in one step: a close finds it in one place or the other."""
        self._opening.pop(tunnel_id, None)
        self._open[tunnel_id] = tunnel

    def close(self, tunnel_id: int) -> None:
        """The Host closed the tunnel (while it was still being opened, too)."""
        opening = self._opening.pop(tunnel_id, None)
        if opening is not None:
            opening.cancel()
        tunnel = self._open.pop(tunnel_id, None)
        if tunnel is not None:
            tunnel.end()

    def close_all(self) -> None:
        """The stream is gone, and every tunnel with it."""
        for opening in self._opening.values():
            opening.cancel()
        self._opening.clear()
        for tunnel in self._open.values():
            tunnel.end()
        self._open.clear()

    async def _pump(
        self, tunnel_id: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            while data := await reader.read(TUNNEL_CHUNK):
                await self._outbox.send(
                    rpb.ConnectRequest(tunnel_data=rpb.TunnelData(tunnel_id=tunnel_id, data=data))
                )
        except OSError:
            pass
        if self._open.pop(tunnel_id, None) is not None:
            writer.close()
            await self._outbox.send(_closed(tunnel_id))
