"""CountTasks counts every task the caller may see by status, however many there are: the
dashboard's overview listed at most 1,000 and showed 0 for the statuses it missed."""

from __future__ import annotations

import asyncio
import threading
from datetime import UTC, datetime, timedelta

from google.protobuf.timestamp_pb2 import Timestamp

from hakuriver_common.proto.hakuriver.v1 import task_pb2, task_service_pb2 as tpb
from hakuriver_common.roles import Role
from hakuriver_common.statuses import TaskStatus
from tests.fake_runner import HOLD, RUN_AND_EXIT, eventually
from tests.unit.local_cluster import Client, LocalCluster


async def _submit(client: Client) -> task_pb2.Task:
    reply = await client.tasks.SubmitTask(tpb.SubmitTaskRequest(command="job"), timeout=5)
    return reply.tasks[0]


async def _counts(client: Client | LocalCluster, **fields: object) -> dict[int, int]:
    reply = await client.tasks.CountTasks(tpb.CountTasksRequest(**fields), timeout=5)  # type: ignore[arg-type]
    return {c.status: c.count for c in reply.counts}


async def test_tasks_are_counted_by_status_for_whoever_may_see_them(
    local_cluster: LocalCluster,
) -> None:
    await local_cluster.add_runner("a", cores=64, answer=RUN_AND_EXIT)
    alice = await local_cluster.add_user("alice")
    olga = await local_cluster.add_user("olga", Role.OPERATOR)
    array = tpb.SubmitTaskRequest(command="true", array=tpb.TaskArray(indices=range(1200)))
    [first, *_] = (await alice.tasks.SubmitTask(array, timeout=30)).tasks
    mine = await local_cluster.submit("true")

    async def all_done() -> bool:
        batch = await alice.tasks.GetBatch(tpb.GetBatchRequest(batch_id=first.batch_id))
        return {c.status: c.count for c in batch.batch.counts} == {
            task_pb2.TASK_STATUS_COMPLETED: 1200
        }

    for _ in range(600):
        if await all_done():
            break
        await asyncio.sleep(0.05)
    completed = task_pb2.TASK_STATUS_COMPLETED
    # A user counts their own (naming another owner is refused: test_authorization); an
    # operator everybody's or one's.
    assert await _counts(alice) == {completed: 1200}
    assert await _counts(alice, owner="alice") == {completed: 1200}
    await local_cluster.wait_status(mine.task_id, TaskStatus.COMPLETED)
    assert await _counts(olga) == {completed: 1201}
    assert await _counts(olga, owner="admin") == {completed: 1}
    assert await _counts(olga, statuses=[task_pb2.TASK_STATUS_PENDING]) == {}
    later = Timestamp()
    later.FromDatetime(datetime.now(UTC) + timedelta(hours=1))
    assert await _counts(olga, submitted_after=later) == {}


async def test_running_tasks_are_counted_as_held_and_ended_ones_by_when_they_ended(
    local_cluster: LocalCluster,
) -> None:
    runner = await local_cluster.add_runner("a", cores=4, answer=HOLD)
    alice = await local_cluster.add_user("alice")
    first = await _submit(alice)
    second = await _submit(alice)
    for task in (first, second):
        await local_cluster.wait_status(task.task_id, TaskStatus.RUNNING)
    running, completed = task_pb2.TASK_STATUS_RUNNING, task_pb2.TASK_STATUS_COMPLETED
    assert await _counts(alice, statuses=[running]) == {running: 2}
    assert await _counts(local_cluster, owner="nobody") == {}
    before = Timestamp()
    before.FromDatetime(datetime.now(UTC) - timedelta(seconds=1))
    runner.finish(first.task_id, 0)
    await local_cluster.wait_status(first.task_id, TaskStatus.COMPLETED)
    assert await _counts(alice) == {running: 1, completed: 1}
    # Ended since a moment ago: the finished one only (a running task has not ended).
    assert await _counts(alice, completed_after=before) == {completed: 1}
    later = Timestamp()
    later.FromDatetime(datetime.now(UTC) + timedelta(seconds=60))
    assert await _counts(alice, completed_after=later) == {}


async def test_tasks_that_ended_lately_are_counted_through_an_index(
    local_cluster: LocalCluster,
) -> None:
    """The overview counts them every second or so: a range of an index, not a read of
    every task ever finished (on the thread the Host's writes share)."""
    assert local_cluster.server is not None
    query = (
        "EXPLAIN QUERY PLAN SELECT status, kind, count(*) FROM tasks "
        "WHERE status IN ('completed', 'failed') AND completed_at >= '2026-01-01' "
        "GROUP BY status, kind"
    )
    with local_cluster.server.store.engine.connect() as connection:
        plan = " ".join(str(row[-1]) for row in connection.exec_driver_sql(query))
    assert "ix_tasks_status_completed_at" in plan, plan


async def test_a_task_whose_end_is_stored_while_it_is_counted_is_counted_once(
    local_cluster: LocalCluster,
) -> None:
    """A task whose end was made in memory, and stored after the count read memory but
    before its read of the store ran, was counted twice: running in memory (as shown: not
    stored yet) and completed by the read (review). The store says which of the tasks
    ended in memory it counted; those are not counted again."""
    runner = await local_cluster.add_runner("a", answer=HOLD)
    [task] = await local_cluster.submit_running()
    assert local_cluster.server is not None
    store, book = local_cluster.server.store, local_cluster.server.cluster.book
    reads = store._reads._work_queue  # type: ignore[attr-defined]
    writing, reading = threading.Event(), threading.Event()
    writes_held = asyncio.ensure_future(store.run(writing.wait, 30))  # the store's thread
    reads_held = asyncio.ensure_future(store.read(reading.wait, 30))  # the reads' thread
    try:
        runner.finish(task.task_id, 0)
        # Its end made in memory, and its write handed to the store's thread, behind ours.
        await eventually(
            lambda: book.finishing(task.task_id) is not None and not store._writes._queued,
            what="the end's write on the store's thread",
        )
        waiting = reads.qsize()
        counting = asyncio.ensure_future(_counts(local_cluster))
        await eventually(lambda: reads.qsize() > waiting, what="the count's read behind it")
        writing.set()
        await eventually(lambda: book.finishing(task.task_id) is None, what="the end stored")
    finally:
        writing.set()
        reading.set()
        await asyncio.gather(writes_held, reads_held)
    assert await counting == {task_pb2.TASK_STATUS_COMPLETED: 1}
