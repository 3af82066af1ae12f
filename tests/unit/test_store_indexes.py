"""The store's queries of a batch read that batch's rows, whatever the history holds.

GetBatch counts a batch's ended tasks by status in the store. SQLite picks an index for
``batch_id = ? AND status IN (...)`` without statistics, and it chose the index of status
and completion time over the index of batch_id: every task that ever ended was read on the
store's one thread (tens of milliseconds per 100,000 ended tasks, every write waiting
meanwhile). The plan SQLite chooses does not depend on the rows, so the test asks SQLite
for the plan of each statement a GetBatch and a ListTasks of a batch run.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import event, text

from hakuriver_common.proto.hakuriver.v1 import task_service_pb2 as tpb
from hakuriver_common.statuses import TaskStatus
from tests.fake_runner import HOLD
from tests.unit.local_cluster import LocalCluster


async def test_batch_queries_read_the_batch_index(local_cluster: LocalCluster) -> None:
    assert local_cluster.server is not None
    runner = await local_cluster.add_runner("a", cores=8, answer=HOLD)
    reply = await local_cluster.tasks.SubmitTask(
        tpb.SubmitTaskRequest(command="job", array=tpb.TaskArray(indices=[0, 1, 2])), timeout=10
    )
    for task in reply.tasks:
        await local_cluster.wait_status(task.task_id, TaskStatus.RUNNING)
        runner.finish(task.task_id, 0)
        await local_cluster.wait_status(task.task_id, TaskStatus.COMPLETED)

    engine = local_cluster.server.cluster.store.engine
    statements: list[tuple[str, Any]] = []

    def seen(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        if "batch_id" in statement.split("WHERE", 1)[-1]:
            statements.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", seen)
    try:
        batch = await local_cluster.tasks.GetBatch(
            tpb.GetBatchRequest(batch_id=reply.batch_id), timeout=10
        )
        listed = await local_cluster.tasks.ListTasks(
            tpb.ListTasksRequest(
                batch_id=reply.batch_id, statuses=[TaskStatus.COMPLETED.pb], limit=10
            ),
            timeout=10,
        )
    finally:
        event.remove(engine, "before_cursor_execute", seen)
    assert [(c.status, c.count) for c in batch.batch.counts] == [(TaskStatus.COMPLETED.pb, 3)]
    assert len(listed.tasks) == 3
    assert len(statements) >= 3, statements  # GetBatch's first row, size, counts; ListTasks

    with engine.connect() as connection:
        for statement, parameters in statements:
            plan = connection.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", parameters)
            steps = " / ".join(row[-1] for row in plan)
            assert "ix_tasks_batch_id_status (batch_id=?" in steps, (statement, steps)
    with engine.connect() as connection:
        names = {row[0] for row in connection.execute(text("PRAGMA index_list(tasks)"))}
    # Every index is written on each insert and status change: none that another serves.
    assert "ix_tasks_status" not in names and "ix_tasks_batch_id" not in names, names
