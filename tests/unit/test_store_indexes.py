"""The store's queries read the rows asked for, however long the history.

GetBatch counts a batch's ended tasks by status in the store, and ListTasks reads a user's
(a plain user's lists always are) or a node's newest tasks, or the newest of those ended
(an admin's `task list --status completed`). SQLite picks an index without
statistics: for ``batch_id = ? AND status IN (...)`` it chose the index of status and
completion time, reading every task that ever ended, and for ``owner = ? ORDER BY task_id
DESC LIMIT n`` it read and sorted every task of the user. Either took tens to hundreds of
milliseconds per 100,000 tasks on the store's one thread, every write waiting meanwhile.
The plan SQLite chooses does not depend on the rows, so the test asks SQLite for the plan
of each statement these calls run.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy import event, text

from hakuriver_common.proto.hakuriver.v1 import task_service_pb2 as tpb
from hakuriver_common.statuses import TaskStatus
from tests.fake_runner import HOLD
from tests.unit.local_cluster import LocalCluster


async def _plans(cluster: LocalCluster, call: Callable[[], Awaitable[Any]]) -> list[str]:
    """The query plan of each statement on the tasks table that ``call()`` runs (a gRPC
    call starts when made: made here, once the statements are being seen)."""
    assert cluster.server is not None
    engine = cluster.server.cluster.store.engine
    statements: list[tuple[str, Any]] = []

    def seen(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        if "FROM tasks" in statement:
            statements.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", seen)
    try:
        await call()
    finally:
        event.remove(engine, "before_cursor_execute", seen)
    assert statements
    with engine.connect() as connection:
        return [
            " / ".join(
                row[-1]
                for row in connection.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}", parameters)
            )
            for sql, parameters in statements
        ]


async def test_lists_and_batches_read_their_own_rows(local_cluster: LocalCluster) -> None:
    runner = await local_cluster.add_runner("a", cores=8, answer=HOLD)
    ann = await local_cluster.add_user("ann")
    reply = await ann.tasks.SubmitTask(
        tpb.SubmitTaskRequest(command="job", array=tpb.TaskArray(indices=[0, 1, 2])), timeout=10
    )
    for task in reply.tasks:
        await local_cluster.wait_status(task.task_id, TaskStatus.RUNNING)
        runner.finish(task.task_id, 0)
        await local_cluster.wait_status(task.task_id, TaskStatus.COMPLETED)
    completed = [TaskStatus.COMPLETED.pb]

    batch_calls = [
        lambda: ann.tasks.GetBatch(tpb.GetBatchRequest(batch_id=reply.batch_id), timeout=10),
        lambda: ann.tasks.ListTasks(
            tpb.ListTasksRequest(batch_id=reply.batch_id, statuses=completed), timeout=10
        ),
    ]
    for call in batch_calls:
        for plan in await _plans(local_cluster, call):
            assert "ix_tasks_batch_id_status (batch_id=?" in plan, plan

    newest_first = {
        "ix_tasks_owner_task_id (owner=?": [
            lambda: ann.tasks.ListTasks(tpb.ListTasksRequest(limit=2), timeout=10),
            lambda: ann.tasks.ListTasks(
                tpb.ListTasksRequest(statuses=completed, limit=2), timeout=10
            ),
            lambda: ann.tasks.ListTasks(
                tpb.ListTasksRequest(before_task_id=reply.tasks[-1].task_id, limit=2), timeout=10
            ),
        ],
        "ix_tasks_assigned_node_task_id (assigned_node=?": [
            lambda: local_cluster.tasks.ListTasks(
                tpb.ListTasksRequest(node="a", limit=2), timeout=10
            ),
        ],
    }
    for index, calls in newest_first.items():
        for call in calls:
            for plan in await _plans(local_cluster, call):
                assert index in plan and "TEMP B-TREE" not in plan, plan

    # An admin's list of ended tasks walks the tasks newest first and stops at the limit
    # (through the status index it read and sorted every task that ever ended).
    ended = tpb.ListTasksRequest(statuses=[*completed, TaskStatus.FAILED.pb], limit=2)
    for plan in await _plans(local_cluster, lambda: local_cluster.tasks.ListTasks(ended)):
        assert "TEMP B-TREE" not in plan and "status" not in plan, plan
    assert [t.task_id for t in (await local_cluster.tasks.ListTasks(ended, timeout=10)).tasks] == [
        t.task_id for t in reply.tasks[::-1][:2]
    ]

    listed = await ann.tasks.ListTasks(tpb.ListTasksRequest(limit=2), timeout=10)
    assert [t.task_id for t in listed.tasks] == [t.task_id for t in reply.tasks[::-1][:2]]
    of_batch = tpb.ListTasksRequest(batch_id=reply.batch_id)
    assert len((await ann.tasks.ListTasks(of_batch, timeout=10)).tasks) == 3
    bob = await local_cluster.add_user("bob")
    assert not (await bob.tasks.ListTasks(of_batch, timeout=10)).tasks  # ann's batch

    assert local_cluster.server is not None
    with local_cluster.server.cluster.store.engine.connect() as connection:
        names = {row[1] for row in connection.execute(text("PRAGMA index_list(tasks)"))}
    # Every index is written on each insert and status change: none that another serves.
    replaced = {"ix_tasks_status", "ix_tasks_batch_id", "ix_tasks_owner", "ix_tasks_assigned_node"}
    assert not names & replaced, names
