"""An SSH ticket is only as good as the token it came from: presented after its holder was
deleted (or their token revoked), within its 30 s life, it opens nothing; and a session it
opened passes nothing more once that token is revoked. A proxy connection that times out
is told which wait ran out."""

from __future__ import annotations

import asyncio
import contextlib
import re
from datetime import UTC, datetime, timedelta

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from hakuriver_common.limits import MAX_SSH_PROXY_WAITING
from hakuriver_common.proto.hakuriver.v1 import (
    access_service_pb2 as apb,
    audit_service_pb2 as aupb,
    runner_service_pb2 as rpb,
    ssh_service_pb2 as spb,
    task_pb2,
    task_service_pb2 as tpb,
)
from hakuriver_common.roles import Role
from hakuriver_common.statuses import TaskStatus
from hakuriver_host import ssh_proxy, ssh_tickets
from hakuriver_host.errors import Unauthenticated
from hakuriver_host.identity import Kind, Principal
from tests.fake_runner import HOLD, FakeRunner, eventually
from tests.unit.conftest import MakeCluster
from tests.unit.local_cluster import LocalCluster

SSH_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE1KjKdQFMK2E8kVmbb3r2Dk5c6bwSvpZ0ZyYy2sQkVx"


async def _alices_vps_ticket(
    local_cluster: LocalCluster,
) -> tuple[FakeRunner, spb.CreateSshTicketResponse]:
    """User alice's VPS running on a held Runner, and a ticket she got for it."""
    runner = await local_cluster.add_runner("a", answer=HOLD)
    alice = await local_cluster.add_user("alice")
    request = tpb.SubmitTaskRequest(kind=task_pb2.TASK_KIND_VPS, ssh_public_key=SSH_KEY)
    [vps] = (await alice.tasks.SubmitTask(request, timeout=5)).tasks
    await local_cluster.wait_status(vps.task_id, TaskStatus.RUNNING)
    issued = await alice.ssh.CreateSshTicket(spb.CreateSshTicketRequest(task_id=vps.task_id))
    return runner, issued


async def _to_the_proxy(
    local_cluster: LocalCluster,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    assert local_cluster.server is not None
    return await asyncio.open_connection("127.0.0.1", local_cluster.server.ssh_proxy_port)


async def _answer_to(local_cluster: LocalCluster, ticket: str) -> bytes:
    """The proxy's one-line answer to a ticket."""
    reader, writer = await _to_the_proxy(local_cluster)
    try:
        writer.write(f"TICKET {ticket}\n".encode())
        await writer.drain()
        return await asyncio.wait_for(reader.readline(), 5)
    finally:
        writer.close()


async def _session(
    runner: FakeRunner,
    issued: spb.CreateSshTicketResponse,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
) -> int:
    """Open the session of ``issued`` on a proxy connection, the Runner connecting its
    tunnel; the tunnel's id."""
    writer.write(f"TICKET {issued.ticket}\n".encode())
    await writer.drain()
    [opened] = await eventually(lambda: runner.tunnel_opens, what="the tunnel to open")
    tunnel: int = opened.tunnel_id
    runner.send(rpb.ConnectRequest(tunnel_opened=rpb.TunnelOpened(tunnel_id=tunnel)))
    assert await asyncio.wait_for(reader.readline(), 5) == b"SUCCESS\n"
    return tunnel


async def test_a_ticket_whose_holder_was_deleted_opens_nothing(
    local_cluster: LocalCluster,
) -> None:
    runner, issued = await _alices_vps_ticket(local_cluster)
    await local_cluster.access.DeleteUser(apb.DeleteUserRequest(name="alice"), timeout=5)
    answer = await _answer_to(local_cluster, issued.ticket)
    assert answer.startswith(b"ERROR API token ") and answer.endswith(b" was revoked\n"), answer
    assert runner.tunnel_opens == []


async def test_a_ticket_presented_twice_at_once_opens_one_tunnel(
    local_cluster: LocalCluster,
) -> None:
    """Two connections send one ticket together (a copied ProxyCommand line, or someone
    racing its holder): one gets its tunnel, the other the answer for a used ticket."""
    runner, issued = await _alices_vps_ticket(local_cluster)
    connections = [await _to_the_proxy(local_cluster) for _ in range(2)]
    try:
        for _, writer in connections:
            writer.write(f"TICKET {issued.ticket}\n".encode())
        await asyncio.gather(*(writer.drain() for _, writer in connections))
        [opened] = await eventually(lambda: runner.tunnel_opens, what="the tunnel to be asked")
        runner.send(rpb.ConnectRequest(tunnel_opened=rpb.TunnelOpened(tunnel_id=opened.tunnel_id)))
        answers = await asyncio.gather(
            *(asyncio.wait_for(reader.readline(), 5) for reader, _ in connections)
        )
    finally:
        for _, writer in connections:
            writer.close()
    assert sorted(answers) == [
        b"ERROR unknown, used or expired ticket (ask for a new one)\n",
        b"SUCCESS\n",
    ]
    assert len(runner.tunnel_opens) == 1


async def test_a_ticket_lives_timing_ssh_ticket_seconds(make_local_cluster: MakeCluster) -> None:
    """Its expires_at says so, and presented past it, unused, the proxy refuses it."""
    cluster = await make_local_cluster(timing={"ssh_ticket_seconds": 1})
    runner, issued = await _alices_vps_ticket(cluster)
    expires = issued.expires_at.ToDatetime(tzinfo=UTC)
    assert expires <= datetime.now(UTC) + timedelta(seconds=1)
    await asyncio.sleep((expires - datetime.now(UTC)).total_seconds() + 0.2)
    assert await _answer_to(cluster, issued.ticket) == (
        b"ERROR unknown, used or expired ticket (ask for a new one)\n"
    )
    assert runner.tunnel_opens == []


async def test_a_holders_refused_ticket_is_audited_under_their_name(
    local_cluster: LocalCluster,
) -> None:
    """A ticket refused once redeemed (its holder deleted since) is their refusal: audited
    under their name and VPS, each one written. It was audited as a stranger's, so it was
    counted with whatever else that address had sent in the minute (a bad request line
    first), never written with its holder's name."""
    _, issued = await _alices_vps_ticket(local_cluster)
    assert (await _answer_to(local_cluster, "x y z")).startswith(b"ERROR expected: TICKET")
    await local_cluster.access.DeleteUser(apb.DeleteUserRequest(name="alice"), timeout=5)
    assert (await _answer_to(local_cluster, issued.ticket)).startswith(b"ERROR API token ")
    request = aupb.ListAuditEventsRequest(action="ssh.tunnel")
    events = (await local_cluster.audit.ListAuditEvents(request, timeout=5)).events
    [vps] = (await local_cluster.tasks.ListTasks(tpb.ListTasksRequest(), timeout=5)).tasks
    theirs = [(e.actor, e.target, e.outcome) for e in events if e.actor != "anonymous"]
    assert theirs == [("alice", str(vps.task_id), aupb.AUDIT_OUTCOME_REFUSED)]
    # Their address as every port writes it (a stranger's without the port), not as a
    # Python tuple ("('127.0.0.1', 51234)"): one address reads alike in the whole log.
    peers = {e.actor: e.peer for e in events}
    assert peers["anonymous"] == "ipv4:127.0.0.1"
    assert re.fullmatch(r"ipv4:127\.0\.0\.1:\d+", peers["alice"]), peers


async def test_an_over_long_request_line_gets_the_protocols_answer(
    local_cluster: LocalCluster,
) -> None:
    reader, writer = await _to_the_proxy(local_cluster)
    try:
        writer.write(b"x" * 100_000 + b"\n")
        await writer.drain()
        answer = await asyncio.wait_for(reader.readline(), 5)
    finally:
        writer.close()
    assert answer == b"ERROR expected: TICKET <ticket> (get one with SshService.CreateSshTicket)\n"
    # Refused as a call without a credential is: audited.
    request = aupb.ListAuditEventsRequest(action="ssh.tunnel")
    [event] = (await local_cluster.audit.ListAuditEvents(request, timeout=5)).events
    assert (event.actor, event.outcome) == ("anonymous", aupb.AUDIT_OUTCOME_REFUSED)
    assert event.detail.startswith("expected: TICKET <ticket>")


async def test_a_request_line_past_the_limit_is_refused_without_waiting_for_its_end(
    local_cluster: LocalCluster,
) -> None:
    """1 KiB (docs/limits.md; a ticket line is 51 bytes) and no newline yet: the Host reads
    no more of it (it does not buffer a stranger's bytes until REQUEST_TIMEOUT). It read up
    to 1 MiB, so a connection that sent 1 KiB was answered only at REQUEST_TIMEOUT."""
    reader, writer = await _to_the_proxy(local_cluster)
    try:
        writer.write(b"TICKET " + b"x" * (1024 - len(b"TICKET ")))
        await writer.drain()
        answer = await asyncio.wait_for(reader.readline(), 2 * ssh_proxy.REQUEST_TIMEOUT)
    finally:
        writer.close()
    assert answer == b"ERROR expected: TICKET <ticket> (get one with SshService.CreateSshTicket)\n"


async def test_an_address_holds_a_bounded_number_of_connections_before_their_request(
    local_cluster: LocalCluster,
) -> None:
    """Each connection that has not sent its request line (nor, a Runner's, its proof)
    holds a buffer for up to REQUEST_TIMEOUT: one address gets MAX_SSH_PROXY_WAITING, one
    more is refused at once and closed (not audited: no refusal of a right), and one whose
    lines were read gives its place back."""
    waiting = [await _to_the_proxy(local_cluster) for _ in range(MAX_SSH_PROXY_WAITING)]
    first_reader, first_writer = waiting[0]
    try:
        first_writer.write(b"TUNNEL 1\n")
        await first_writer.drain()
        assert (await asyncio.wait_for(first_reader.readline(), 5)).startswith(b"CHALLENGE ")
        reader, writer = await _to_the_proxy(local_cluster)
        try:
            answer = await asyncio.wait_for(reader.readline(), 5)
            assert await asyncio.wait_for(reader.read(), 5) == b""
        finally:
            writer.close()
        assert answer == (
            b"ERROR ipv4:127.0.0.1 holds 32 connections that have not sent their request "
            b"line, the most allowed (each waits at most 10 s)\n"
        )
        first_writer.write(b"proof\n")
        await first_writer.drain()
        refused = "no tunnel 1 waits for that proof"
        assert await asyncio.wait_for(first_reader.readline(), 5) == f"ERROR {refused}\n".encode()
        assert await _answer_to(local_cluster, "unknown") == (
            b"ERROR unknown, used or expired ticket (ask for a new one)\n"
        )
    finally:
        for _, waiting_writer in waiting:
            waiting_writer.close()
    # A stranger's refusals of a minute are written once, the first of them.
    request = aupb.ListAuditEventsRequest(action="ssh.tunnel")
    events = (await local_cluster.audit.ListAuditEvents(request, timeout=5)).events
    assert [e.detail for e in events] == [refused]


async def test_an_open_session_ends_once_its_token_is_revoked(local_cluster: LocalCluster) -> None:
    runner, issued = await _alices_vps_ticket(local_cluster)
    reader, writer = await _to_the_proxy(local_cluster)
    try:
        tunnel = await _session(runner, issued, reader, writer)
        writer.write(b"before")
        await writer.drain()
        await eventually(lambda: runner.tunnel_bytes == [b"before"], what="bytes up")
        data = rpb.TunnelData(tunnel_id=tunnel, data=b"hello")
        runner.send(rpb.ConnectRequest(tunnel_data=data))
        assert await asyncio.wait_for(reader.readexactly(5), 5) == b"hello"

        await local_cluster.access.DeleteUser(apb.DeleteUserRequest(name="alice"), timeout=5)
        # The session ends (at once: writing to it may find it reset): nothing more comes
        # through, either way.
        with contextlib.suppress(ConnectionResetError):
            writer.write(b"after")
            await writer.drain()
        runner.send(rpb.ConnectRequest(tunnel_data=rpb.TunnelData(tunnel_id=tunnel, data=b"late")))
        with contextlib.suppress(ConnectionResetError):
            assert await asyncio.wait_for(reader.read(), 5) == b""
    finally:
        writer.close()
    assert runner.tunnel_bytes == [b"before"]
    events = await local_cluster.audit.ListAuditEvents(
        aupb.ListAuditEventsRequest(action="ssh.tunnel"), timeout=5
    )
    assert [(e.actor, e.outcome) for e in events.events] == [("alice", aupb.AUDIT_OUTCOME_REFUSED)]
    assert events.events[0].detail.endswith(" was revoked")


async def test_an_idle_session_ends_as_soon_as_its_token_is_revoked(
    local_cluster: LocalCluster,
) -> None:
    """ssh sends no keepalive by default: an idle session would stay open for the revoked
    token until somebody typed."""
    runner, issued = await _alices_vps_ticket(local_cluster)
    reader, writer = await _to_the_proxy(local_cluster)
    try:
        await _session(runner, issued, reader, writer)
        reply = await local_cluster.access.ListTokens(
            apb.ListTokensRequest(user="alice"), timeout=5
        )
        [token] = reply.tokens
        await local_cluster.access.RevokeToken(
            apb.RevokeTokenRequest(token_id=token.token_id), timeout=5
        )
        assert await asyncio.wait_for(reader.read(), 10) == b""
    finally:
        writer.close()
    events = await local_cluster.audit.ListAuditEvents(
        aupb.ListAuditEventsRequest(action="ssh.tunnel"), timeout=5
    )
    # Naming the VPS the session reached.
    assert [(e.actor, e.target, e.outcome, e.detail) for e in events.events] == [
        (
            "alice",
            str(runner.tunnel_opens[0].task_id),
            aupb.AUDIT_OUTCOME_REFUSED,
            f"API token {token.token_id} was revoked",
        )
    ]


async def test_a_session_ends_when_its_users_role_changes(local_cluster: LocalCluster) -> None:
    """Let in under one role (an operator may reach other users' VPS), a session does not
    carry on under another."""
    runner, issued = await _alices_vps_ticket(local_cluster)
    reader, writer = await _to_the_proxy(local_cluster)
    try:
        await _session(runner, issued, reader, writer)
        request = apb.SetUserRoleRequest(name="alice", role=Role.OPERATOR.pb)
        await local_cluster.access.SetUserRole(request, timeout=5)
        assert await asyncio.wait_for(reader.read(), 10) == b""
    finally:
        writer.close()
    events = await local_cluster.audit.ListAuditEvents(
        aupb.ListAuditEventsRequest(action="ssh.tunnel"), timeout=5
    )
    assert [(e.actor, e.outcome, e.detail) for e in events.events] == [
        (
            "alice",
            aupb.AUDIT_OUTCOME_REFUSED,
            "the role of alice changed from user to operator: call again",
        )
    ]


async def test_an_idle_session_ends_when_its_token_expires(local_cluster: LocalCluster) -> None:
    runner = await local_cluster.add_runner("a", answer=HOLD)
    alice = await local_cluster.add_user("alice")
    request = tpb.SubmitTaskRequest(kind=task_pb2.TASK_KIND_VPS, ssh_public_key=SSH_KEY)
    [vps] = (await alice.tasks.SubmitTask(request, timeout=5)).tasks
    await local_cluster.wait_status(vps.task_id, TaskStatus.RUNNING)
    soon = Timestamp()
    soon.FromDatetime(datetime.now(UTC) + timedelta(seconds=2))
    short = await alice.access.CreateToken(apb.CreateTokenRequest(expires_at=soon), timeout=5)
    on_short = local_cluster.client(short.secret, "alice")
    issued = await on_short.ssh.CreateSshTicket(spb.CreateSshTicketRequest(task_id=vps.task_id))
    reader, writer = await _to_the_proxy(local_cluster)
    try:
        await _session(runner, issued, reader, writer)
        assert await asyncio.wait_for(reader.read(), 10) == b""
    finally:
        writer.close()
    events = await local_cluster.audit.ListAuditEvents(
        aupb.ListAuditEventsRequest(action="ssh.tunnel"), timeout=5
    )
    assert [(e.actor, e.outcome) for e in events.events] == [("alice", aupb.AUDIT_OUTCOME_REFUSED)]
    assert events.events[0].detail.startswith(f"API token {short.token.token_id} expired at ")


async def test_a_tunnel_its_runner_does_not_open_says_so(
    local_cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The proxy's answer names the hop that was slow, not a bare "timed out"."""
    monkeypatch.setattr(ssh_proxy, "OPEN_TIMEOUT", 0.2)
    runner, issued = await _alices_vps_ticket(local_cluster)
    answer = await _answer_to(local_cluster, issued.ticket)
    assert runner.tunnel_opens  # asked, never answered
    assert answer == b"ERROR the VPS's runner did not open the tunnel within 0.2 s\n"


async def test_a_client_that_sends_no_request_is_told_so(
    local_cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ssh_proxy, "REQUEST_TIMEOUT", 0.2)
    reader, writer = await _to_the_proxy(local_cluster)
    try:
        answer = await asyncio.wait_for(reader.readline(), 5)
    finally:
        writer.close()
    assert answer == b"ERROR no request line within 0.2 s\n"


def test_a_holder_has_a_bounded_number_of_unused_tickets() -> None:
    """Asking in a loop drops the holder's oldest unused tickets, not anybody else's; the
    newest are good, and expired ones leave the map."""
    tickets = ssh_tickets.SshTickets(lifetime=30.0)
    alice, bob = Principal(Kind.USER, "alice"), Principal(Kind.USER, "bob")
    bobs, _ = tickets.issue(7, bob)
    issued = [tickets.issue(1, alice)[0] for _ in range(ssh_tickets.MAX_PER_HOLDER + 10)]
    assert len(tickets._tickets) == ssh_tickets.MAX_PER_HOLDER + 1
    with pytest.raises(Unauthenticated):
        tickets.redeem(issued[0])
    assert tickets.redeem(issued[-1]).task_id == 1
    assert tickets.redeem(bobs).who == bob
    short = ssh_tickets.SshTickets(lifetime=0.0)
    short.issue(1, alice)
    short.issue(2, bob)
    assert len(short._tickets) == 1 and set(short._held) == {bob}
