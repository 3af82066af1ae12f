"""SSH tunnels on a Runner's stream: a proxy client that falls TUNNEL_BUFFER chunks behind
is cut off, and so is every tunnel of a Runner that goes; either way the client is sent what
was buffered, then the end (a full buffer used to swallow the end: the client hung)."""

from __future__ import annotations

from typing import Any, cast

from hakuriver_common.proto.hakuriver.v1 import runner_service_pb2 as rpb
from hakuriver_host.runner_link import RunnerLink
from hakuriver_host.tunnels import TUNNEL_BUFFER, Tunnel, TunnelHub


class _Link:
    """What the hub asks of a Runner's link: to send."""

    def __init__(self) -> None:
        self.sent: list[rpb.ConnectResponse] = []

    def send(self, message: rpb.ConnectResponse) -> None:
        self.sent.append(message)


def _data(tunnel: Tunnel) -> rpb.ConnectRequest:
    return rpb.ConnectRequest(tunnel_data=rpb.TunnelData(tunnel_id=tunnel.tunnel_id, data=b"x"))


def _buffered(tunnel: Tunnel) -> list[Any]:
    return [tunnel.incoming.get_nowait() for _ in range(tunnel.incoming.qsize())]


async def test_a_client_too_slow_for_its_tunnel_gets_what_was_buffered_then_the_end() -> None:
    hub, link = TunnelHub(), _Link()
    runner = cast(RunnerLink, link)
    tunnel = hub.open(runner, task_id=1, port=22)
    for _ in range(TUNNEL_BUFFER + 5):
        hub.on_message(runner, _data(tunnel))
    assert _buffered(tunnel) == [b"x"] * TUNNEL_BUFFER + [None]
    assert link.sent[-1].tunnel_close.tunnel_id == tunnel.tunnel_id
    assert str(tunnel.opened.exception()) == "client too slow"


async def test_a_runner_gone_ends_its_tunnels_even_with_their_buffers_full() -> None:
    hub, link = TunnelHub(), _Link()
    runner = cast(RunnerLink, link)
    tunnel = hub.open(runner, task_id=1, port=22)
    for _ in range(TUNNEL_BUFFER):
        hub.on_message(runner, _data(tunnel))
    hub.link_gone(runner)
    assert _buffered(tunnel) == [b"x"] * TUNNEL_BUFFER + [None]
    assert str(tunnel.opened.exception()) == "runner disconnected"
