"""SSH tunnels through Runners, by id.

A Runner reaches the VPS's sshd, then dials the Host's SSH proxy port and proves the
connection is the tunnel's with the one-time secret sent to it on its own stream
(hakuriver_common.tunnel_proof): the bytes then flow on that connection, relayed to the
client's. A Runner that cannot dial
relays on its Connect stream instead; those bytes are fed by the stream and drained by the
proxy's client connection, and a client that falls more than TUNNEL_BUFFER chunks behind is
cut off rather than stalling the stream. A Runner's tunnel messages only reach tunnels
opened on that Runner's own link.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import secrets
import socket
from dataclasses import dataclass, field

from hakuriver_common import tunnel_proof
from hakuriver_common.proto.hakuriver.v1 import runner_service_pb2 as rpb
from hakuriver_host.runner_link import RunnerLink

log = logging.getLogger(__name__)
TUNNEL_BUFFER = 512


@dataclass(frozen=True)
class Dialed:
    """The connection a Runner dialled for a tunnel, and what it sent after its proof."""

    sock: socket.socket
    rest: bytes = b""


@dataclass
class Tunnel:
    tunnel_id: int
    link: RunnerLink
    # The VPS whose sshd it reaches.
    task_id: int
    # What the Runner's dialled connection must prove it holds; "" once proven, or when the
    # Runner was not asked to dial.
    secret: str = ""
    # The Runner's dialled connection, or None: the bytes flow on its Connect stream.
    opened: asyncio.Future[Dialed | None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    # Bounded by ``on_message`` (TUNNEL_BUFFER chunks), not by the queue: the end marker
    # must always fit behind what the client has not read yet.
    incoming: asyncio.Queue[bytes | None] = field(default_factory=asyncio.Queue)

    def _dialed(self) -> Dialed | None:
        if self.opened.done() and not self.opened.exception():
            return self.opened.result()
        return None

    def finish(self) -> None:
        """End the tunnel; its session, copying on the dialled connection, sees its end."""
        if (dialed := self._dialed()) is not None:
            with contextlib.suppress(OSError):
                dialed.sock.shutdown(socket.SHUT_RDWR)

    def release(self) -> None:
        """Close the dialled connection, once the session no longer copies on it (nothing
        else closes it: a descriptor closed under a copy's wait may be reused)."""
        if (dialed := self._dialed()) is not None:
            dialed.sock.close()


class TunnelHub:
    """Tunnels by id; fed by the Runners' streams, drained by proxy connections."""

    def __init__(self) -> None:
        self._tunnels: dict[int, Tunnel] = {}
        self._ids = itertools.count(1)
        # The SSH proxy's port, which Runners dial for a tunnel's bytes; 0: they relay them
        # on their streams.
        self.dial_port = 0

    def open(self, link: RunnerLink, task_id: int, port: int) -> Tunnel:
        secret = secrets.token_urlsafe(32) if self.dial_port else ""
        tunnel = Tunnel(next(self._ids), link, task_id, secret)
        self._tunnels[tunnel.tunnel_id] = tunnel
        link.send(
            rpb.ConnectResponse(
                tunnel_open=rpb.TunnelOpen(
                    tunnel_id=tunnel.tunnel_id,
                    task_id=task_id,
                    port=port,
                    dial_port=self.dial_port if secret else 0,
                    dial_secret=secret,
                )
            )
        )
        return tunnel

    def dialed(
        self, tunnel_id: int, challenge: str, answer: str, connection: Dialed
    ) -> Tunnel | None:
        """The tunnel a Runner's dialled connection is for; None when no tunnel waits for
        that proof (a secret is good once, and only until its tunnel opens or ends)."""
        tunnel = self._tunnels.get(tunnel_id)
        if tunnel is None or tunnel.opened.done():
            return None
        if not tunnel_proof.proven(tunnel.secret, tunnel_id, challenge, answer):
            return None
        tunnel.secret = ""
        tunnel.opened.set_result(connection)
        return tunnel

    def close(self, tunnel: Tunnel) -> None:
        if self._tunnels.pop(tunnel.tunnel_id, None) is not None:
            tunnel.link.send(
                rpb.ConnectResponse(tunnel_close=rpb.TunnelClose(tunnel_id=tunnel.tunnel_id))
            )
        tunnel.finish()

    def _end(self, tunnel: Tunnel, error: str) -> None:
        self._tunnels.pop(tunnel.tunnel_id, None)
        if not tunnel.opened.done():
            tunnel.opened.set_exception(ConnectionError(error or "closed"))
        tunnel.incoming.put_nowait(None)
        tunnel.finish()

    def _of(self, link: RunnerLink, tunnel_id: int) -> Tunnel | None:
        tunnel = self._tunnels.get(tunnel_id)
        return tunnel if tunnel is not None and tunnel.link is link else None

    def on_message(self, link: RunnerLink, message: rpb.ConnectRequest) -> None:
        kind = message.WhichOneof("payload")
        if kind == "tunnel_opened":
            tunnel = self._of(link, message.tunnel_opened.tunnel_id)
            if tunnel is not None and not tunnel.opened.done():
                tunnel.secret = ""
                tunnel.opened.set_result(None)
        elif kind == "tunnel_data":
            tunnel = self._of(link, message.tunnel_data.tunnel_id)
            if tunnel is None:
                return
            if tunnel.incoming.qsize() >= TUNNEL_BUFFER:
                log.warning("ssh client of tunnel %d too slow: disconnecting", tunnel.tunnel_id)
                self.close(tunnel)
                self._end(tunnel, "client too slow")
                return
            tunnel.incoming.put_nowait(message.tunnel_data.data)
        elif kind == "tunnel_close":
            tunnel = self._of(link, message.tunnel_close.tunnel_id)
            if tunnel is not None:
                self._end(tunnel, message.tunnel_close.error)

    def link_gone(self, link: RunnerLink) -> None:
        for tunnel in [t for t in self._tunnels.values() if t.link is link]:
            self._end(tunnel, "runner disconnected")
