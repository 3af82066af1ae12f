"""Clients' reads of the store (GetTask's events, ListTasks, CountTasks, GetBatch,
ListAuditEvents) run on a thread of their own: they never wait behind the writes queued on
the store's thread."""

from __future__ import annotations

import asyncio
import sqlite3

from hakuriver_common.proto.hakuriver.v1 import (
    audit_service_pb2 as aupb,
    node_service_pb2 as npb,
    task_pb2,
    task_service_pb2 as tpb,
)
from hakuriver_common.statuses import TaskStatus
from tests.fake_runner import eventually
from tests.unit.local_cluster import LocalCluster


async def _draining(cluster: LocalCluster) -> bool:
    reply = await cluster.nodes.ListNodes(npb.ListNodesRequest(), timeout=5)
    return all(node.draining for node in reply.nodes)


async def test_reads_answer_while_a_write_waits_for_a_database_another_program_locks(
    local_cluster: LocalCluster,
) -> None:
    """While another program held SQLite locked, each attempt at a write held the store's
    one thread for SQLite's 5 s wait, and every read queued behind it: GetTask, ListTasks,
    CountTasks, GetBatch and ListAuditEvents took up to 5 s each. Here they answer while a
    drain's write, queued before them, still waits for the lock (the submission's audit
    event, which ListAuditEvents waits for, written before)."""
    await local_cluster.add_runner("a", cores=2)
    request = tpb.SubmitTaskRequest(command="job", array=tpb.TaskArray(indices=[0, 1]))
    batch = await local_cluster.tasks.SubmitTask(request, timeout=5)
    for task in batch.tasks:
        await local_cluster.wait_status(task.task_id, TaskStatus.COMPLETED)
    await local_cluster.audit.ListAuditEvents(aupb.ListAuditEventsRequest(), timeout=5)
    other = sqlite3.connect(local_cluster.config.database.db_file, isolation_level=None)
    drain = asyncio.ensure_future(
        local_cluster.nodes.DrainNode(npb.DrainNodeRequest(hostname="a"), timeout=30)
    )
    try:
        other.execute("BEGIN IMMEDIATE")  # as a sqlite3 shell in a transaction
        # Drained in memory at once, its write then handed to the store's thread.
        await eventually(lambda: _draining(local_cluster), what="the drain under way")
        first = batch.tasks[0].task_id
        got = await local_cluster.tasks.GetTask(tpb.GetTaskRequest(task_id=first), timeout=30)
        listed = await local_cluster.tasks.ListTasks(tpb.ListTasksRequest(), timeout=30)
        counted = await local_cluster.tasks.CountTasks(tpb.CountTasksRequest(), timeout=30)
        summary = await local_cluster.tasks.GetBatch(
            tpb.GetBatchRequest(batch_id=batch.batch_id), timeout=30
        )
        audited = await local_cluster.audit.ListAuditEvents(
            aupb.ListAuditEventsRequest(), timeout=30
        )
        assert not drain.done()  # its write still waits for the lock
        assert await _draining(local_cluster)  # not refused yet: a refused drain is undone
    finally:
        other.close()
    await asyncio.gather(drain, return_exceptions=True)  # written now, or refused at 5 s
    completed = task_pb2.TASK_STATUS_COMPLETED
    assert got.task.status == completed and got.events[-1].status == completed
    assert {t.task_id for t in listed.tasks} == {t.task_id for t in batch.tasks}
    assert [(c.status, c.count) for c in counted.counts] == [(completed, 2)]
    assert [(c.status, c.count) for c in summary.batch.counts] == [(completed, 2)]
    assert [e.action for e in audited.events] == ["task.submit", "runner.join"]
