"""Forgetting ended tasks (retention): PruneTasks of an admin and ``timing.forget_tasks_days``
take the tasks that ended before the cutoff, their timelines and their output files, and
never a task that has not ended, nor part of a batch; a node left with no task is then
forgotten like one that never held any."""

from __future__ import annotations

import logging
import os
import sqlite3
import urllib.request
from collections.abc import Sequence
from contextlib import closing
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from hakuriver_common.proto.hakuriver.v1 import (
    audit_service_pb2 as aupb,
    node_service_pb2 as npb,
    runner_service_pb2 as rpb,
    task_pb2,
    task_service_pb2 as tpb,
)
from hakuriver_common.roles import Role
from hakuriver_common.statuses import TaskStatus
from hakuriver_host import forgetting, retention
from tests.fake_runner import HOLD, eventually, exit_with
from tests.unit.conftest import MakeCluster
from tests.unit.local_cluster import BRIEF_LOCK_WAIT, TIMING, LocalCluster

CODE = grpc.StatusCode
OUTPUT = exit_with(0, b"out\n", b"err\n")


def _age(cluster: LocalCluster, task_ids: Sequence[int], days: float) -> None:
    """Make the tasks look as if they ended ``days`` ago (written as the Host writes times)."""
    ended = datetime.now(UTC) - timedelta(days=days)
    with closing(sqlite3.connect(cluster.config.database.db_file)) as db, db:
        db.executemany(
            "UPDATE tasks SET completed_at = ? WHERE task_id = ?",
            [(f"{ended:%Y-%m-%d %H:%M:%S.%f}", task_id) for task_id in task_ids],
        )


async def _stored(cluster: LocalCluster, tasks: list[task_pb2.Task]) -> list[task_pb2.Task]:
    """``tasks``, ended, once their ends are stored: GetTask answers from memory first, and
    a row aged (``_age``) before its end's write had its end time set back to now by it
    (the prune then found nothing)."""
    request = tpb.ListTasksRequest(statuses=sorted({t.status for t in tasks}), limit=1000)

    async def stored() -> bool:
        listed = {t.task_id for t in (await cluster.tasks.ListTasks(request, timeout=5)).tasks}
        return listed.issuperset(t.task_id for t in tasks)

    await eventually(stored, within=30, what="the tasks' ends stored")
    return tasks


async def _ended(cluster: LocalCluster, count: int = 1) -> list[task_pb2.Task]:
    """``count`` tasks that ended with output on both streams, their ends stored."""
    submitted = [await cluster.submit("job") for _ in range(count)]
    return await _stored(cluster, [await cluster.wait_status(t.task_id) for t in submitted])


async def _array(cluster: LocalCluster, size: int) -> list[task_pb2.Task]:
    request = tpb.SubmitTaskRequest(command="job", array=tpb.TaskArray(indices=range(size)))
    reply = await cluster.tasks.SubmitTask(request, timeout=5)
    return await _stored(cluster, [await cluster.wait_status(t.task_id) for t in reply.tasks])


async def _known(cluster: LocalCluster, task_id: int) -> bool:
    try:
        await cluster.get(task_id)
    except grpc.aio.AioRpcError as exc:
        assert exc.code() == CODE.NOT_FOUND
        return False
    return True


def _files(task: task_pb2.Task) -> list[bool]:
    return [os.path.exists(task.stdout_path), os.path.exists(task.stderr_path)]


async def _prune(
    cluster: LocalCluster, days: float, dry_run: bool = False
) -> tuple[int, int, int, int, int]:
    request = tpb.PruneTasksRequest(older_than_days=days, dry_run=dry_run)
    reply = await cluster.tasks.PruneTasks(request, timeout=10)
    return reply.tasks, reply.batches, reply.events, reply.output_files, reply.output_bytes


def _completed_gauge(cluster: LocalCluster) -> float:
    assert cluster.server is not None
    url = f"http://127.0.0.1:{cluster.server.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as reply:
        text = reply.read().decode()
    line = 'hakuriver_tasks{kind="command",status="completed"} '
    return float(next(x for x in text.splitlines() if x.startswith(line)).split()[-1])


async def test_prune_forgets_tasks_that_ended_before_the_cutoff_and_their_output(
    local_cluster: LocalCluster,
) -> None:
    """Nothing forgot ended tasks: a lab's database and shared folder grew for good. An
    admin's prune takes the old ones, their events and files; a dry run only counts them."""
    await local_cluster.add_runner("a", answer=OUTPUT)
    old, recent = await _ended(local_cluster, 2)
    await local_cluster.add_runner("b", answer=HOLD)
    running = await local_cluster.submit("long", targets=[task_pb2.Target(hostname="b")])
    await local_cluster.wait_status(running.task_id, TaskStatus.RUNNING)
    assert _files(old) == [True, True]
    events = len(await local_cluster.events(old.task_id))
    _age(local_cluster, [old.task_id], 40)
    assert _completed_gauge(local_cluster) == 2

    expected = (1, 0, events, 2, len(b"out\n") + len(b"err\n"))
    assert await _prune(local_cluster, 30, dry_run=True) == expected
    assert await _known(local_cluster, old.task_id)
    assert _files(old) == [True, True]

    assert await _prune(local_cluster, 30) == expected
    assert not await _known(local_cluster, old.task_id)
    assert _files(old) == [False, False]
    assert await _known(local_cluster, recent.task_id)
    assert _files(recent) == [True, True]
    assert await local_cluster.read_log(recent.task_id) == b"out\n"
    running = await local_cluster.get(running.task_id)
    assert TaskStatus.from_pb(running.status) is TaskStatus.RUNNING
    assert _completed_gauge(local_cluster) == 1
    # Done: nothing more is that old.
    assert await _prune(local_cluster, 30) == (0, 0, 0, 0, 0)


async def test_a_batch_is_forgotten_whole_once_all_its_tasks_ended_before_the_cutoff(
    local_cluster: LocalCluster,
) -> None:
    await local_cluster.add_runner("a", answer=OUTPUT)
    array = await _array(local_cluster, 3)
    batch_id = array[0].batch_id
    _age(local_cluster, [t.task_id for t in array[:2]], 40)
    assert (await _prune(local_cluster, 30))[:2] == (0, 0)
    assert [await _known(local_cluster, t.task_id) for t in array] == [True] * 3
    assert all(_files(t) == [True, True] for t in array)

    _age(local_cluster, [array[2].task_id], 40)
    assert (await _prune(local_cluster, 30))[:2] == (3, 1)
    assert [await _known(local_cluster, t.task_id) for t in array] == [False] * 3
    assert all(_files(t) == [False, False] for t in array)
    with pytest.raises(grpc.aio.AioRpcError) as gone:
        await local_cluster.tasks.GetBatch(tpb.GetBatchRequest(batch_id=batch_id), timeout=5)
    assert gone.value.code() == CODE.NOT_FOUND


@pytest.fixture
def small_slices(monkeypatch: pytest.MonkeyPatch) -> int:
    """Slices of 8 tasks (not 256): 20 tasks take three, as 600 would at the real size."""
    monkeypatch.setattr(retention, "WRITE_BATCH", 8)
    return 20


async def test_more_tasks_than_a_slice_are_all_forgotten(
    local_cluster: LocalCluster, small_slices: int
) -> None:
    """The deletes go a slice (WRITE_BATCH tasks) at a time: every slice is taken, also when
    many tasks ended at the same moment."""
    await local_cluster.add_runner("a", cores=64)
    array = await _array(local_cluster, small_slices)
    with closing(sqlite3.connect(local_cluster.config.database.db_file)) as db, db:
        db.execute("UPDATE tasks SET completed_at = '2020-01-01 00:00:00.000000'")
    assert (await _prune(local_cluster, 30, dry_run=True))[:2] == (small_slices, 1)
    assert (await _prune(local_cluster, 30))[:2] == (small_slices, 1)
    assert not await _known(local_cluster, array[-1].task_id)


async def test_only_admins_prune_and_it_is_audited(local_cluster: LocalCluster) -> None:
    await local_cluster.add_runner("a", answer=OUTPUT)
    [task] = await _ended(local_cluster)
    events = len(await local_cluster.events(task.task_id))
    _age(local_cluster, [task.task_id], 40)
    for role in (Role.USER, Role.OPERATOR):
        client = await local_cluster.add_user(f"a-{role}", role)
        request = tpb.PruneTasksRequest(older_than_days=30)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await client.tasks.PruneTasks(request, timeout=5)
        assert refused.value.code() == CODE.PERMISSION_DENIED
        assert "needs the admin role" in (refused.value.details() or "")
    assert await _known(local_cluster, task.task_id)

    await _prune(local_cluster, 30, dry_run=True)
    await _prune(local_cluster, 30)
    request = aupb.ListAuditEventsRequest(action="task.prune")
    [event] = (await local_cluster.audit.ListAuditEvents(request, timeout=5)).events
    assert (event.actor, event.outcome) == ("admin", aupb.AUDIT_OUTCOME_ALLOWED)
    assert event.target.startswith("ended before ")
    assert event.detail == f"1 tasks, 0 batches, {events} events, 2 output files (8 bytes)"


@pytest.mark.parametrize("days", [0, -1, float("nan"), 36_501])
async def test_a_prune_of_no_age_is_refused(local_cluster: LocalCluster, days: float) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await _prune(local_cluster, days)
    assert refused.value.code() == CODE.INVALID_ARGUMENT
    assert refused.value.details() == (
        f"older_than_days: must be more than 0 and at most 36,500 (100 years), got {days:g}"
    )


async def test_tasks_older_than_forget_tasks_days_are_forgotten(
    make_local_cluster: MakeCluster,
) -> None:
    cluster = await make_local_cluster(timing={**TIMING, "forget_tasks_days": 30})
    await cluster.add_runner("a", answer=OUTPUT)
    old, recent = await _ended(cluster, 2)
    _age(cluster, [old.task_id], 40)
    await cluster.restart_host()  # it looks at start, then hourly

    async def forgotten() -> bool:
        return not await _known(cluster, old.task_id)

    await eventually(forgotten, what="the task that ended 40 days ago to be forgotten")
    assert _files(old) == [False, False]
    assert await _known(cluster, recent.task_id)
    assert _files(recent) == [True, True]


async def test_tasks_are_kept_forever_by_default(local_cluster: LocalCluster) -> None:
    assert local_cluster.config.timing.forget_tasks_days == 0
    await local_cluster.add_runner("a", answer=OUTPUT)
    [task] = await _ended(local_cluster)
    _age(local_cluster, [task.task_id], 3650)
    await local_cluster.restart_host()
    await local_cluster.submit("another")  # the Host has started and served calls since
    assert await _known(local_cluster, task.task_id)
    assert _files(task) == [True, True]


async def test_an_offline_node_whose_tasks_are_all_forgotten_is_forgotten(
    make_local_cluster: MakeCluster,
) -> None:
    """A node that held a task was kept for good; once its tasks are forgotten it is
    forgotten like one that never held any."""
    # Its task keeps it until the prune, however short this is.
    cluster = await make_local_cluster(timing={**TIMING, "forget_node_seconds": 1})
    used = await cluster.add_runner("used", answer=OUTPUT)
    [task] = await _ended(cluster)
    await used.stop()

    async def names() -> list[str]:
        return [n.hostname for n in (await cluster.nodes.ListNodes(npb.ListNodesRequest())).nodes]

    assert await names() == ["used"]
    _age(cluster, [task.task_id], 40)
    assert (await _prune(cluster, 30))[0] == 1

    async def forgotten() -> bool:
        return await names() == []

    await eventually(forgotten, within=20, what="the node with no task left to be forgotten")


async def test_a_prune_whose_caller_goes_is_carried_through(
    local_cluster: LocalCluster, small_slices: int
) -> None:
    """A long history takes longer than a caller waits: a prune whose caller gave up (its
    deadline, Ctrl-C) stopped after the slice under way, and audited only that."""
    await local_cluster.add_runner("a", cores=64)
    array = await _array(local_cluster, small_slices)
    with closing(sqlite3.connect(local_cluster.config.database.db_file)) as db, db:
        db.execute("UPDATE tasks SET completed_at = '2020-01-01 00:00:00.000000'")
    other = sqlite3.connect(local_cluster.config.database.db_file, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")  # the first slice's delete waits for it
        request = tpb.PruneTasksRequest(older_than_days=30)
        with pytest.raises(grpc.aio.AioRpcError) as gave_up:
            await local_cluster.tasks.PruneTasks(request, timeout=1)
    finally:
        other.close()
    assert gave_up.value.code() == CODE.DEADLINE_EXCEEDED

    async def audited() -> list[str]:
        request = aupb.ListAuditEventsRequest(action="task.prune")
        return [e.detail for e in (await local_cluster.audit.ListAuditEvents(request)).events]

    details = await eventually(audited, within=20, what="the prune to end and be audited")
    assert [d.split(", ")[:2] for d in details] == [[f"{small_slices} tasks", "1 batches"]]
    assert not await _known(local_cluster, array[-1].task_id)
    assert await _prune(local_cluster, 30) == (0, 0, 0, 0, 0)


@pytest.mark.parametrize("what", ["tasks", "audit events"])
async def test_a_locked_database_puts_the_hourly_forgetting_off_in_one_line(
    make_local_cluster: MakeCluster,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    what: str,
) -> None:
    """Another program holding the database locked (a sqlite3 shell with a transaction
    open) is no bug of the Host's: the forgetting logged a traceback, where the Host's
    other periodic work logs one line and tries again."""
    monkeypatch.setattr(forgetting, "FORGET_EVERY_SECONDS", 0.1)
    caplog.set_level(logging.INFO)
    key = "forget_tasks_days" if what == "tasks" else "forget_audit_days"
    cluster = await make_local_cluster(timing={**TIMING, key: 30}, database=BRIEF_LOCK_WAIT)
    await cluster.add_runner("a", answer=OUTPUT)
    [task] = await _ended(cluster)
    other = sqlite3.connect(cluster.config.database.db_file, isolation_level=None)
    try:
        # Old rows, and the lock taken again at once: the Host's next run finds them and
        # cannot delete them.
        other.execute("BEGIN IMMEDIATE")
        old = "2020-01-01 00:00:00.000000"
        other.execute("UPDATE tasks SET completed_at = ? WHERE task_id = ?", (old, task.task_id))
        other.execute("UPDATE audit_events SET at = ?", (old,))
        other.execute("COMMIT")
        other.execute("BEGIN IMMEDIATE")

        def put_off() -> list[str]:
            said = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
            return [line for line in said if f"forgetting old {what} put off" in line]

        [line] = (await eventually(put_off, within=30, what="the forgetting to be put off"))[:1]
    finally:
        other.close()
    assert line.endswith(
        "the Host's database is locked by another program: try again once it is not"
    )
    loggers = ("hakuriver_host.retention", "hakuriver.audit")
    assert [r for r in caplog.records if r.name in loggers and r.levelno >= logging.ERROR] == []


async def test_a_task_its_runner_says_ended_long_ago_is_kept_as_just_ended(
    local_cluster: LocalCluster,
) -> None:
    """A Runner whose clock is 40 days behind reports its tasks' ends 40 days ago: taken as
    it said, a task that ended a moment ago was forgotten, its output with it, by a prune
    of tasks older than 30 days (timing.forget_tasks_days, within the hour). An end, or a
    start, before the task was submitted is no time of the Host's clock: the Host's own
    time is kept."""
    runner = await local_cluster.add_runner("a", answer=HOLD)
    [task] = await local_cluster.submit_running()
    behind = Timestamp()
    behind.FromDatetime(datetime.now(UTC) - timedelta(days=40))
    runner.send(
        rpb.ConnectRequest(
            task_state=rpb.TaskStateReport(
                task_id=task.task_id,
                state=rpb.RUNNER_TASK_STATE_EXITED,
                exit_code=0,
                finished_at=behind,
            )
        )
    )
    [done] = await _stored(
        local_cluster, [await local_cluster.wait_status(task.task_id, TaskStatus.COMPLETED)]
    )
    assert done.completed_at.ToDatetime() >= done.submitted_at.ToDatetime()
    assert await _prune(local_cluster, 30) == (0, 0, 0, 0, 0)
    assert await _known(local_cluster, task.task_id)
