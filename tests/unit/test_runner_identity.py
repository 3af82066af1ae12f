"""Runner identity through the runner protocol of a real Host over TLS: a Runner joins with
the join token and from then on is its credential; nobody else can take its name, its
stream or its tasks, and it reports only on tasks dispatched to it.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import grpc
import pytest

from hakuriver_common.credentials import CredentialsError
from hakuriver_common.proto.hakuriver.v1 import (
    access_service_pb2 as apb,
    audit_service_pb2 as aupb,
    node_service_pb2 as npb,
    runner_service_pb2 as rpb,
    runner_service_pb2_grpc,
    ssh_service_pb2 as spb,
    task_pb2,
)
from hakuriver_common.roles import RUNNER_CREDENTIAL_PREFIX
from hakuriver_common.statuses import NodeStatus, TaskStatus
from hakuriver_runner.credential import RunnerIdentity
from tests.fake_runner import HOLD, STDOUT, FakeRunner, eventually
from tests.unit.conftest import MakeCluster
from tests.unit.local_cluster import LocalCluster, local_config, status_of

CODE = grpc.StatusCode
MARKER_TASK = 42  # no task has this id
SSH_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE1KjKdQFMK2E8kVmbb3r2Dk5c6bwSvpZ0ZyYy2sQkVx"


async def _refused(runner: FakeRunner) -> tuple[grpc.StatusCode, str]:
    """Start a Runner the Host must refuse: the code and message it got."""
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await runner.start()
    await runner.stop()
    return raised.value.code(), raised.value.details() or ""


async def _credentials(cluster: LocalCluster) -> dict[str, bool]:
    """Hostname -> revoked, as an admin lists them."""
    reply = await cluster.access.ListRunnerCredentials(
        apb.ListRunnerCredentialsRequest(), timeout=5
    )
    return {c.hostname: c.HasField("revoked_at") for c in reply.credentials}


async def test_a_runner_joins_with_the_join_token_and_returns_with_its_credential(
    local_cluster: LocalCluster,
) -> None:
    runner = await local_cluster.add_runner("a")
    assert runner.ack is not None
    credential = runner.ack.runner_credential
    assert credential.startswith(RUNNER_CREDENTIAL_PREFIX)
    assert credential != local_cluster.config.auth.join_token
    assert await _credentials(local_cluster) == {"a": False}
    # It comes back presenting the credential: nothing new is issued, and it runs tasks.
    ack = await runner.connect()
    assert ack.runner_credential == ""
    assert runner.credential == credential and runner.registrations == 2
    task = await local_cluster.submit()
    assert status_of(await local_cluster.wait_status(task.task_id)) is TaskStatus.COMPLETED
    # Also after a Host restart: the credential is stored, not only held in memory.
    await local_cluster.restart_host()
    assert runner.registrations == 3 and runner.credential == credential


async def test_a_joiner_claiming_a_registered_name_is_refused_and_the_node_keeps_its_task(
    local_cluster: LocalCluster,
) -> None:
    """The attack of the issue: a process with the join token (or none) registers under an
    existing node's name with more cores. It is refused; the real Runner keeps its stream
    and its running task, and new tasks still go to it."""
    real = await local_cluster.add_runner("a", answer=HOLD)
    (task,) = await local_cluster.submit_running()
    impostor = FakeRunner(local_cluster.config, "a", cores=1000, reconnect=False)
    code, details = await _refused(impostor)
    assert code == CODE.PERMISSION_DENIED
    assert details.startswith(
        "register: runner a is registered with its own credential; the join token cannot "
        "take its place"
    )
    assert impostor.dispatched == [] and impostor.ack is None
    second = await local_cluster.submit()
    await local_cluster.wait_status(second.task_id, TaskStatus.RUNNING)
    assert real.dispatched == [task.task_id, second.task_id]
    assert real.registrations == 1 and real.connected.is_set()
    node = await local_cluster.node("a")
    assert node.total_cores == real.cores
    real.finish(task.task_id, 0, stdout=b"real\n")
    done = await local_cluster.wait_status(task.task_id)
    assert status_of(done) is TaskStatus.COMPLETED
    statuses = [status for status, _ in await local_cluster.events(task.task_id)]
    assert TaskStatus.LOST not in statuses
    assert await local_cluster.read_log(task.task_id) == b"real\n"


async def test_a_credential_opens_only_its_own_node(local_cluster: LocalCluster) -> None:
    a = await local_cluster.add_runner("a")
    await local_cluster.add_runner("b", answer=HOLD)
    code, details = await _refused(
        FakeRunner(local_cluster.config, "b", credential=a.credential, reconnect=False)
    )
    assert (code, details) == (
        CODE.PERMISSION_DENIED,
        "register: this credential belongs to runner a, not b",
    )
    # Nor a name nobody holds yet: a credential is not a join token.
    code, details = await _refused(
        FakeRunner(local_cluster.config, "c", credential=a.credential, reconnect=False)
    )
    assert code == CODE.PERMISSION_DENIED and "belongs to runner a" in details
    assert await _credentials(local_cluster) == {"a": False, "b": False}


@pytest.mark.parametrize(
    ("secret", "refused"),
    [
        (RUNNER_CREDENTIAL_PREFIX + "x" * 43, "unknown runner credential"),
        ("hkrj_not-the-join-token", "wrong join token: it is not this Host's auth.join_token"),
        ("anything", "unknown API token"),
    ],
    ids=["unknown-credential", "wrong-join-token", "garbage"],
)
async def test_a_runner_with_a_wrong_secret_is_unauthenticated(
    local_cluster: LocalCluster, secret: str, refused: str
) -> None:
    runner = FakeRunner(local_cluster.config, "evil", credential=secret, reconnect=False)
    assert await _refused(runner) == (CODE.UNAUTHENTICATED, refused)
    assert await _credentials(local_cluster) == {}


async def test_a_host_with_no_join_token_says_it_takes_no_new_runners(
    make_local_cluster: MakeCluster,
) -> None:
    """Its refusal said "wrong join token: it is not this Host's auth.join_token", sending
    the admin to compare two tokens when the Host had none (closed to new Runners)."""
    cluster = await make_local_cluster(auth={"join_token": ""})
    runner = FakeRunner(cluster.config, "new", credential="hkrj_" + "x" * 43, reconnect=False)
    assert await _refused(runner) == (
        CODE.UNAUTHENTICATED,
        "this Host takes no new Runners: its auth.join_token is empty (an admin sets one and "
        "restarts it to let Runners join)",
    )
    assert await _credentials(cluster) == {}


async def test_a_runner_with_no_secret_is_unauthenticated(local_cluster: LocalCluster) -> None:
    stub = runner_service_pb2_grpc.RunnerServiceStub(local_cluster.channel())
    call = stub.Connect(timeout=5)
    register = rpb.RegisterRunner(hostname="evil", total_cores=1000, total_memory_bytes=2**40)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call.write(rpb.ConnectRequest(register=register))
        await call.read()
    assert raised.value.code() == CODE.UNAUTHENTICATED
    assert (raised.value.details() or "").startswith("no credential")
    assert [
        n.hostname
        for n in (await local_cluster.nodes.ListNodes(npb.ListNodesRequest(), timeout=5)).nodes
    ] == []


async def test_an_api_token_does_not_open_the_runner_stream(local_cluster: LocalCluster) -> None:
    runner = FakeRunner(
        local_cluster.config, "evil", credential=local_cluster.admin_token, reconnect=False
    )
    code, details = await _refused(runner)
    assert code == CODE.PERMISSION_DENIED
    assert details.startswith("/hakuriver.v1.RunnerService/Connect is for Runners")


async def test_a_revoked_credential_closes_the_stream_and_the_runner_joins_again(
    make_local_cluster: MakeCluster,
) -> None:
    # Slow enough to call a Runner silent that its task survives the time it is away.
    local_cluster = await make_local_cluster(timing={"heartbeat_timeout_factor": 50})
    runner = await local_cluster.add_runner("a", answer=HOLD, reconnect=False)
    (task,) = await local_cluster.submit_running()
    old = runner.credential
    reply = await local_cluster.access.RevokeRunnerCredential(
        apb.RevokeRunnerCredentialRequest(hostname="a"), timeout=5
    )
    assert reply.credential.hostname == "a" and reply.credential.HasField("revoked_at")
    await eventually(lambda: not runner.connected.is_set(), what="the stream to be closed")
    assert await _credentials(local_cluster) == {"a": True}
    code, details = await _refused(
        FakeRunner(local_cluster.config, "a", credential=old, reconnect=False)
    )
    assert code == CODE.UNAUTHENTICATED
    assert details.startswith("the credential of runner a was revoked")
    # Audited as that Runner's attempt, as a revoked API token names its user.
    refusals = await local_cluster.audit.ListAuditEvents(
        aupb.ListAuditEventsRequest(
            action="rpc", outcome=aupb.AUDIT_OUTCOME_REFUSED, actor="runner:a"
        ),
        timeout=5,
    )
    assert [e.detail for e in refusals.events] == [f"Unauthenticated: {details}"]
    # Without its credential it joins again with the join token, keeping its task.
    runner.credential = ""
    ack = await runner.connect()
    assert ack.runner_credential.startswith(RUNNER_CREDENTIAL_PREFIX)
    assert ack.runner_credential != old
    assert [adopted.task_id for adopted in ack.adopt] == [task.task_id]
    assert await _credentials(local_cluster) == {"a": False}
    await local_cluster.wait_node("a", NodeStatus.ONLINE)
    runner.finish(task.task_id, 0)
    assert status_of(await local_cluster.wait_status(task.task_id)) is TaskStatus.COMPLETED


async def test_revoking_an_unknown_runner_answers_not_found(local_cluster: LocalCluster) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await local_cluster.access.RevokeRunnerCredential(
            apb.RevokeRunnerCredentialRequest(hostname="ghost"), timeout=5
        )
    assert raised.value.code() == CODE.NOT_FOUND


def _chunk(task_id: int, offset: int, data: bytes) -> rpb.ConnectRequest:
    return rpb.ConnectRequest(
        log_chunk=rpb.LogChunk(task_id=task_id, stream=STDOUT, offset=offset, data=data)
    )


def _exited(task_id: int, exit_code: int) -> rpb.ConnectRequest:
    report = rpb.TaskStateReport(
        task_id=task_id, state=rpb.RUNNER_TASK_STATE_EXITED, exit_code=exit_code
    )
    return rpb.ConnectRequest(task_state=report)


async def _refused_reports(cluster: LocalCluster, hostname: str) -> list[str]:
    """Task ids of the reports of ``hostname`` the Host refused, from the audit log."""
    reply = await cluster.audit.ListAuditEvents(
        aupb.ListAuditEventsRequest(
            actor=f"runner:{hostname}",
            action="runner.report",
            outcome=aupb.AUDIT_OUTCOME_REFUSED,
        ),
        timeout=5,
    )
    return [event.target for event in reply.events]


async def _handled_by_host(cluster: LocalCluster, runner: FakeRunner) -> None:
    """Wait until the Host has handled everything ``runner`` sent so far: it sends a log
    chunk for a task nobody has, whose refusal is audited once the Host read it (one stream
    is read in order). Once per runner."""
    runner.send(_chunk(MARKER_TASK, 0, b"marker"))

    async def handled() -> bool:
        return str(MARKER_TASK) in await _refused_reports(cluster, runner.hostname)

    await eventually(handled, what=f"the Host to handle what {runner.hostname} sent")


async def test_a_runner_cannot_report_on_another_nodes_tasks(local_cluster: LocalCluster) -> None:
    """Forged output and a forged exit for a running task, and output over a finished one's:
    none changes them. The real Runner's output and exit still count."""
    a = await local_cluster.add_runner("a", answer=HOLD)
    b = await local_cluster.add_runner("b", answer=HOLD)
    on_a = [task_pb2.Target(hostname="a")]
    finished = await local_cluster.submit("done", targets=on_a)
    running = await local_cluster.submit("long", targets=on_a)
    await local_cluster.wait_status(running.task_id, TaskStatus.RUNNING)
    await local_cluster.wait_status(finished.task_id, TaskStatus.RUNNING)
    a.finish(finished.task_id, 0, stdout=b"done\n")
    await local_cluster.wait_status(finished.task_id, TaskStatus.COMPLETED)
    a.write(running.task_id, b"real\n")
    await eventually(
        lambda: local_cluster.read_log(running.task_id), what="the running task's output"
    )

    for message in (
        _chunk(running.task_id, len(b"real\n"), b"forged\n"),
        _chunk(running.task_id, 1 << 20, b"far away\n"),
        _exited(running.task_id, 0),
        _chunk(finished.task_id, 0, b"FORGED\n"),
        _chunk(finished.task_id, len(b"done\n"), b"more\n"),
        _exited(finished.task_id, 1),
    ):
        b.send(message)
    await _handled_by_host(local_cluster, b)

    assert status_of(await local_cluster.get(running.task_id)) is TaskStatus.RUNNING
    assert await local_cluster.read_log(running.task_id) == b"real\n"
    assert await local_cluster.read_log(finished.task_id) == b"done\n"
    assert status_of(await local_cluster.get(finished.task_id)) is TaskStatus.COMPLETED
    a.finish(running.task_id, 3, stdout=b"end\n")
    ended = await local_cluster.wait_status(running.task_id)
    assert (status_of(ended), ended.exit_code) == (TaskStatus.FAILED, 3)
    assert await local_cluster.read_log(running.task_id) == b"real\nend\n"
    assert b.running == [] and b.registrations == 1
    # In the audit log once per task, however many messages b sent about it.
    refused = await _refused_reports(local_cluster, "b")
    assert sorted(refused) == sorted(
        [str(running.task_id), str(finished.task_id), str(MARKER_TASK)]
    )


async def test_output_of_its_own_task_the_host_killed_is_not_audited(
    make_local_cluster: MakeCluster,
) -> None:
    """The Host marks a task killed when its Runner does not confirm; the Runner's output
    of it that arrives later is dropped, and was audited as a report on a task not its own,
    as a forgery is (noise that looks like an attack)."""
    cluster = await make_local_cluster(timing={"control_timeout_seconds": 0.3})
    runner = await cluster.add_runner("a", answer=HOLD, answer_kills=False)
    [task] = await cluster.submit_running()
    runner.write(task.task_id, b"before\n")
    await eventually(lambda: cluster.read_log(task.task_id), what="the task's output")
    assert status_of(await cluster.kill(task.task_id)) is TaskStatus.KILLED
    runner.write(task.task_id, b"after the kill\n")
    await _handled_by_host(cluster, runner)
    assert await _refused_reports(cluster, "a") == [str(MARKER_TASK)]
    assert await cluster.read_log(task.task_id) == b"before\n"


async def test_two_joiners_racing_for_one_name_get_one_credential(
    local_cluster: LocalCluster,
) -> None:
    """Both present the join token for a name nobody holds yet, at once: one joins, the
    other is refused as any later claimant is, and the winner's credential stays valid."""
    first, second = (
        FakeRunner(local_cluster.config, "x", reconnect=False, heartbeats=False) for _ in range(2)
    )
    local_cluster.runners += [first, second]
    outcomes = await asyncio.gather(first.start(), second.start(), return_exceptions=True)
    joined = [r for r, o in zip((first, second), outcomes, strict=True) if o is r]
    refused = [o for o in outcomes if isinstance(o, grpc.aio.AioRpcError)]
    assert len(joined) == 1, outcomes
    assert [e.code() for e in refused] == [CODE.PERMISSION_DENIED]
    (winner,) = joined
    assert winner.connected.is_set()
    ack = await winner.connect()
    assert ack.runner_credential == "" and winner.registrations == 2


async def test_a_runner_cannot_feed_or_close_another_runners_tunnel(
    local_cluster: LocalCluster,
) -> None:
    """Runner b knows the id of a tunnel the Host opened on a (ids are small integers): its
    opened, data and close messages for it change nothing; a's own answer goes through."""
    a = await local_cluster.add_runner("a", answer=HOLD)
    b = await local_cluster.add_runner("b", answer=HOLD)
    vps = await local_cluster.submit(
        "",
        kind=task_pb2.TASK_KIND_VPS,
        ssh_public_key=SSH_KEY,
        targets=[task_pb2.Target(hostname="a")],
    )
    await local_cluster.wait_status(vps.task_id, TaskStatus.RUNNING)
    request = spb.CreateSshTicketRequest(task_id=vps.task_id)
    ticket = (await local_cluster.ssh.CreateSshTicket(request, timeout=5)).ticket
    assert local_cluster.server is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", local_cluster.server.ssh_proxy_port)
    try:
        writer.write(f"TICKET {ticket}\n".encode())
        await writer.drain()
        (opened,) = await eventually(lambda: a.tunnel_opens, what="the tunnel to be opened")
        tunnel_id = opened.tunnel_id
        for message in (
            rpb.ConnectRequest(tunnel_opened=rpb.TunnelOpened(tunnel_id=tunnel_id)),
            rpb.ConnectRequest(tunnel_data=rpb.TunnelData(tunnel_id=tunnel_id, data=b"forged")),
            rpb.ConnectRequest(tunnel_close=rpb.TunnelClose(tunnel_id=tunnel_id, error="no")),
        ):
            b.send(message)
        await _handled_by_host(local_cluster, b)
        a.send(rpb.ConnectRequest(tunnel_opened=rpb.TunnelOpened(tunnel_id=tunnel_id)))
        banner = b"SSH-2.0-OpenSSH_9.6\r\n"
        a.send(rpb.ConnectRequest(tunnel_data=rpb.TunnelData(tunnel_id=tunnel_id, data=banner)))
        assert await asyncio.wait_for(reader.readline(), 5) == b"SUCCESS\n"
        assert await asyncio.wait_for(reader.readexactly(len(banner)), 5) == banner
    finally:
        writer.close()
        await writer.wait_closed()


def test_a_state_dir_that_cannot_keep_the_credential_stops_the_join(tmp_path: Path) -> None:
    # Joining first would leave the name registered with a credential the Runner lost:
    # every later join with the token refused until an admin revokes it.
    (tmp_path / "file").write_text("")
    state_dir = tmp_path / "file" / "state"
    config = local_config(tmp_path, runner={"state_dir": state_dir})
    with pytest.raises(CredentialsError) as raised:
        RunnerIdentity(config).secret()
    assert str(raised.value) == (
        f"cannot keep a credential in runner.state_dir {state_dir}: Not a directory"
    )


async def test_two_runners_sharing_one_credential_are_named_in_a_warning(
    local_cluster: LocalCluster, caplog: pytest.LogCaptureFixture
) -> None:
    """A copied runner.state_dir: both Runners hold the credential, and each registration
    replaces the other's stream. The operator is told, once, not left with INFO lines."""
    a = await local_cluster.add_runner("a", reconnect_delay=0.01)
    twin = FakeRunner(local_cluster.config, "a", credential=a.credential, reconnect_delay=0.01)
    caplog.set_level(logging.INFO, logger="hakuriver_host.nodes")
    await twin.start()
    try:
        warned = await eventually(
            lambda: [r for r in caplog.records if r.levelno == logging.WARNING],
            what="a warning about runner a's streams",
        )
    finally:
        await twin.stop()
    assert len(warned) == 1
    assert warned[0].getMessage() == (
        "runner a: its stream was replaced by a new registration 5 times within 60s; "
        "are two Runners using one name and credential (a copied runner.state_dir)?"
    )
