"""SubmitTask's request_id, an idempotency key: a submission sent again with the same id by
the same user (its answer was lost: a deadline, a dropped connection, a Host restart) is
answered with the tasks the first one created and creates none; the id reused for another
request is refused; each user's ids are their own; duplicates sent at once create once."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest
from sqlalchemy.exc import OperationalError

from hakuriver_cli import direct, hakurun, task
from hakuriver_common.proto.hakuriver.v1 import (
    audit_service_pb2 as aupb,
    task_service_pb2 as tpb,
)
from hakuriver_common.statuses import TaskStatus
from hakuriver_host import cluster as cluster_module
from hakuriver_host.group_commit import HeldPause
from hakuriver_host.store import TaskWrite
from tests.fake_runner import HOLD, eventually
from tests.unit.cli_threads import exit_code
from tests.unit.local_cluster import Client, LocalCluster


def _one(request_id: str, command: str = "train") -> tpb.SubmitTaskRequest:
    return tpb.SubmitTaskRequest(command=command, arguments=["--seed", "1"], request_id=request_id)


def _ids(reply: tpb.SubmitTaskResponse) -> list[int]:
    return [task.task_id for task in reply.tasks]


async def _stored_ids(cluster: LocalCluster) -> list[int]:
    """Every task the Host holds, as the admin lists them."""
    reply = await cluster.tasks.ListTasks(tpb.ListTasksRequest(limit=1000), timeout=5)
    return sorted(task.task_id for task in reply.tasks)


async def test_a_submission_sent_again_gets_the_tasks_created_the_first_time(
    local_cluster: LocalCluster,
) -> None:
    await local_cluster.add_runner("a", cores=4, answer=HOLD)
    first = await local_cluster.tasks.SubmitTask(_one("5f0c-one"), timeout=5)
    again = await local_cluster.tasks.SubmitTask(_one("5f0c-one"), timeout=5)
    assert (again.created, again.batch_id, _ids(again)) == (1, 0, _ids(first))
    assert again.tasks[0].command == "train"

    array = tpb.SubmitTaskRequest(
        command="sweep", array=tpb.TaskArray(indices=[0, 1, 2]), request_id="5f0c-array"
    )
    made = await local_cluster.tasks.SubmitTask(array, timeout=5)
    resent = await local_cluster.tasks.SubmitTask(array, timeout=5)
    assert (resent.created, resent.batch_id, _ids(resent)) == (3, made.batch_id, _ids(made))
    assert [t.array_index for t in resent.tasks] == [0, 1, 2]
    assert await _stored_ids(local_cluster) == sorted(_ids(first) + _ids(made))


async def test_a_submission_sent_again_is_named_in_the_host_log(
    local_cluster: LocalCluster, caplog: pytest.LogCaptureFixture
) -> None:
    """A retry answered with the tasks made before left no trace on the Host: the audit log
    has the first submission only, and nothing said a second one came and created none."""
    await local_cluster.add_runner("a", cores=4, answer=HOLD)
    alice: Client = await local_cluster.add_user("alice")
    caplog.set_level(logging.INFO, logger="hakuriver_host.submit_requests")
    first = await alice.tasks.SubmitTask(_one("seen-twice"), timeout=5)
    assert not caplog.records  # the first one is audited (task.submit), not logged here
    await alice.tasks.SubmitTask(_one("seen-twice"), timeout=5)
    [line] = [r.getMessage() for r in caplog.records]
    head = (
        f"submission of alice with request_id 'seen-twice' sent again: answered with task "
        f"{_ids(first)[0]}, made at "
    )
    assert line.startswith(head) and line.endswith(" UTC; nothing created")


async def test_a_submission_sent_again_is_audited_as_replayed(
    local_cluster: LocalCluster,
) -> None:
    """A retry answered with the tasks made before was logged, not audited: the audit log
    showed one submission where its user had sent two. Each replay is a `task.submit` row
    naming the tasks it answered with, its detail saying it created nothing."""
    await local_cluster.add_runner("a", cores=4, answer=HOLD)
    alice: Client = await local_cluster.add_user("alice")
    [task] = (await alice.tasks.SubmitTask(_one("twice"), timeout=5)).tasks
    array = tpb.SubmitTaskRequest(command="sweep", array=tpb.TaskArray(indices=[0, 1]))
    array.request_id = "array-twice"
    made = await alice.tasks.SubmitTask(array, timeout=5)
    await alice.tasks.SubmitTask(_one("twice"), timeout=5)
    await alice.tasks.SubmitTask(array, timeout=5)
    query = aupb.ListAuditEventsRequest(actor="alice", action="task.submit")

    async def four_rows() -> list[tuple[str, str]]:
        reply = await local_cluster.audit.ListAuditEvents(query, timeout=5)
        rows = [(e.target, e.detail) for e in reversed(reply.events)]
        return rows if len(rows) == 4 else []

    rows = await eventually(four_rows, what="four rows written")
    assert rows[:2] == [(str(task.task_id), ""), (f"array {made.batch_id} (2 tasks)", "")]
    [(single, said), (batch, said_too)] = rows[2:]
    assert (single, batch) == (str(task.task_id), f"batch {made.batch_id}")
    assert said.startswith(
        f"replayed: request_id 'twice' sent again, answered with the task {task.task_id} it "
        "made at "
    )
    assert said.endswith(" UTC; nothing created")
    assert f"answered with the batch {made.batch_id} it made at " in said_too


async def test_a_request_id_used_for_another_request_is_refused(
    local_cluster: LocalCluster,
) -> None:
    await local_cluster.add_runner("a", cores=4, answer=HOLD)
    first = await local_cluster.tasks.SubmitTask(_one("reused"), timeout=5)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await local_cluster.tasks.SubmitTask(_one("reused", command="other"), timeout=5)
    assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    details = raised.value.details() or ""
    assert details.startswith("request_id: 'reused' was used within 24 h for another")
    assert f"task {first.tasks[0].task_id}" in details
    assert await _stored_ids(local_cluster) == _ids(first)


async def test_a_request_id_over_128_characters_is_refused(
    local_cluster: LocalCluster,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await local_cluster.tasks.SubmitTask(_one("x" * 129), timeout=5)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.details() == "request_id: at most 128 characters, got 129"
    assert await _stored_ids(local_cluster) == []


async def test_each_user_has_request_ids_of_their_own(local_cluster: LocalCluster) -> None:
    await local_cluster.add_runner("a", cores=4, answer=HOLD)
    alice = await local_cluster.add_user("alice")
    bob = await local_cluster.add_user("bob")
    mine = await alice.tasks.SubmitTask(_one("same"), timeout=5)
    theirs = await bob.tasks.SubmitTask(_one("same", command="other"), timeout=5)
    assert theirs.tasks[0].owner == "bob" and theirs.tasks[0].command == "other"
    assert _ids(theirs) != _ids(mine)
    assert _ids(await bob.tasks.SubmitTask(_one("same", command="other"), timeout=5)) == _ids(
        theirs
    )
    assert await _stored_ids(local_cluster) == sorted(_ids(mine) + _ids(theirs))


async def test_duplicates_sent_at_once_create_once(local_cluster: LocalCluster) -> None:
    await local_cluster.add_runner("a", cores=4, answer=HOLD)
    alice: Client = await local_cluster.add_user("alice")
    array = tpb.SubmitTaskRequest(
        command="sweep", array=tpb.TaskArray(indices=[0, 1]), request_id="at-once"
    )
    replies = await asyncio.gather(
        *(alice.tasks.SubmitTask(array, timeout=10) for _ in range(4)),
        *(alice.tasks.SubmitTask(_one("at-once-too"), timeout=10) for _ in range(4)),
    )
    assert len({tuple(_ids(reply)) for reply in replies[:4]}) == 1
    assert len({tuple(_ids(reply)) for reply in replies[4:]}) == 1
    assert await _stored_ids(local_cluster) == sorted(_ids(replies[0]) + _ids(replies[4]))


async def test_a_retry_after_a_host_restart_gets_the_stored_tasks(
    local_cluster: LocalCluster,
) -> None:
    await local_cluster.add_runner("a", cores=4, answer=HOLD)
    first = await local_cluster.tasks.SubmitTask(_one("before-restart"), timeout=5)
    await local_cluster.restart_host()
    again = await local_cluster.tasks.SubmitTask(_one("before-restart"), timeout=5)
    assert (again.created, _ids(again)) == (1, _ids(first))
    assert await _stored_ids(local_cluster) == _ids(first)


async def test_a_retry_after_a_deadline_passed_mid_write_gets_that_write_s_task(
    local_cluster: LocalCluster,
) -> None:
    """The CLI's case: its deadline passed while the Host was storing the task (another
    program held the database); its retry with the same id, sent at once, gets that task
    once it is stored, and nothing more is created."""
    await local_cluster.add_runner("a", cores=4, answer=HOLD)
    other = sqlite3.connect(local_cluster.config.database.db_file, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await local_cluster.tasks.SubmitTask(_one("lost-answer"), timeout=1)
        assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        retry = asyncio.ensure_future(
            local_cluster.tasks.SubmitTask(_one("lost-answer"), timeout=30)
        )
    finally:
        other.close()
    again = await retry
    assert again.created == 1
    assert await _stored_ids(local_cluster) == _ids(again)


async def test_the_tools_send_a_given_request_id(
    local_cluster: LocalCluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--request-id`` (what the tools say to send again with when no answer came) makes
    ``hakuriver.task submit`` and ``hakurun --array`` answer the tasks created before."""
    await local_cluster.add_runner("a", cores=4, answer=HOLD)
    config = str(local_cluster.cli_config(tmp_path / "client.toml"))
    submit = ["submit", "--config", config, "--request-id", "one", "--", "train"]
    sweep = ["--array", "--config", config, "--request-id", "sweep", "echo", "span:[a,b]"]
    for _ in range(2):
        assert await asyncio.to_thread(exit_code, direct.run, task.app, "t", submit) == 0
        assert await asyncio.to_thread(exit_code, hakurun.main, sweep) == 0
    first, array, first_again, array_again = capsys.readouterr().out.splitlines()
    # The same task (running by now) and the same array.
    assert first.startswith("submitted task ") and first_again.split()[:3] == first.split()[:3]
    assert array.endswith(": 2 tasks") and array_again == array
    assert len(await _stored_ids(local_cluster)) == 3


async def test_a_request_id_whose_tasks_were_pruned_is_refused(
    local_cluster: LocalCluster,
) -> None:
    """Its tasks forgotten (an admin's prune of what ended a moment ago), a retry is refused
    in words, not answered with no task (the CLI, reading one, took the newest task of the
    Host's instead, or ended in a traceback)."""
    await local_cluster.add_runner("a")
    first = await local_cluster.tasks.SubmitTask(_one("pruned"), timeout=5)
    task_id = _ids(first)[0]
    await local_cluster.wait_status(task_id, TaskStatus.COMPLETED)
    pruned = await local_cluster.tasks.PruneTasks(
        tpb.PruneTasksRequest(older_than_days=1e-9), timeout=10
    )
    assert pruned.tasks == 1
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await local_cluster.tasks.SubmitTask(_one("pruned"), timeout=5)
    assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert raised.value.details() == (
        f"request_id: 'pruned' created task {task_id}, forgotten since (pruned); use a new "
        "request_id to submit again"
    )
    assert await _stored_ids(local_cluster) == []


def _commit_then_cut(
    cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch, requests: bool = True
) -> None:
    """The next transaction that stores a submission's request_id (``requests``; else its
    new task rows) is committed, then fails as when PostgreSQL's connection is cut before
    its answer to COMMIT arrives: the Host takes the submission for not stored."""
    assert cluster.server is not None
    store = cluster.server.cluster.store
    cut = psycopg.OperationalError("consuming input failed: server closed the connection")
    for lane in (store._submissions, store._writes):  # a submission's, or one placed at once
        apply = lane._apply

        def commit_then_cut(writes: list[TaskWrite], apply: Any = apply) -> None:
            apply(writes)
            new = [write.requests if requests else write.inserts for write in writes]
            if any(new) and not getattr(store, "cut", False):
                store.cut = True  # type: ignore[attr-defined]
                raise OperationalError("COMMIT", {}, cut)

        monkeypatch.setattr(lane, "_apply", commit_then_cut)


class _PutOff(HeldPause):
    """A pause before trying again that outlasts the test."""

    def next(self) -> float:
        return 600.0


def _first_look_refused(cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The Host's first read of a cut submission's tasks (once the database answers) is
    refused as by a cut connection, and its next put off past the test: what takes them
    in is then the submission sent again. The refusals made so far."""
    assert cluster.server is not None
    store = cluster.server.cluster.store
    monkeypatch.setattr(cluster_module, "HeldPause", _PutOff)
    read, refused = store.submitted_tasks_in, []

    def submitted_tasks_in(*args: Any) -> Any:
        if not refused:
            refused.append("the first look")
            cut = psycopg.OperationalError("server closed the connection unexpectedly")
            raise OperationalError("SELECT", {}, cut)
        return read(*args)

    monkeypatch.setattr(store, "submitted_tasks_in", submitted_tasks_in)
    return refused


@pytest.mark.parametrize("how", ["pending", "placed at once", "its place taken"])
async def test_a_submission_committed_as_its_connection_was_cut_runs_when_sent_again(
    local_cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """A PostgreSQL connection cut during the commit of a submission: the commit happened,
    the Host took it for failed (UNAVAILABLE) and did not hold the tasks, and the client's
    retry with the same request_id was answered with them, never placed until a Host
    restart (docs/reliability.md). The retry takes them in: they run, once. (Stored
    pending behind a task that holds the node, or placed at once, stored assigning; a
    place given to another task meanwhile fails the task, saying so.)"""
    runner = await local_cluster.add_runner("a", cores=2, answer=HOLD)
    ahead = await local_cluster.submit_running(cores=2) if how == "pending" else []
    _commit_then_cut(local_cluster, monkeypatch)
    refused = _first_look_refused(local_cluster, monkeypatch)
    request = _one("5f0c-cut")
    with pytest.raises(grpc.aio.AioRpcError) as cut:
        await local_cluster.tasks.SubmitTask(request, timeout=5)
    assert cut.value.code() == grpc.StatusCode.UNAVAILABLE
    await eventually(lambda: refused, what="the Host's own look refused")
    if how == "its place taken":
        await local_cluster.submit_running(cores=2)
    [task] = (await local_cluster.tasks.SubmitTask(request, timeout=5)).tasks
    if how == "its place taken":
        failed = await local_cluster.wait_status(task.task_id, TaskStatus.FAILED)
        assert failed.error_message.endswith("submit it again")
        assert task.task_id not in runner.dispatched
        return
    for other in ahead:
        runner.finish(other.task_id, 0)
    await local_cluster.wait_status(task.task_id, TaskStatus.RUNNING, within=30)
    assert runner.dispatched.count(task.task_id) == 1


@pytest.mark.parametrize("how", ["pending", "placed at once"])
async def test_a_submission_committed_as_its_connection_was_cut_runs_unless_sent_again(
    local_cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """The same cut, for a submission without a request_id, not sent again: its stored
    tasks waited pending (or assigning) until a Host restart. The Host reads whether the
    commit it took for failed was made once the database answers, and takes them in."""
    runner = await local_cluster.add_runner("a", cores=2, answer=HOLD)
    ahead = await local_cluster.submit_running(cores=2) if how == "pending" else []
    _commit_then_cut(local_cluster, monkeypatch, requests=False)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await local_cluster.tasks.SubmitTask(_one(""), timeout=5)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    listed = await local_cluster.tasks.ListTasks(tpb.ListTasksRequest(), timeout=5)
    [task] = [t for t in listed.tasks if t.command == "train"]  # stored all the same
    for other in ahead:
        runner.finish(other.task_id, 0)
    await local_cluster.wait_status(task.task_id, TaskStatus.RUNNING, within=30)
    assert runner.dispatched.count(task.task_id) == 1
