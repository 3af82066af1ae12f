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
from tests.fake_runner import HOLD, FakeRunner, eventually
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
) -> tuple[asyncio.Future[tpb.SubmitTaskResponse], int, list[int], asyncio.Event]:
    """An array submitted and stored, its tasks not yet in the Host's memory until the test
    sets the returned event (a 10,000-task array's insert takes a few hundred ms), with its
    batch and task ids as ListTasks shows them meanwhile. The node's one core is taken, so
    none of them is placed whenever the calls of the test arrive."""
    assert cluster.server is not None
    runner = await cluster.add_runner("a", cores=1, answer=HOLD)
    await cluster.submit_running(1)
    store = cluster.server.cluster.store
    original = store.insert_tasks
    committed, release = asyncio.Event(), asyncio.Event()

    async def insert_tasks(write: object) -> None:
        await original(write)  # type: ignore[arg-type]
        committed.set()
        await asyncio.wait_for(release.wait(), 10)

    monkeypatch.setattr(store, "insert_tasks", insert_tasks)
    request = tpb.SubmitTaskRequest(command="job", array=tpb.TaskArray(indices=list(range(size))))
    submitted = asyncio.ensure_future(cluster.tasks.SubmitTask(request, timeout=10))
    await committed.wait()
    listed = await cluster.tasks.ListTasks(tpb.ListTasksRequest(limit=size), timeout=5)
    assert len(listed.tasks) == size
    assert len(runner.dispatched) == 1
    return submitted, listed.tasks[0].batch_id, [t.task_id for t in listed.tasks], release


def _free_the_core(cluster: LocalCluster) -> FakeRunner:
    """End the task holding the node's core."""
    [runner] = cluster.runners
    runner.finish(runner.dispatched[0], 0)
    return runner


async def test_an_array_listed_before_its_tasks_are_held_is_counted_and_killed_whole(
    local_cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GetBatch and KillBatch wait for an array being added, rather than count it empty
    and kill none of it (whose tasks then ran)."""
    submitted, batch_id, _, release = await _array_being_added(local_cluster, monkeypatch, 8)
    tasks = local_cluster.tasks
    got = asyncio.ensure_future(tasks.GetBatch(tpb.GetBatchRequest(batch_id=batch_id)))
    await asyncio.sleep(0.1)  # GetBatch first, then KillBatch
    killed = asyncio.ensure_future(tasks.KillBatch(tpb.KillBatchRequest(batch_id=batch_id)))
    await asyncio.sleep(0.2)  # both waiting for the array
    release.set()
    counted, ended = (await got).batch, await killed
    await submitted
    assert {TaskStatus.from_pb(c.status): c.count for c in counted.counts} == {
        TaskStatus.PENDING: 8
    }
    assert ended.affected == 8
    assert {TaskStatus.from_pb(c.status): c.count for c in ended.batch.counts} == {
        TaskStatus.KILLED: 8
    }
    runner = _free_the_core(local_cluster)
    other = await local_cluster.submit("other")  # placed by a pass after the core freed
    await local_cluster.wait_status(other.task_id, TaskStatus.RUNNING)
    assert runner.dispatched[1:] == [other.task_id], "none of the array started"


async def test_a_task_listed_before_it_is_held_is_killed_and_never_runs(
    local_cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """KillTask on a task being added acts on the task the Host holds, not on a copy read
    from its row (which left the held one pending, to be placed and run); its watch sees
    it through."""
    submitted, _, task_ids, release = await _array_being_added(local_cluster, monkeypatch, 2)
    first = task_ids[-1]  # ListTasks lists the newest first
    watch = local_cluster.tasks.WatchTask(tpb.WatchTaskRequest(task_id=first), timeout=5)
    seen_task = asyncio.ensure_future(_statuses(watch))
    killed = asyncio.ensure_future(local_cluster.tasks.KillTask(tpb.KillTaskRequest(task_id=first)))
    await asyncio.sleep(0.2)  # both waiting for the array
    release.set()
    assert TaskStatus.from_pb((await killed).task.status) is TaskStatus.KILLED
    await submitted
    seen = await seen_task  # from pending, or killed already: it resumed after the kill
    assert seen in ([TaskStatus.PENDING, TaskStatus.KILLED], [TaskStatus.KILLED]), seen
    runner = _free_the_core(local_cluster)
    await local_cluster.wait_status(task_ids[0], TaskStatus.RUNNING)
    assert first not in runner.dispatched


async def _statuses(watch: object) -> list[TaskStatus]:
    return [TaskStatus.from_pb(reply.task.status) async for reply in watch]  # type: ignore[attr-defined]
