"""An SSH session's bytes on a connection the Runner dials to the Host's SSH proxy port, not
on its Connect stream (where they crawled at a fraction of a direct copy's speed): the
real Host in-process, the real Runner's tunnels, a loopback echo server as the VPS's sshd.
Only a connection that proves it holds the tunnel's one-time secret carries it; a Runner
that cannot dial relays on its stream as before."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import socket
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import cast

import pytest

from hakuriver_common import socket_copy, tunnel_proof
from hakuriver_common.proto.hakuriver.v1 import (
    access_service_pb2 as apb,
    audit_service_pb2 as aupb,
    runner_service_pb2 as rpb,
    ssh_service_pb2 as spb,
    task_service_pb2 as tpb,
)
from hakuriver_common.roles import Role
from hakuriver_host import ssh_proxy
from hakuriver_runner.outbox import Outbox
from hakuriver_runner.tunnels import LINE_LIMIT, HostDial, Tunnels
from tests.fake_runner import FakeRunner, eventually
from tests.unit.local_cluster import LocalCluster
from tests.unit.test_runner_tunnels import _Outbox
from tests.unit.test_ssh_tickets import _alices_vps_ticket, _answer_to, _to_the_proxy

# What opens a tunnel the Host asked its Runner for.
OpenTunnel = Callable[[rpb.TunnelOpen], Awaitable[None]]


@dataclass
class Sshd:
    """A loopback server standing in for a VPS's sshd: it echoes what it reads."""

    port: int = 0
    # Its connections still open, to see a session's end reach it (or to end one).
    connections: set[asyncio.StreamWriter] = field(default_factory=set)

    async def echo(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections.add(writer)
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            self.connections.discard(writer)
            writer.close()


@pytest.fixture
async def sshd() -> AsyncIterator[Sshd]:
    server_side = Sshd()
    server = await asyncio.start_server(server_side.echo, "127.0.0.1", 0)
    server_side.port = int(server.sockets[0].getsockname()[1])
    yield server_side
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


def _at(opened: rpb.TunnelOpen, sshd: Sshd) -> rpb.TunnelOpen:
    """The Host's TunnelOpen, its VPS's sshd being the test's."""
    request = rpb.TunnelOpen()
    request.CopyFrom(opened)
    request.port = sshd.port
    return request


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
    local_cluster: LocalCluster, sshd: Sshd, splice: bool, monkeypatch: pytest.MonkeyPatch
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
        tunnels = Tunnels(cast(Outbox, outbox), lambda task_id: sshd.port, HostDial("127.0.0.1"))
        await tunnels.open(_at(opened, sshd))
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
    local_cluster: LocalCluster, sshd: Sshd
) -> None:
    """A client that does not wait for SUCCESS (a ProxyCommand piping ssh at once: its
    banner follows the ticket in one packet) loses none of it; the Host read it with the
    request line, and the dialled connection's copy carries it on first."""
    runner, issued = await _alices_vps_ticket(local_cluster)
    reader, writer = await _to_the_proxy(local_cluster)
    banner = b"SSH-2.0-early\r\n"
    writer.write(f"TICKET {issued.ticket}\n".encode() + banner)
    await writer.drain()
    tunnels = Tunnels(cast(Outbox, _Outbox()), lambda task_id: sshd.port, HostDial("127.0.0.1"))
    try:
        [opened] = await eventually(lambda: runner.tunnel_opens, what="the tunnel to open")
        await tunnels.open(_at(opened, sshd))
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


@pytest.mark.parametrize("named", ["\u00b2", "9" * 1000], ids=["superscript", "1000-digits"])
async def test_a_dial_naming_no_tunnel_id_gets_the_protocols_refusal(
    local_cluster: LocalCluster, named: str
) -> None:
    """A tunnel id that str.isdigit() takes but int() does not (a superscript digit), or
    one past any id (as long as the 1 KiB request line allows), is no tunnel's: answered
    as one, not with int()'s own error."""
    assert local_cluster.server is not None
    port = local_cluster.server.ssh_proxy_port
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"TUNNEL {named}\n".encode())
        assert (await asyncio.wait_for(reader.readline(), 5)).startswith(b"CHALLENGE ")
        writer.write(b"proof\n")
        answer = await asyncio.wait_for(reader.readline(), 5)
    finally:
        writer.close()
    assert answer == f"ERROR no tunnel {named} waits for that proof\n".encode()


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
    sshd: Sshd, caplog: pytest.LogCaptureFixture
) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        nobody = closed.getsockname()[1]
    outbox = _Outbox()
    tunnels = Tunnels(cast(Outbox, outbox), lambda task_id: sshd.port, HostDial("127.0.0.1"))
    request = rpb.TunnelOpen(
        tunnel_id=3, task_id=7, port=sshd.port, dial_port=nobody, dial_secret="s"
    )
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


async def _session(
    local_cluster: LocalCluster, runner: FakeRunner, ticket: str, open_tunnel: OpenTunnel
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A client's proxy connection for ``ticket``, once the Host said SUCCESS: the tunnel
    the Host asks ``runner`` for is opened by ``open_tunnel``."""
    reader, writer = await _to_the_proxy(local_cluster)
    asked = len(runner.tunnel_opens)
    writer.write(f"TICKET {ticket}\n".encode())
    await writer.drain()
    [opened] = await eventually(lambda: runner.tunnel_opens[asked:], what="the tunnel to open")
    await open_tunnel(opened)
    assert await asyncio.wait_for(reader.readline(), 5) == b"SUCCESS\n"
    return reader, writer


async def _ended(reader: asyncio.StreamReader) -> None:
    """Until the proxy ends the client's connection (what the echo still sends is read). A
    client still writing may learn of the end from its write (a broken pipe): an end too."""
    async with asyncio.timeout(10):
        with contextlib.suppress(ConnectionError):
            while await reader.read(65536):
                pass


def _dialling(tunnels: Tunnels, sshd: Sshd) -> OpenTunnel:
    """The Runner's tunnels open it, dialling the Host."""

    async def open_tunnel(opened: rpb.TunnelOpen) -> None:
        await tunnels.open(_at(opened, sshd))

    return open_tunnel


def _on_stream(runner: FakeRunner) -> OpenTunnel:
    """The Runner opens the tunnel on its stream (it did not dial)."""

    async def answer(opened: rpb.TunnelOpen) -> None:
        runner.send(rpb.ConnectRequest(tunnel_opened=rpb.TunnelOpened(tunnel_id=opened.tunnel_id)))

    return answer


def _open_sockets_and_pipes() -> list[str]:
    """This process's open sockets and pipes, what the relays hold (not its files: the
    database's threads open theirs as they come)."""
    open_now: list[str] = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # the directory's own, closed since
            what = os.readlink(f"/proc/self/fd/{fd}")
            if what.startswith(("socket:", "pipe:")):
                open_now.append(what)
    return open_now


async def test_sessions_leave_no_descriptor_open_however_they_end(
    local_cluster: LocalCluster, sshd: Sshd
) -> None:
    """Each way a session ends, on either path, and each refused connection: the Host's
    and the Runner's sockets and pipes are all closed, by their owners (a socket left to
    the garbage collector says so with a ResourceWarning)."""
    runner, _ = await _alices_vps_ticket(local_cluster)
    tunnels = Tunnels(cast(Outbox, _Outbox()), lambda task_id: sshd.port, HostDial("127.0.0.1"))
    dialling = _dialling(tunnels, sshd)
    assert local_cluster.server is not None
    port = local_cluster.server.ssh_proxy_port

    async def ticket() -> str:
        [task] = (await local_cluster.tasks.ListTasks(tpb.ListTasksRequest(), timeout=5)).tasks
        request = spb.CreateSshTicketRequest(task_id=task.task_id)
        return (await local_cluster.ssh.CreateSshTicket(request, timeout=5)).ticket

    async def every_ending() -> None:
        # The client leaves mid-copy, with a MiB on its way.
        reader, writer = await _session(local_cluster, runner, await ticket(), dialling)
        writer.write(b"x" * (1 << 20))
        writer.close()
        await _ended(reader)
        # The sshd leaves first.
        reader, writer = await _session(local_cluster, runner, await ticket(), dialling)
        for connection in await eventually(lambda: set(sshd.connections), what="the sshd"):
            connection.close()
        await _ended(reader)
        writer.close()
        # On the Runner's stream, the client leaves.
        reader, writer = await _session(local_cluster, runner, await ticket(), _on_stream(runner))
        writer.close()
        await _ended(reader)
        # Refused: a ticket that is none, a dial without the proof.
        assert (await _answer_to(local_cluster, "nonsense")).startswith(b"ERROR ")
        assert (await _dial(port, 1, "guessed")).startswith(b"ERROR ")
        await eventually(lambda: not sshd.connections, what="the sshd's connections to end")

    with warnings.catch_warnings(record=True) as warned:
        warnings.simplefilter("always", ResourceWarning)
        await every_ending()  # the Host's and the client's first connections, kept
        before = _open_sockets_and_pipes()
        for _ in range(10):
            await every_ending()
        await eventually(
            lambda: len(_open_sockets_and_pipes()) <= len(before),
            what=f"no more than the {len(before)} sockets and pipes open before",
        )
        gc.collect()
    assert [str(w.message) for w in warned if w.category is ResourceWarning] == []


async def test_a_dialled_session_ends_with_its_runners_stream(
    local_cluster: LocalCluster, sshd: Sshd
) -> None:
    """The Host ends the tunnels of a Runner whose stream is gone: a session copying on the
    connection that Runner dialled ends too, on both sides (the client's connection and the
    Runner's to the sshd)."""
    runner, issued = await _alices_vps_ticket(local_cluster)
    tunnels = Tunnels(cast(Outbox, _Outbox()), lambda task_id: sshd.port, HostDial("127.0.0.1"))
    reader, writer = await _session(local_cluster, runner, issued.ticket, _dialling(tunnels, sshd))
    try:
        writer.write(b"ping")
        assert await asyncio.wait_for(reader.readexactly(4), 5) == b"ping"
        await runner.drop()
        await _ended(reader)
    finally:
        writer.close()
    await eventually(lambda: not sshd.connections, what="the sshd's connection to end")


async def test_two_sessions_to_one_vps_outlive_each_others_end(
    local_cluster: LocalCluster, sshd: Sshd
) -> None:
    """Two sessions to one VPS through one Runner: the first client leaves; the second's
    bytes still go both ways, and only the first's connection to the sshd ends."""
    runner, issued = await _alices_vps_ticket(local_cluster)
    tunnels = Tunnels(cast(Outbox, _Outbox()), lambda task_id: sshd.port, HostDial("127.0.0.1"))
    first = await _session(local_cluster, runner, issued.ticket, _dialling(tunnels, sshd))
    [task] = (await local_cluster.tasks.ListTasks(tpb.ListTasksRequest(), timeout=5)).tasks
    request = spb.CreateSshTicketRequest(task_id=task.task_id)
    ticket = (await local_cluster.ssh.CreateSshTicket(request, timeout=5)).ticket
    reader, writer = await _session(local_cluster, runner, ticket, _dialling(tunnels, sshd))
    try:
        await eventually(lambda: len(sshd.connections) == 2, what="both sessions at the sshd")
        first[1].close()
        await _ended(first[0])
        await eventually(lambda: len(sshd.connections) == 1, what="the first one's end")
        writer.write(b"still here")
        assert await asyncio.wait_for(reader.readexactly(10), 5) == b"still here"
    finally:
        writer.close()
    await eventually(lambda: not sshd.connections, what="the second one's end")


async def _delete_alice(local_cluster: LocalCluster) -> None:
    await local_cluster.access.DeleteUser(apb.DeleteUserRequest(name="alice"), timeout=5)


async def _revoke_alices_token(local_cluster: LocalCluster) -> None:
    [token] = (await local_cluster.access.ListTokens(apb.ListTokensRequest(user="alice"))).tokens
    await local_cluster.access.RevokeToken(apb.RevokeTokenRequest(token_id=token.token_id))


async def _make_alice_an_operator(local_cluster: LocalCluster) -> None:
    request = apb.SetUserRoleRequest(name="alice", role=Role.OPERATOR.pb)
    await local_cluster.access.SetUserRole(request, timeout=5)


# Each way a ticket's holder may stop reaching the VPS.
_holder_changes = pytest.mark.parametrize(
    "change",
    [_delete_alice, _revoke_alices_token, _make_alice_an_operator],
    ids=["user-deleted", "token-revoked", "role-changed"],
)
HolderChange = Callable[[LocalCluster], Awaitable[None]]


@pytest.mark.parametrize("busy", [True, False], ids=["copying", "idle"])
@_holder_changes
async def test_a_dialled_session_ends_once_its_holder_may_no_longer_use_it(
    local_cluster: LocalCluster,
    sshd: Sshd,
    busy: bool,
    change: HolderChange,
) -> None:
    """As on the stream (test_ssh_tickets): copying or idle, the session ends, audited
    under its holder's name."""
    runner, issued = await _alices_vps_ticket(local_cluster)
    tunnels = Tunnels(cast(Outbox, _Outbox()), lambda task_id: sshd.port, HostDial("127.0.0.1"))
    reader, writer = await _session(local_cluster, runner, issued.ticket, _dialling(tunnels, sshd))

    async def keep_typing() -> None:
        with contextlib.suppress(ConnectionError):
            while True:
                writer.write(b"k" * 1024)
                await writer.drain()
                await asyncio.sleep(0.001)

    typing = asyncio.create_task(keep_typing()) if busy else None
    try:
        await change(local_cluster)
        await _ended(reader)
    finally:
        if typing is not None:
            typing.cancel()
            await asyncio.gather(typing, return_exceptions=True)
        writer.close()
    await eventually(lambda: not sshd.connections, what="the sshd's connection to end")
    request = aupb.ListAuditEventsRequest(action="ssh.tunnel")
    events = (await local_cluster.audit.ListAuditEvents(request, timeout=5)).events
    assert [(e.actor, e.outcome) for e in events] == [("alice", aupb.AUDIT_OUTCOME_REFUSED)]


@pytest.mark.parametrize("path", ["stream", "dialled"])
@_holder_changes
async def test_a_holder_changed_while_the_tunnel_opens_is_not_let_in(
    local_cluster: LocalCluster,
    sshd: Sshd,
    path: str,
    change: HolderChange,
) -> None:
    """The ticket was good when redeemed; its holder's token stops vouching for them (or
    their role changes) while the Runner opens the tunnel: the client is answered ERROR,
    audited, and nothing it sent reaches the sshd. The proxy said SUCCESS and sent the
    client's first bytes on unchecked."""
    runner, issued = await _alices_vps_ticket(local_cluster)
    tunnels = Tunnels(cast(Outbox, _Outbox()), lambda task_id: sshd.port, HostDial("127.0.0.1"))
    open_tunnel = _on_stream(runner) if path == "stream" else _dialling(tunnels, sshd)
    reader, writer = await _to_the_proxy(local_cluster)
    try:
        writer.write(f"TICKET {issued.ticket}\nSSH-2.0-client\r\n".encode())
        await writer.drain()
        [opened] = await eventually(lambda: runner.tunnel_opens, what="the tunnel to be asked")
        await change(local_cluster)
        await open_tunnel(opened)
        answer = await asyncio.wait_for(reader.readline(), 5)
        assert answer.startswith(b"ERROR "), answer
        assert await asyncio.wait_for(reader.read(), 5) == b""
    finally:
        writer.close()
    assert runner.tunnel_bytes == []
    await eventually(lambda: not sshd.connections, what="the sshd's connection to end")
    request = aupb.ListAuditEventsRequest(action="ssh.tunnel")
    events = (await local_cluster.audit.ListAuditEvents(request, timeout=5)).events
    assert [(e.actor, e.outcome) for e in events] == [("alice", aupb.AUDIT_OUTCOME_REFUSED)]


async def test_the_host_stopping_ends_every_session(
    local_cluster: LocalCluster, sshd: Sshd
) -> None:
    """Its client sees the end, and the Runner's connection to the sshd closes; so does a
    connection that has not said what it is yet (no Runner's stream ends that one)."""
    runner, issued = await _alices_vps_ticket(local_cluster)
    tunnels = Tunnels(cast(Outbox, _Outbox()), lambda task_id: sshd.port, HostDial("127.0.0.1"))
    dialled = await _session(local_cluster, runner, issued.ticket, _dialling(tunnels, sshd))
    request = spb.CreateSshTicketRequest(task_id=runner.tunnel_opens[0].task_id)
    another = (await local_cluster.ssh.CreateSshTicket(request, timeout=5)).ticket
    on_stream = await _session(local_cluster, runner, another, _on_stream(runner))
    silent = await _to_the_proxy(local_cluster)
    connections = (dialled, on_stream, silent)
    try:
        await local_cluster.stop_host()
        for reader, _ in (dialled, on_stream):
            await _ended(reader)
        # Not left to wait out REQUEST_TIMEOUT, then told it sent no request.
        assert await asyncio.wait_for(silent[0].read(), 2 * ssh_proxy.REQUEST_TIMEOUT) == b""
    finally:
        for _, writer in connections:
            writer.close()
    await eventually(lambda: not sshd.connections, what="the sshd's connection to end")


async def test_a_dial_that_never_proves_itself_is_cut_off_and_takes_nothing(
    local_cluster: LocalCluster, sshd: Sshd, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A connection naming a waiting tunnel, then silent, is answered once REQUEST_TIMEOUT
    passes; the tunnel still waits for its Runner's proof."""
    monkeypatch.setattr(ssh_proxy, "REQUEST_TIMEOUT", 0.2)
    runner, issued = await _alices_vps_ticket(local_cluster)
    reader, writer = await _to_the_proxy(local_cluster)
    writer.write(f"TICKET {issued.ticket}\n".encode())
    await writer.drain()
    [opened] = await eventually(lambda: runner.tunnel_opens, what="the tunnel to open")
    silent_reader, silent_writer = await _to_the_proxy(local_cluster)
    try:
        silent_writer.write(f"TUNNEL {opened.tunnel_id}\n".encode())
        assert (await asyncio.wait_for(silent_reader.readline(), 5)).startswith(b"CHALLENGE ")
        answer = await asyncio.wait_for(silent_reader.readline(), 5)
        assert answer == b"ERROR no request line within 0.2 s\n"
        assert await asyncio.wait_for(silent_reader.read(), 5) == b""
        tunnels = Tunnels(cast(Outbox, _Outbox()), lambda task_id: sshd.port, HostDial("127.0.0.1"))
        await tunnels.open(_at(opened, sshd))
        assert await asyncio.wait_for(reader.readline(), 5) == b"SUCCESS\n"
        writer.write(b"ping")
        assert await asyncio.wait_for(reader.readexactly(4), 5) == b"ping"
    finally:
        silent_writer.close()
        writer.close()
    await eventually(lambda: not sshd.connections, what="the sshd's connection to end")


async def test_a_dial_the_host_refuses_ends_the_tunnel_on_the_runner(
    local_cluster: LocalCluster,
    sshd: Sshd,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The Host refuses a Runner's proven dial once the tunnel no longer waits (its client
    was told the Runner was too slow): the Runner closes its connection to the sshd and the
    tunnel. It took the refusal for a Host it cannot reach: it warned so, and carried the
    tunnel on its stream to a Host that drops its bytes, the sshd's connection held until
    the sshd gave up on it."""
    monkeypatch.setattr(ssh_proxy, "OPEN_TIMEOUT", 0.2)
    runner, issued = await _alices_vps_ticket(local_cluster)
    answer = await _answer_to(local_cluster, issued.ticket)
    assert answer == b"ERROR the VPS's runner did not open the tunnel within 0.2 s\n"
    [opened] = runner.tunnel_opens
    outbox = _Outbox()
    tunnels = Tunnels(cast(Outbox, outbox), lambda task_id: sshd.port, HostDial("127.0.0.1"))
    try:
        with caplog.at_level(logging.WARNING, logger="hakuriver_runner.tunnels"):
            await tunnels.open(_at(opened, sshd))
        assert [(m.tunnel_close.tunnel_id, m.tunnel_close.error) for m in outbox.sent] == [
            (
                opened.tunnel_id,
                "the Host refused the tunnel's connection: "
                f"no tunnel {opened.tunnel_id} waits for that proof",
            )
        ]
        assert "cannot reach" not in caplog.text
        await eventually(lambda: not sshd.connections, what="the sshd's connection to end")
    finally:
        tunnels.close_all()


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def _tunnels_to(
    handler: Handler, sshd: Sshd, tunnel_id: int
) -> tuple[asyncio.Server, _Outbox, Tunnels, rpb.TunnelOpen]:
    """A stand-in for the Host's proxy port serving ``handler``, a Runner's tunnels to
    ``sshd``, and a TunnelOpen asking them to dial it."""
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    outbox = _Outbox()
    tunnels = Tunnels(cast(Outbox, outbox), lambda task_id: sshd.port, HostDial("127.0.0.1"))
    request = rpb.TunnelOpen(
        tunnel_id=tunnel_id, task_id=7, port=sshd.port, dial_port=port, dial_secret="s"
    )
    return server, outbox, tunnels, request


async def test_a_tunnel_the_host_closes_while_it_opens_is_not_opened(sshd: Sshd) -> None:
    """The Host closes a tunnel (its client gone) while the Runner still dials: the opening
    stops there, the sshd's connection closed and nothing sent. It went on opening a tunnel
    nobody waited for, held until the sshd gave up on it."""
    dialled = asyncio.Event()
    answer = asyncio.Event()

    async def slow_host(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readline()
        dialled.set()
        await answer.wait()
        writer.write(b"CHALLENGE c0ffee\n")
        await reader.readline()
        writer.write(b"SUCCESS\n")
        await writer.drain()
        await reader.read()
        writer.close()

    host, outbox, tunnels, request = await _tunnels_to(slow_host, sshd, 4)
    opening = asyncio.ensure_future(tunnels.open(request))
    try:
        await asyncio.wait_for(dialled.wait(), 5)
        assert sshd.connections
        tunnels.close(4)
        answer.set()
        await asyncio.wait([opening], timeout=5)
        await eventually(lambda: not sshd.connections, what="the sshd's connection to end")
        assert outbox.sent == []
    finally:
        answer.set()
        tunnels.close_all()
        host.close()


async def test_a_dial_answered_past_the_line_limit_relays_on_the_stream(
    sshd: Sshd, caplog: pytest.LogCaptureFixture
) -> None:
    """Something else than the Host at the proxy port (an address pointing elsewhere)
    answers with a line longer than LINE_LIMIT: the Runner cannot reach the Host's proxy
    there and relays on its stream. Its opening raised ValueError instead: nothing sent,
    the client left to wait out OPEN_TIMEOUT."""

    async def chatty(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"x" * (LINE_LIMIT + 1))
        await writer.drain()
        await reader.read()
        writer.close()

    server, outbox, tunnels, request = await _tunnels_to(chatty, sshd, 3)
    try:
        with caplog.at_level(logging.WARNING, logger="hakuriver_runner.tunnels"):
            await tunnels.open(request)
        assert [m.WhichOneof("payload") for m in outbox.sent] == ["tunnel_opened"]
        assert f"cannot reach the Host's SSH proxy at 127.0.0.1:{request.dial_port}" in caplog.text
    finally:
        tunnels.close_all()
        server.close()
