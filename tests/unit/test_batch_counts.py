"""GetBatch's counts add up to the batch's size at every moment, also while its tasks end.

A task that has just ended is in memory until its final status is stored; GetBatch counts
final tasks from the store and the others from memory, so a task whose final status was
committed but which the Host still keeps in memory must not be counted twice. A job
array's rows are listed a moment before its tasks are in memory: what asks for them then
waits for them.
"""

from __future__ import annotations

import asyncio

import pytest

from hakuriver_common.proto.hakuriver.v1 import task_service_pb2 as tpb
from hakuriver_common.statuses import TaskStatus
from tests.fake_runner import HOLD, eventually
from tests.unit.local_cluster import LocalCluster


async def test_counts_add_up_while_tasks_end(local_cluster: LocalCluster) -> None:
    runner = await local_cluster.add_runner("a", cores=64, answer=HOLD)
    size = 60
    reply = await local_cluster.tasks.SubmitTask(
        tpb.SubmitTaskRequest(command="job", array=tpb.TaskArray(indices=list(range(size)))),
        timeout=10,
    )
    await eventually(lambda: len(runner.running) == size, within=10)
    wrong: list[str] = []
    ending = True

    async def poll() -> None:
        while ending:
            request = tpb.GetBatchRequest(batch_id=reply.batch_id)
            batch = (await local_cluster.tasks.GetBatch(request, timeout=10)).batch
            counted = {TaskStatus.from_pb(c.status).value: c.count for c in batch.counts}
            if sum(counted.values()) != batch.size:
                wrong.append(f"{batch.size} tasks counted as {counted}")

    pollers = [asyncio.create_task(poll()) for _ in range(4)]
    for task in reply.tasks:
        runner.finish(task.task_id, 0)
        await asyncio.sleep(0.005)
    await local_cluster.wait_status(reply.tasks[-1].task_id, TaskStatus.COMPLETED)
    ending = False
    await asyncio.gather(*pollers)
    assert not wrong, f"{len(wrong)} answers, e.g. {wrong[:3]}"
    final = await local_cluster.tasks.GetBatch(tpb.GetBatchRequest(batch_id=reply.batch_id))
    assert [(c.status, c.count) for c in final.batch.counts] == [(TaskStatus.COMPLETED.pb, size)]


async def _array_being_added(
    cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch, size: int
) -> tuple[asyncio.Future[tpb.SubmitTaskResponse], int, list[int]]:
    """An array submitted and stored, its tasks not yet in the Host's memory (held there
    for 0.3 s: a 10,000-task array's insert takes about that long), and its batch and task
    ids as ListTasks shows them meanwhile."""
    assert cluster.server is not None
    store = cluster.server.cluster.store
    original = store.insert_tasks
    committed = asyncio.Event()

    async def insert_tasks(write: object) -> None:
        await original(write)  # type: ignore[arg-type]
        committed.set()
        await asyncio.sleep(0.3)

    monkeypatch.setattr(store, "insert_tasks", insert_tasks)
    request = tpb.SubmitTaskRequest(command="job", array=tpb.TaskArray(indices=list(range(size))))
    submitted = asyncio.ensure_future(cluster.tasks.SubmitTask(request, timeout=10))
    await committed.wait()
    listed = await cluster.tasks.ListTasks(tpb.ListTasksRequest(limit=size), timeout=5)
    assert len(listed.tasks) == size
    return submitted, listed.tasks[0].batch_id, [t.task_id for t in listed.tasks]


async def test_an_array_listed_before_its_tasks_are_held_is_counted_and_killed_whole(
    local_cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GetBatch and KillBatch wait for an array being added, rather than count it empty
    and kill none of it."""
    runner = await local_cluster.add_runner("a", cores=4, answer=HOLD)
    submitted, batch_id, _ = await _array_being_added(local_cluster, monkeypatch, 8)
    got = await local_cluster.tasks.GetBatch(tpb.GetBatchRequest(batch_id=batch_id), timeout=5)
    killed = await local_cluster.tasks.KillBatch(tpb.KillBatchRequest(batch_id=batch_id), timeout=5)
    await submitted
    assert {TaskStatus.from_pb(c.status): c.count for c in got.batch.counts} == {
        TaskStatus.PENDING: 8
    }
    assert killed.affected == 8
    assert {TaskStatus.from_pb(c.status): c.count for c in killed.batch.counts} == {
        TaskStatus.KILLED: 8
    }
    assert not runner.running  # those placed meanwhile were killed on the Runner


async def test_a_task_listed_before_it_is_held_is_killed_and_never_runs(
    local_cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """KillTask on a task being added acts on the task the Host holds, not on a copy read
    from its row (which left the held one pending, to be placed and run)."""
    runner = await local_cluster.add_runner("a", cores=4, answer=HOLD)
    submitted, _, task_ids = await _array_being_added(local_cluster, monkeypatch, 2)
    watch = local_cluster.tasks.WatchTask(tpb.WatchTaskRequest(task_id=task_ids[0]), timeout=5)
    killed = await local_cluster.tasks.KillTask(tpb.KillTaskRequest(task_id=task_ids[0]))
    await submitted
    seen = [TaskStatus.from_pb(reply.task.status) async for reply in watch]
    assert TaskStatus.from_pb(killed.task.status) is TaskStatus.KILLED
    assert seen[-1] is TaskStatus.KILLED and TaskStatus.RUNNING not in seen, seen
    await local_cluster.wait_status(task_ids[1], TaskStatus.RUNNING)
    assert [t for t in runner.dispatched if t == task_ids[0]] == []
