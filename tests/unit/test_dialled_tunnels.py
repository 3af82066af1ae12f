"""An SSH session's bytes on a connection the Runner dials to the Host's SSH proxy port, not
on its Connect stream (where they crawled at a fraction of a direct copy's speed): the
real Host in-process, the real Runner's tunnels, a loopback echo server as the VPS's sshd.
Only a connection that proves it holds the tunnel's one-time secret carries it; a Runner
that cannot dial relays on its stream as before."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator
from typing import cast

import pytest

from hakuriver_common import socket_copy, tunnel_proof
from hakuriver_common.proto.hakuriver.v1 import audit_service_pb2 as aupb, runner_service_pb2 as rpb
from hakuriver_runner.outbox import Outbox
from hakuriver_runner.tunnels import HostDial, Tunnels
from tests.fake_runner import FakeRunner, eventually
from tests.unit.local_cluster import LocalCluster
from tests.unit.test_runner_tunnels import _Outbox
from tests.unit.test_ssh_tickets import _alices_vps_ticket, _to_the_proxy


@pytest.fixture
async def sshd() -> AsyncIterator[int]:
    """A loopback server standing in for a VPS's sshd: it echoes what it reads."""

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    yield int(server.sockets[0].getsockname()[1])
    server.close()


async def _client(
    local_cluster: LocalCluster,
) -> tuple[FakeRunner, asyncio.StreamReader, asyncio.StreamWriter]:
    """Alice's VPS on a held Runner, and her proxy connection with its ticket sent."""
    runner, issued = await _alices_vps_ticket(local_cluster)
    reader, writer = await _to_the_proxy(local_cluster)
    writer.write(f"TICKET {issued.ticket}\n".encode())
    await writer.drain()
    return runner, reader, writer


async def _dial(port: int, tunnel_id: int, secret: str) -> bytes:
    """The Host's answer to a connection dialled for ``tunnel_id`` that proves ``secret``."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"TUNNEL {tunnel_id}\n".encode())
        word, challenge = (await asyncio.wait_for(reader.readline(), 5)).decode().split()
        assert word == "CHALLENGE"
        writer.write(f"{tunnel_proof.proof(secret, tunnel_id, challenge)}\n".encode())
        return await asyncio.wait_for(reader.readline(), 5)
    finally:
        writer.close()


@pytest.mark.parametrize("splice", [True, False], ids=["splice", "no-splice"])
async def test_a_sessions_bytes_go_on_the_connection_the_runner_dials(
    local_cluster: LocalCluster, sshd: int, splice: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both relays copy with splice(2) where the system has it, and through the event loop
    where it does not (a Host on macOS)."""
    if not splice:
        monkeypatch.setattr(socket_copy, "_SPLICE", None)
    runner, reader, writer = await _client(local_cluster)
    try:
        [opened] = await eventually(lambda: runner.tunnel_opens, what="the tunnel to open")
        assert local_cluster.server is not None
        assert opened.dial_port == local_cluster.server.ssh_proxy_port and opened.dial_secret
        outbox = _Outbox()
        tunnels = Tunnels(cast(Outbox, outbox), lambda task_id: sshd, HostDial("127.0.0.1"))
        at_sshd = rpb.TunnelOpen()
        at_sshd.CopyFrom(opened)
        at_sshd.port = sshd
        await tunnels.open(at_sshd)
        assert await asyncio.wait_for(reader.readline(), 5) == b"SUCCESS\n"
        payload = bytes(range(256)) * 4096  # 1 MiB, more than one read on every hop
        writer.write(payload)
        await writer.drain()
        assert await asyncio.wait_for(reader.readexactly(len(payload)), 10) == payload
        # Nothing of it on the Runner's stream, either way.
        assert outbox.sent == [] and runner.tunnel_bytes == []
    finally:
        writer.close()
    assert await asyncio.wait_for(reader.read(), 5) == b""
    tunnels.close_all()


async def test_a_clients_bytes_sent_with_its_ticket_reach_the_sshd(
    local_cluster: LocalCluster, sshd: int
) -> None:
    """A client that does not wait for SUCCESS (a ProxyCommand piping ssh at once: its
    banner follows the ticket in one packet) loses none of it; the Host read it with the
    request line, and the dialled connection's copy carries it on first."""
    runner, issued = await _alices_vps_ticket(local_cluster)
    reader, writer = await _to_the_proxy(local_cluster)
    banner = b"SSH-2.0-early\r\n"
    writer.write(f"TICKET {issued.ticket}\n".encode() + banner)
    await writer.drain()
    tunnels = Tunnels(cast(Outbox, _Outbox()), lambda task_id: sshd, HostDial("127.0.0.1"))
    try:
        [opened] = await eventually(lambda: runner.tunnel_opens, what="the tunnel to open")
        at_sshd = rpb.TunnelOpen()
        at_sshd.CopyFrom(opened)
        at_sshd.port = sshd
        await tunnels.open(at_sshd)
        assert await asyncio.wait_for(reader.readline(), 5) == b"SUCCESS\n"
        assert await asyncio.wait_for(reader.readexactly(len(banner)), 5) == banner
    finally:
        writer.close()
        tunnels.close_all()


async def test_a_host_that_sends_on_with_its_answer_loses_nothing() -> None:
    """The Host's SUCCESS may arrive with the client's first bytes behind it: the dial
    hands them over with its connection."""
    secret = "one-time"

    async def host(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readline()
        writer.write(b"CHALLENGE c0ffee\n")
        await reader.readline()
        writer.write(b"SUCCESS\nSSH-2.0-client\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(host, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    request = rpb.TunnelOpen(tunnel_id=5, dial_port=port, dial_secret=secret)
    try:
        dialled, rest = await HostDial("127.0.0.1").dial(request)
        with dialled:
            recv = asyncio.get_running_loop().sock_recv
            while len(rest) < len(b"SSH-2.0-client\r\n"):
                more = await asyncio.wait_for(recv(dialled, 64), 5)
                assert more, f"the connection ended after {rest!r}"
                rest += more
    finally:
        server.close()
    assert rest == b"SSH-2.0-client\r\n"


async def test_a_dialled_connection_without_the_tunnels_proof_carries_nothing(
    local_cluster: LocalCluster,
) -> None:
    """A stranger at the proxy port naming a waiting tunnel is refused, and audited; the
    Runner's proof then opens it, once: a second connection with the same secret is refused
    as well."""
    runner, reader, writer = await _client(local_cluster)
    assert local_cluster.server is not None
    port = local_cluster.server.ssh_proxy_port
    try:
        [opened] = await eventually(lambda: runner.tunnel_opens, what="the tunnel to open")
        tunnel = opened.tunnel_id
        guessed = await _dial(port, tunnel, "a-guessed-secret")
        assert guessed == f"ERROR no tunnel {tunnel} waits for that proof\n".encode()
        assert await _dial(port, tunnel, opened.dial_secret) == b"SUCCESS\n"
        assert await asyncio.wait_for(reader.readline(), 5) == b"SUCCESS\n"
        again = await _dial(port, tunnel, opened.dial_secret)
        assert again == f"ERROR no tunnel {tunnel} waits for that proof\n".encode()
    finally:
        writer.close()
    request = aupb.ListAuditEventsRequest(action="ssh.tunnel")
    events = (await local_cluster.audit.ListAuditEvents(request, timeout=5)).events
    # Strangers' refusals from one address are written once a minute, as the API's are.
    assert [(e.actor, e.outcome, e.detail) for e in events] == [
        ("anonymous", aupb.AUDIT_OUTCOME_REFUSED, f"no tunnel {tunnel} waits for that proof")
    ]


async def test_a_runner_that_cannot_reach_the_proxy_port_relays_on_its_stream(
    sshd: int, caplog: pytest.LogCaptureFixture
) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        nobody = closed.getsockname()[1]
    outbox = _Outbox()
    tunnels = Tunnels(cast(Outbox, outbox), lambda task_id: sshd, HostDial("127.0.0.1"))
    request = rpb.TunnelOpen(tunnel_id=3, task_id=7, port=sshd, dial_port=nobody, dial_secret="s")
    with caplog.at_level(logging.WARNING, logger="hakuriver_runner.tunnels"):
        await tunnels.open(request)
    try:
        assert [m.WhichOneof("payload") for m in outbox.sent] == ["tunnel_opened"]
        assert f"cannot reach the Host's SSH proxy at 127.0.0.1:{nobody}" in caplog.text
        assert tunnels.write(rpb.TunnelData(tunnel_id=3, data=b"ping")) is None
        echoed = await eventually(
            lambda: [m.tunnel_data.data for m in outbox.sent if m.HasField("tunnel_data")],
            what="the echo on the stream",
        )
        assert echoed == [b"ping"]
    finally:
        tunnels.close_all()


async def test_a_host_reached_at_an_ipv6_address_in_brackets_is_dialled_there() -> None:
    """host_reachable_address = "[::1]", as the gRPC target writes it, is ::1 to a socket."""
    secret = "one-time"

    async def host(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert await reader.readline() == b"TUNNEL 5\n"
        writer.write(b"CHALLENGE c0ffee\n")
        answer = (await reader.readline()).decode().strip()
        writer.write(b"SUCCESS\n" if tunnel_proof.proven(secret, 5, "c0ffee", answer) else b"NO\n")
        await writer.drain()
        writer.close()

    try:
        server = await asyncio.start_server(host, "::1", 0)
    except OSError as exc:
        pytest.skip(f"no IPv6 loopback here: {exc}")
    port = server.sockets[0].getsockname()[1]
    request = rpb.TunnelOpen(tunnel_id=5, dial_port=port, dial_secret=secret)
    try:
        dialled, rest = await HostDial("[::1]").dial(request)
        dialled.close()
    finally:
        server.close()
    assert rest == b""
