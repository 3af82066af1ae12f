"""SSH tunnels: bytes between the Host's SSH proxy and a VPS's sshd on this runner.

A VPS's sshd listens on loopback only, so the Runner relays each SSH connection as
TunnelData messages on the Connect stream. The session hands tunnel messages over in
arrival order, which keeps each tunnel's bytes in order.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from hakuriver_common.proto.hakuriver.v1 import runner_service_pb2 as rpb
from hakuriver_runner.outbox import Outbox

TUNNEL_CHUNK = 64 * 1024
CONNECT_SECONDS = 5
# Bytes for an sshd that it has not read yet, at most: one that stops reading (its VPS
# paused by its owner, who keeps sending) has its tunnel closed rather than the Runner's
# memory grow without bound.
TUNNEL_BACKLOG = 4 * 1024 * 1024


@dataclass(frozen=True)
class _Tunnel:
    writer: asyncio.StreamWriter
    pump: asyncio.Task[None]

    def end(self) -> None:
        self.pump.cancel()
        self.writer.close()


def _closed(tunnel_id: int, error: str = "") -> rpb.ConnectRequest:
    return rpb.ConnectRequest(tunnel_close=rpb.TunnelClose(tunnel_id=tunnel_id, error=error))


class Tunnels:
    def __init__(self, outbox: Outbox, ssh_port: Callable[[int], int]) -> None:
        """``ssh_port``: the sshd port of a VPS task running here (0: none)."""
        self._outbox = outbox
        self._ssh_port = ssh_port
        self._open: dict[int, _Tunnel] = {}

    async def open(self, request: rpb.TunnelOpen) -> None:
        """Connect to the sshd of a VPS running here, and only that: whatever the Host
        asks, no tunnel leads anywhere else on this node."""
        port = self._ssh_port(request.task_id)
        if not port or port != request.port:
            error = f"task {request.task_id} is not a VPS with sshd on port {request.port} here"
            await self._outbox.send(_closed(request.tunnel_id, error))
            return
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", request.port), CONNECT_SECONDS
            )
        except (OSError, TimeoutError) as exc:
            error = f"cannot reach the SSH server of task {request.task_id}: {exc}"
            await self._outbox.send(_closed(request.tunnel_id, error))
            return
        pump = asyncio.create_task(self._pump(request.tunnel_id, reader, writer))
        self._open[request.tunnel_id] = _Tunnel(writer, pump)
        await self._outbox.send(
            rpb.ConnectRequest(tunnel_opened=rpb.TunnelOpened(tunnel_id=request.tunnel_id))
        )

    def write(self, data: rpb.TunnelData) -> Coroutine[Any, Any, None] | None:
        """Hand the bytes to the sshd; the tunnel's close to send (and spawn) when the sshd
        has left more than TUNNEL_BACKLOG unread."""
        tunnel = self._open.get(data.tunnel_id)
        if tunnel is None:
            return None
        tunnel.writer.write(data.data)
        if tunnel.writer.transport.get_write_buffer_size() <= TUNNEL_BACKLOG:
            return None
        self.close(data.tunnel_id)
        error = f"the SSH server left more than {TUNNEL_BACKLOG} bytes unread (is its VPS paused?)"
        return self._outbox.send(_closed(data.tunnel_id, error))

    def close(self, tunnel_id: int) -> None:
        """The Host closed the tunnel."""
        tunnel = self._open.pop(tunnel_id, None)
        if tunnel is not None:
            tunnel.end()

    def close_all(self) -> None:
        """The stream is gone, and every tunnel with it."""
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
