"""The audit log through AuditService of a real Host over TLS: who submitted, killed and
changed tokens, users and runners, and every refusal, queryable by an admin only.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import grpc
import pytest

from hakuriver_cli import admin, direct
from hakuriver_common.proto.hakuriver.v1 import (
    access_pb2,
    access_service_pb2 as apb,
    audit_service_pb2 as aupb,
    node_service_pb2 as npb,
    task_service_pb2 as tpb,
)
from hakuriver_common.roles import Role
from hakuriver_common.statuses import TaskStatus
from hakuriver_host import audit, group_commit
from tests.fake_runner import HOLD, FakeRunner, eventually
from tests.unit.cli_threads import exit_code
from tests.unit.conftest import MakeCluster
from tests.unit.local_cluster import BRIEF_LOCK_WAIT, Client, LocalCluster

CODE = grpc.StatusCode
ALLOWED = aupb.AUDIT_OUTCOME_ALLOWED
REFUSED = aupb.AUDIT_OUTCOME_REFUSED
Row = tuple[str, str, str, int]  # actor, action, target, outcome


async def _events(client: LocalCluster | Client, **query: object) -> list[aupb.AuditEvent]:
    request = aupb.ListAuditEventsRequest(**query)  # type: ignore[arg-type]
    return list((await client.audit.ListAuditEvents(request, timeout=5)).events)


def _rows(events: list[aupb.AuditEvent]) -> set[Row]:
    return {(e.actor, e.action, e.target, e.outcome) for e in events}


def _one(events: list[aupb.AuditEvent], actor: str, action: str, target: str) -> aupb.AuditEvent:
    found = [e for e in events if (e.actor, e.action, e.target) == (actor, action, target)]
    assert len(found) == 1, [(e.actor, e.action, e.target) for e in events]
    return found[0]


@contextmanager
def _locked(cluster: LocalCluster) -> Iterator[None]:
    """The Host's database locked by another program (a sqlite3 shell in a transaction)."""
    with closing(sqlite3.connect(cluster.config.database.db_file, isolation_level=None)) as (other):
        other.execute("BEGIN IMMEDIATE")
        yield


async def _refused(call: object) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call  # type: ignore[misc]
    return raised.value.code()


async def test_the_audit_log_names_who_did_what(local_cluster: LocalCluster) -> None:
    await local_cluster.add_runner("a", answer=HOLD)
    alice = await local_cluster.add_user("alice")
    task = (await alice.tasks.SubmitTask(tpb.SubmitTaskRequest(command="x"), timeout=5)).tasks[0]
    await local_cluster.wait_status(task.task_id, TaskStatus.RUNNING)
    await alice.tasks.KillTask(tpb.KillTaskRequest(task_id=task.task_id), timeout=5)
    made = await alice.access.CreateToken(apb.CreateTokenRequest(description="laptop"), timeout=5)
    await alice.access.RevokeToken(apb.RevokeTokenRequest(token_id=made.token.token_id))
    await local_cluster.nodes.DrainNode(npb.DrainNodeRequest(hostname="a"), timeout=5)
    await local_cluster.access.DeleteUser(apb.DeleteUserRequest(name="alice"), timeout=5)

    events = await _events(local_cluster, limit=1000)
    assert {
        ("admin", "user.create", "alice", ALLOWED),
        ("alice", "task.submit", str(task.task_id), ALLOWED),
        ("alice", "task.kill", str(task.task_id), ALLOWED),
        ("alice", "token.create", made.token.token_id, ALLOWED),
        ("alice", "token.revoke", made.token.token_id, ALLOWED),
        ("admin", "node.drain", "a", ALLOWED),
        ("admin", "user.delete", "alice", ALLOWED),
        ("runner:a", "runner.join", "a", ALLOWED),
    } <= _rows(events)
    # The admin's token for alice names her; every row says when, who (with role) and from.
    created = [e for e in events if e.action == "token.create" and e.actor == "admin"]
    assert [e.detail for e in created] == ["for alice"]
    kill = _one(events, "alice", "task.kill", str(task.task_id))
    assert kill.role == access_pb2.ROLE_USER and kill.at.seconds > 0
    join = _one(events, "runner:a", "runner.join", "a")
    assert join.peer.startswith("ipv4:127.0.0.1:")
    # Actions recorded by the core carry the caller's address too.
    assert kill.peer.startswith("ipv4:127.0.0.1:")
    # Newest first, and no secret anywhere.
    assert [e.id for e in events] == sorted((e.id for e in events), reverse=True)
    wire = b"".join(e.SerializeToString() for e in events)
    assert made.secret.encode() not in wire and alice.token.encode() not in wire


async def test_whole_batch_control_is_audited_once_for_the_batch(
    local_cluster: LocalCluster,
) -> None:
    await local_cluster.add_runner("a", cores=4, answer=HOLD)
    alice = await local_cluster.add_user("alice")
    request = tpb.SubmitTaskRequest(command="x", array=tpb.TaskArray(indices=[1, 2]))
    reply = await alice.tasks.SubmitTask(request, timeout=5)
    batch_id = reply.batch_id
    for task in reply.tasks:
        await local_cluster.wait_status(task.task_id, TaskStatus.RUNNING)
    await alice.tasks.PauseBatch(tpb.PauseBatchRequest(batch_id=batch_id), timeout=5)
    await alice.tasks.ResumeBatch(tpb.ResumeBatchRequest(batch_id=batch_id), timeout=5)
    await alice.tasks.KillBatch(tpb.KillBatchRequest(batch_id=batch_id), timeout=5)
    rows = _rows(await _events(local_cluster, limit=1000))
    for action in ("batch.pause", "batch.resume", "batch.kill"):
        assert ("alice", action, str(batch_id), ALLOWED) in rows, action


async def test_a_role_given_to_a_user_who_has_it_is_no_change_audited(
    local_cluster: LocalCluster,
) -> None:
    """It was audited as a change from the role to itself ("user -> user"): a row for
    nothing done, among the rows an admin reads for who changed whose rights."""
    await local_cluster.add_user("alice")
    same = apb.SetUserRoleRequest(name="alice", role=access_pb2.ROLE_USER)
    kept = await local_cluster.access.SetUserRole(same, timeout=5)
    assert kept.user.role == access_pb2.ROLE_USER
    assert await _events(local_cluster, action="user.role") == []
    other = apb.SetUserRoleRequest(name="alice", role=access_pb2.ROLE_OPERATOR)
    await local_cluster.access.SetUserRole(other, timeout=5)
    await local_cluster.access.SetUserRole(other, timeout=5)
    [changed] = await _events(local_cluster, action="user.role")
    assert (changed.actor, changed.target, changed.detail) == ("admin", "alice", "user -> operator")


async def test_set_role_to_the_role_a_user_has_says_so(
    local_cluster: LocalCluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`hakuriver.admin user set-role alice user` for alice, a user already, printed "user
    alice is now user" (nothing changed, and nothing was audited). SetUserRole answers the
    role the user had (previous_role), and the tool says "already"."""
    await local_cluster.add_user("alice")
    config = str(local_cluster.cli_config(tmp_path / "client.toml"))

    async def set_role(role: str) -> str:
        argv = ["user", "set-role", "alice", role, "--config", config]
        assert await asyncio.to_thread(exit_code, direct.run, admin.app, "a", argv) == 0
        return capsys.readouterr().out

    assert await set_role("user") == "user alice is already user\n"
    assert await set_role("operator") == "user alice is now operator\n"
    assert await set_role("operator") == "user alice is already operator\n"
    [changed] = await eventually(
        lambda: _events(local_cluster, action="user.role"), what="the change audited"
    )
    assert changed.detail == "user -> operator"
    other = apb.SetUserRoleRequest(name="alice", role=access_pb2.ROLE_ADMIN)
    reply = await local_cluster.access.SetUserRole(other, timeout=5)
    assert (reply.previous_role, reply.user.role) == (access_pb2.ROLE_OPERATOR, other.role)


async def test_a_revocation_made_already_says_so(
    local_cluster: LocalCluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`hakuriver.admin token revoke ID` of a revoked token printed "revoked token ID of
    USER", and `runner revoke HOST` of a revoked credential "revoked the credential of
    runner HOST", as if either had been revoked then (nothing changed, nothing was
    audited). The answers say already_revoked, and the tool says "was already revoked"."""
    await local_cluster.add_runner("a")
    made = await local_cluster.access.CreateToken(apb.CreateTokenRequest(), timeout=5)
    token_id = made.token.token_id
    config = str(local_cluster.cli_config(tmp_path / "client.toml"))

    async def said(*argv: str) -> str:
        command = [*argv, "--config", config]
        assert await asyncio.to_thread(exit_code, direct.run, admin.app, "a", command) == 0
        return capsys.readouterr().out

    assert await said("token", "revoke", token_id) == f"revoked token {token_id} of admin\n"
    again = await said("token", "revoke", token_id)
    assert again == f"token {token_id} of admin was already revoked\n"
    assert (await said("runner", "revoke", "a")).startswith("revoked the credential of runner a;")
    again = await said("runner", "revoke", "a")
    assert again == "the credential of runner a was already revoked\n"


async def test_a_drain_or_revocation_made_already_is_no_change_audited(
    local_cluster: LocalCluster,
) -> None:
    """A second DrainNode of a draining node (or UndrainNode of one taking work), a second
    RevokeToken of a token and RevokeRunnerCredential of a Runner were each audited again, as
    changes made then."""
    await local_cluster.add_runner("a")
    drain, undrain = npb.DrainNodeRequest(hostname="a"), npb.UndrainNodeRequest(hostname="a")
    await local_cluster.nodes.UndrainNode(undrain, timeout=5)
    for _ in range(2):
        await local_cluster.nodes.DrainNode(drain, timeout=5)
    for _ in range(2):
        await local_cluster.nodes.UndrainNode(undrain, timeout=5)
    made = await local_cluster.access.CreateToken(apb.CreateTokenRequest(), timeout=5)
    revoke = apb.RevokeTokenRequest(token_id=made.token.token_id)
    for already in (False, True):
        revoked = await local_cluster.access.RevokeToken(revoke, timeout=5)
        assert revoked.token.HasField("revoked_at")
        assert revoked.already_revoked is already
    runner = apb.RevokeRunnerCredentialRequest(hostname="a")
    for already in (False, True):
        gone = await local_cluster.access.RevokeRunnerCredential(runner, timeout=5)
        assert gone.credential.HasField("revoked_at")
        assert gone.already_revoked is already
    events = await _events(local_cluster, limit=1000)
    actions = ("node.", "token.revoke", "runner.revoke")
    changes = [(e.action, e.target) for e in events if e.action.startswith(actions)]
    assert changes == [
        ("runner.revoke", "a"),
        ("token.revoke", made.token.token_id),
        ("node.undrain", "a"),
        ("node.drain", "a"),
    ]


async def test_the_audit_log_is_listed_while_its_rows_wait_for_a_locked_database(
    make_local_cluster: MakeCluster,
) -> None:
    """A query while the database refuses writes lists what is stored (SQLite, locked by
    another program, is still read): one made as the first rows met the lock waited for
    them to be written, for as long as the lock was held (the caller's deadline)."""
    local_cluster = await make_local_cluster(database=BRIEF_LOCK_WAIT)
    bob = await local_cluster.add_user("bob")
    drain = npb.DrainNodeRequest(hostname="a")
    with _locked(local_cluster):
        assert await _refused(bob.nodes.DrainNode(drain, timeout=5)) == CODE.PERMISSION_DENIED
        listed = await local_cluster.audit.ListAuditEvents(
            aupb.ListAuditEventsRequest(actor="bob"), timeout=30
        )
    assert list(listed.events) == []  # its row was not stored yet


async def test_a_revocation_the_database_refused_is_made_when_asked_again(
    make_local_cluster: MakeCluster,
) -> None:
    """A RevokeToken, RevokeRunnerCredential or DeleteUser the database refused (locked by
    another program) left the token, credential or user's tokens revoked in memory only:
    asked again, the Host answered revoked, storing and auditing nothing (a user's tokens:
    deleted without them), and after a restart it let them in again."""
    local_cluster = await make_local_cluster(database=BRIEF_LOCK_WAIT)
    await local_cluster.add_runner("a")
    await local_cluster.add_user("bob")
    made = await local_cluster.access.CreateToken(apb.CreateTokenRequest(), timeout=5)
    bobs = await local_cluster.access.CreateToken(apb.CreateTokenRequest(user="bob"), timeout=5)
    revoke = apb.RevokeTokenRequest(token_id=made.token.token_id)
    runner = apb.RevokeRunnerCredentialRequest(hostname="a")
    delete = apb.DeleteUserRequest(name="bob")
    # The events so far stored (a query waits for them): none is held by the lock, which
    # the later ones would queue behind, past the query after it.
    await _events(local_cluster)
    with _locked(local_cluster):
        assert await _refused(local_cluster.access.RevokeToken(revoke, timeout=30)) == (
            CODE.UNAVAILABLE
        )
        assert await _refused(local_cluster.access.RevokeRunnerCredential(runner, timeout=30)) == (
            CODE.UNAVAILABLE
        )
        assert await _refused(local_cluster.access.DeleteUser(delete, timeout=30)) == (
            CODE.UNAVAILABLE
        )
    await local_cluster.access.RevokeToken(revoke, timeout=5)
    await local_cluster.access.RevokeRunnerCredential(runner, timeout=5)
    deleted = await local_cluster.access.DeleteUser(delete, timeout=5)
    assert deleted.revoked_tokens == 2  # the one it was added with, and the one made here
    events = await _events(local_cluster, limit=1000)
    revoked = [(e.action, e.target) for e in events if e.action.endswith(".revoke")]
    assert revoked == [("runner.revoke", "a"), ("token.revoke", made.token.token_id)]
    await local_cluster.restart_host(wait_runners=False)
    everybodys = apb.ListTokensRequest(user="*", include_inactive=True)
    listed = await local_cluster.access.ListTokens(everybodys, timeout=5)
    for token_id in (made.token.token_id, bobs.token.token_id):
        [token] = [t for t in listed.tokens if t.token_id == token_id]
        assert token.HasField("revoked_at")
    credentials = await local_cluster.access.ListRunnerCredentials(
        apb.ListRunnerCredentialsRequest(), timeout=5
    )
    [credential] = [c for c in credentials.credentials if c.hostname == "a"]
    assert credential.HasField("revoked_at")


async def test_a_revocation_asked_while_another_is_being_stored_waits_for_it(
    make_local_cluster: MakeCluster,
) -> None:
    """A RevokeToken asked while one of the same token was being written (the database
    locked by another program) answered at once that the token was revoked, from the mark
    the first had made in memory; the first was then refused and the mark undone: the
    token went on working, its revoker told it was revoked."""
    # Writes wait 1 s for the lock: the first revocation's mark is seen while it waits.
    local_cluster = await make_local_cluster(database={"busy_timeout_seconds": 1})
    bob = await local_cluster.add_user("bob")
    token_id = (await bob.access.WhoAmI(apb.WhoAmIRequest(), timeout=5)).token_id
    revoke = apb.RevokeTokenRequest(token_id=token_id)

    async def marked() -> bool:
        try:
            await bob.access.WhoAmI(apb.WhoAmIRequest(), timeout=5)
        except grpc.aio.AioRpcError as refused:
            return refused.code() == CODE.UNAUTHENTICATED
        return False

    with _locked(local_cluster):
        first = asyncio.ensure_future(local_cluster.access.RevokeToken(revoke, timeout=30))
        await eventually(marked, what="the first revocation made in memory")
        second = local_cluster.access.RevokeToken(revoke, timeout=30)
        assert await _refused(second) == CODE.UNAVAILABLE
        assert await _refused(first) == CODE.UNAVAILABLE
    assert (await bob.access.WhoAmI(apb.WhoAmIRequest(), timeout=5)).user == "bob"


async def test_every_refusal_is_audited(local_cluster: LocalCluster) -> None:
    await local_cluster.add_runner("a", answer=HOLD)
    alice = await local_cluster.add_user("alice")
    bob = await local_cluster.add_user("bob")
    task = (await alice.tasks.SubmitTask(tpb.SubmitTaskRequest(command="x"), timeout=5)).tasks[0]
    nobody = local_cluster.client("")
    assert await _refused(nobody.tasks.ListTasks(tpb.ListTasksRequest(), timeout=5)) == (
        CODE.UNAUTHENTICATED
    )
    drain = npb.DrainNodeRequest(hostname="a")
    assert await _refused(bob.nodes.DrainNode(drain, timeout=5)) == CODE.PERMISSION_DENIED
    privileged = tpb.SubmitTaskRequest(command="x", privileged=True)
    assert await _refused(bob.tasks.SubmitTask(privileged, timeout=5)) == CODE.PERMISSION_DENIED
    get = tpb.GetTaskRequest(task_id=task.task_id)
    assert await _refused(bob.tasks.GetTask(get, timeout=5)) == CODE.NOT_FOUND
    revoked = await alice.access.CreateToken(apb.CreateTokenRequest(), timeout=5)
    await alice.access.RevokeToken(apb.RevokeTokenRequest(token_id=revoked.token.token_id))
    with_revoked = local_cluster.client(revoked.secret)
    assert await _refused(with_revoked.tasks.ListTasks(tpb.ListTasksRequest(), timeout=5)) == (
        CODE.UNAUTHENTICATED
    )
    impostor = FakeRunner(local_cluster.config, "a", reconnect=False)
    with pytest.raises(grpc.aio.AioRpcError):
        await impostor.start()
    await impostor.stop()

    events = await _events(local_cluster, outcome=REFUSED)
    assert {e.outcome for e in events} == {REFUSED}
    unauthenticated = _one(events, "anonymous", "rpc", "/hakuriver.v1.TaskService/ListTasks")
    assert unauthenticated.detail.startswith("Unauthenticated: no credential")
    # A revoked token names whom it was issued to (the role is not vouched for).
    tried = _one(events, "alice", "rpc", "/hakuriver.v1.TaskService/ListTasks")
    assert tried.detail == f"Unauthenticated: API token {revoked.token.token_id} was revoked"
    denied = _one(events, "bob", "rpc", "/hakuriver.v1.NodeService/DrainNode")
    assert denied.detail == (
        "PermissionDenied: /hakuriver.v1.NodeService/DrainNode needs the operator role; bob is user"
    )
    assert denied.role == access_pb2.ROLE_USER
    submit = _one(events, "bob", "rpc", "/hakuriver.v1.TaskService/SubmitTask")
    assert submit.detail.startswith("PermissionDenied: privileged:")
    hidden = _one(events, "bob", "rpc", "/hakuriver.v1.TaskService/GetTask")
    assert hidden.detail == f"Hidden: task_id: task {task.task_id} not found"
    register = _one(events, "joining", "runner.register", "a")
    assert "registered with its own credential" in register.detail
    assert register.peer.startswith("ipv4:127.0.0.1:")
    # A missing task is no refusal.
    missing = tpb.GetTaskRequest(task_id=42)
    assert await _refused(bob.tasks.GetTask(missing, timeout=5)) == CODE.NOT_FOUND
    assert len(await _events(local_cluster, outcome=REFUSED)) == len(events)


async def test_audit_events_filter_by_actor_action_outcome_and_page(
    local_cluster: LocalCluster,
) -> None:
    await local_cluster.add_runner("a")
    alice = await local_cluster.add_user("alice")
    for _ in range(3):
        await alice.tasks.SubmitTask(tpb.SubmitTaskRequest(command="x"), timeout=5)
    await local_cluster.submit()
    await _refused(alice.access.ListUsers(apb.ListUsersRequest(), timeout=5))
    everything = await _events(local_cluster, limit=1000)

    by_alice = await _events(local_cluster, actor="alice")
    assert by_alice == [e for e in everything if e.actor == "alice"]
    assert {e.action for e in by_alice} == {"task.submit", "rpc"}
    submits = await _events(local_cluster, action="task.submit")
    assert [e.actor for e in submits] == ["admin", "alice", "alice", "alice"]
    alice_submits = await _events(local_cluster, actor="alice", action="task.submit")
    assert alice_submits == submits[1:]
    refused = await _events(local_cluster, outcome=REFUSED)
    assert [(e.actor, e.target) for e in refused] == [
        ("alice", "/hakuriver.v1.AccessService/ListUsers")
    ]
    allowed = await _events(local_cluster, outcome=ALLOWED, limit=1000)
    assert allowed == [e for e in everything if e.outcome == ALLOWED]
    # limit takes the newest; before_id pages on from there.
    newest = await _events(local_cluster, limit=2)
    assert newest == everything[:2]
    page = await _events(local_cluster, limit=2, before_id=newest[-1].id)
    assert page == everything[2:4]
    code = await _refused(
        local_cluster.audit.ListAuditEvents(aupb.ListAuditEventsRequest(limit=1001), timeout=5)
    )
    assert code == CODE.INVALID_ARGUMENT
    # An outcome or a page mark that means nothing is refused: an unknown outcome listed
    # every event, as if none was asked; a negative before_id none.
    unknown = aupb.ListAuditEventsRequest(outcome=7)  # type: ignore[arg-type]
    for request in (unknown, aupb.ListAuditEventsRequest(before_id=-5)):
        call = local_cluster.audit.ListAuditEvents(request, timeout=5)
        assert await _refused(call) == CODE.INVALID_ARGUMENT


@pytest.mark.parametrize("over_connect", [False, True], ids=["grpc", "connect"])
async def test_an_action_the_host_never_audits_is_refused_naming_those_it_does(
    local_cluster: LocalCluster,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    over_connect: bool,
) -> None:
    """`hakuriver.admin audit --action task.sumbit` listed nothing, as if no task had ever
    been submitted."""
    await local_cluster.add_runner("a")
    await local_cluster.submit()
    config = str(local_cluster.cli_config(tmp_path / "client.toml", over_connect))
    argv = ["audit", "--action", "task.sumbit", "--config", config]
    assert await asyncio.to_thread(exit_code, direct.run, admin.app, "a", argv) == 1
    printed = capsys.readouterr()
    assert printed.out == ""
    [line] = printed.err.splitlines()
    said = "error: action: 'task.sumbit' is no audited action (one of batch.kill, batch.pause, "
    assert line.startswith(said), line
    assert " task.submit, " in line and line.endswith(", user.role) (INVALID_ARGUMENT)"), line
    argv[2] = "task.submit"
    assert await asyncio.to_thread(exit_code, direct.run, admin.app, "a", argv) == 0


async def test_only_admins_read_the_audit_log(local_cluster: LocalCluster) -> None:
    for role in (Role.USER, Role.OPERATOR):
        client = await local_cluster.add_user(f"a-{role}", role)
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await client.audit.ListAuditEvents(aupb.ListAuditEventsRequest(), timeout=5)
        assert raised.value.code() == CODE.PERMISSION_DENIED
        assert "needs the admin role" in (raised.value.details() or "")


async def test_each_audit_event_is_also_a_structured_log_line(
    local_cluster: LocalCluster, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="hakuriver.audit")
    await local_cluster.add_user("alice", Role.OPERATOR)
    lines = [
        json.loads(r.getMessage().removeprefix("audit "))
        for r in caplog.records
        if r.name == "hakuriver.audit"
    ]
    [line] = [line for line in lines if line["action"] == "user.create"]
    assert line.pop("peer").startswith("ipv4:127.0.0.1:")
    assert line == {
        "actor": "admin",
        "role": "admin",
        "action": "user.create",
        "target": "alice",
        "outcome": "allowed",
        "detail": "role operator",
    }


async def test_a_strangers_refusals_are_counted_not_each_written(
    local_cluster: LocalCluster,
) -> None:
    """Anybody who reaches the port can call in a loop with no token or a made-up one: each
    refusal was a row and a log line, without bound. Now the first of a minute per source,
    action and target is written, and the rest are counted in one row; a known user's
    refusals are each written still."""
    stranger = local_cluster.client("hkrt_" + "x" * 43, "stranger")
    alice = await local_cluster.add_user("alice")
    for _ in range(30):
        with pytest.raises(grpc.aio.AioRpcError):
            await stranger.nodes.ListNodes(npb.ListNodesRequest(), timeout=5)
    for _ in range(3):
        with pytest.raises(grpc.aio.AioRpcError):
            await alice.nodes.DrainNode(npb.DrainNodeRequest(hostname="a"), timeout=5)
    refused = aupb.ListAuditEventsRequest(action="rpc", outcome=aupb.AUDIT_OUTCOME_REFUSED)
    rows = (await local_cluster.audit.ListAuditEvents(refused, timeout=5)).events
    assert [e.actor for e in rows].count("alice") == 3
    strangers = [e for e in rows if e.actor == "anonymous"]
    assert [(e.target, e.peer, e.detail) for e in strangers] == [
        (
            "/hakuriver.v1.NodeService/ListNodes",
            "ipv4:127.0.0.1",
            "Unauthenticated: unknown API token",
        )
    ]
    await local_cluster.restart_host()
    rows = (await local_cluster.audit.ListAuditEvents(refused, timeout=5)).events
    strangers = [e.detail for e in rows if e.actor == "anonymous"]
    assert len(strangers) == 2
    assert strangers[0].startswith(
        "Unauthenticated: unknown API token (and 29 more like it in the last "
    )


async def test_events_older_than_forget_audit_days_are_forgotten(
    make_local_cluster: MakeCluster,
) -> None:
    # Every refused call is a row: a scanner calling without a token, or a Prometheus
    # scraping without its token, added rows for as long as the cluster ran (QA).
    cluster = await make_local_cluster(timing={"forget_audit_days": 365})
    nobody = cluster.client("")
    for _ in range(3):
        assert await _refused(nobody.tasks.ListTasks(tpb.ListTasksRequest(), timeout=5)) == (
            CODE.UNAUTHENTICATED
        )
    await cluster.stop_host()
    # A year and more passes: those refusals are now 400 days old.
    with closing(sqlite3.connect(cluster.config.database.db_file)) as db, db:
        db.execute("UPDATE audit_events SET at = datetime(at, '-400 days')")
    await cluster.start_host()
    nobody = cluster.client("")
    assert await _refused(nobody.tasks.GetTask(tpb.GetTaskRequest(task_id=1), timeout=5)) == (
        CODE.UNAUTHENTICATED
    )

    async def without_the_old_ones() -> list[str] | None:
        targets = [e.target for e in await _events(cluster, actor="anonymous")]
        return None if "/hakuriver.v1.TaskService/ListTasks" in targets else targets

    kept = await eventually(without_the_old_ones, what="the year-old audit events to go")
    assert kept == ["/hakuriver.v1.TaskService/GetTask"]


@pytest.mark.parametrize("key", ["forget_audit_days", "forget_tasks_days"])
async def test_a_forget_age_past_year_one_keeps_everything_without_a_traceback(
    make_local_cluster: MakeCluster, caplog: pytest.LogCaptureFixture, key: str
) -> None:
    """A million days (an admin's "forever") made the hourly forgetting compute a date
    before year 1: OverflowError, logged with its traceback at the start and every hour."""
    caplog.set_level(logging.INFO)
    cluster = await make_local_cluster(timing={key: 1_000_000})
    # The forgetting's first step ran before the Host answered anything.
    await cluster.nodes.ListNodes(npb.ListNodesRequest(), timeout=5)
    failures = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert failures == []


async def _refused_while_locked(
    cluster: LocalCluster, caplog: pytest.LogCaptureFixture, said: str
) -> Client:
    """bob, refused a drain while the database is locked, until the Host logs ``said``."""
    bob = await cluster.add_user("bob")
    drain = npb.DrainNodeRequest(hostname="a")
    with _locked(cluster):
        assert await _refused(bob.nodes.DrainNode(drain, timeout=5)) == CODE.PERMISSION_DENIED
        await eventually(
            lambda: said in caplog.text, within=30, what=f"{said!r} for the refusal's row"
        )
    return bob


async def test_audit_events_while_the_database_is_locked_are_stored_once_it_is_not(
    make_local_cluster: MakeCluster, caplog: pytest.LogCaptureFixture
) -> None:
    """Rows the database refused (locked by another program, a PostgreSQL server away)
    were dropped, only in the Host's log (QA); they are held and stored once it is back."""
    local_cluster = await make_local_cluster(database=BRIEF_LOCK_WAIT)
    await _refused_while_locked(local_cluster, caplog, "database is locked")

    async def bobs() -> list[aupb.AuditEvent]:
        return await _events(local_cluster, actor="bob")

    [denied] = await eventually(bobs, within=30, what="the refusal stored")
    assert (denied.action, denied.target, denied.outcome) == (
        "rpc",
        "/hakuriver.v1.NodeService/DrainNode",
        REFUSED,
    )


async def test_held_audit_events_are_stored_as_soon_as_the_database_takes_another_write(
    make_local_cluster: MakeCluster,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Rows held while the database was locked were tried again only after their pause (up
    to 5 s), and a query meanwhile missed them, though a task had been stored since; a write
    the database takes now sets them going, as it does the held task changes."""
    monkeypatch.setattr(group_commit, "HELD_PAUSE", 600.0)  # held until a write says
    local_cluster = await make_local_cluster(database=BRIEF_LOCK_WAIT)
    await local_cluster.add_runner("a", answer=HOLD)
    bob = await _refused_while_locked(local_cluster, caplog, "audit events held in memory")
    await bob.tasks.SubmitTask(tpb.SubmitTaskRequest(command="x"), timeout=5)  # stored

    async def bobs() -> list[aupb.AuditEvent]:
        return [e for e in await _events(local_cluster, actor="bob") if e.action == "rpc"]

    [denied] = await eventually(bobs, within=10, what="the held refusal stored")
    assert denied.target == "/hakuriver.v1.NodeService/DrainNode"


async def test_held_audit_events_are_stored_as_soon_as_held_task_changes_are(
    make_local_cluster: MakeCluster,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A held task change going through did not set the held audit rows going: they waited
    out their own pause (up to 5 s), missing from queries meanwhile, though the database
    took writes again. Any write it takes sets them going."""

    class _Long(group_commit.HeldPause):
        def next(self) -> float:
            return 600.0  # the audit rows' pause: held until a write says

    monkeypatch.setattr(audit, "HeldPause", _Long)
    # Nodes' heartbeats stored once per 2 minutes, not every second: no write of theirs.
    local_cluster = await make_local_cluster(
        database=BRIEF_LOCK_WAIT, timing={"heartbeat_timeout_factor": 600}
    )
    runner = await local_cluster.add_runner("a", answer=HOLD)
    [task] = await local_cluster.submit_running()
    bob = await local_cluster.add_user("bob")
    with _locked(local_cluster):
        runner.finish(task.task_id, 0)
        await eventually(
            lambda: "changes held in memory" in caplog.text, within=30, what="the end held"
        )
        drain = npb.DrainNodeRequest(hostname="a")
        assert await _refused(bob.nodes.DrainNode(drain, timeout=5)) == CODE.PERMISSION_DENIED
        await eventually(
            lambda: "audit events held in memory" in caplog.text, within=30, what="rows held"
        )
    await local_cluster.wait_status(task.task_id, TaskStatus.COMPLETED, within=30)

    async def bobs() -> list[aupb.AuditEvent]:
        return [e for e in await _events(local_cluster, actor="bob") if e.action == "rpc"]

    [denied] = await eventually(bobs, within=10, what="the held refusal stored")
    assert denied.target == "/hakuriver.v1.NodeService/DrainNode"
