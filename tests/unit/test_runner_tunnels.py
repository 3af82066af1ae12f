"""The Runner's side of an SSH tunnel: an sshd that stops reading (its VPS paused by its
owner, who keeps sending) gets its tunnel closed, with a reason, once TUNNEL_BACKLOG bytes
wait for it, rather than the Runner's memory growing without bound."""

from __future__ import annotations

import asyncio
from typing import cast

from hakuriver_common.proto.hakuriver.v1 import runner_service_pb2 as rpb
from hakuriver_runner.outbox import Outbox
from hakuriver_runner.tunnels import TUNNEL_BACKLOG, TUNNEL_CHUNK, Tunnels


class _Outbox:
    def __init__(self) -> None:
        self.sent: list[rpb.ConnectRequest] = []

    async def send(self, message: rpb.ConnectRequest) -> None:
        self.sent.append(message)


async def test_an_sshd_that_stops_reading_has_its_tunnel_closed_past_the_backlog() -> None:
    accepted: list[asyncio.StreamWriter] = []

    async def never_reads(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)

    server = await asyncio.start_server(never_reads, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    outbox = _Outbox()
    tunnels = Tunnels(cast(Outbox, outbox), lambda task_id: port)
    try:
        await tunnels.open(rpb.TunnelOpen(tunnel_id=1, task_id=7, port=port))
        assert outbox.sent[-1].WhichOneof("payload") == "tunnel_opened"
        chunk = rpb.TunnelData(tunnel_id=1, data=b"x" * TUNNEL_CHUNK)
        closing = None
        for _ in range(4 * TUNNEL_BACKLOG // TUNNEL_CHUNK):  # more than the kernel buffers too
            closing = tunnels.write(chunk)
            if closing is not None:
                break
            await asyncio.sleep(0)
        assert closing is not None, "the tunnel was never closed"
        await closing
        close = outbox.sent[-1].tunnel_close
        assert close.tunnel_id == 1 and "unread" in close.error
        assert tunnels.write(chunk) is None  # gone: later bytes are dropped
    finally:
        tunnels.close_all()
        for writer in accepted:
            writer.close()
        server.close()
        await server.wait_closed()
