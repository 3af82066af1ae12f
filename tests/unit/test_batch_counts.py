"""GetBatch's counts add up to the batch's size at every moment, also while its tasks end.

A task that has just ended is in memory until its final status is stored; GetBatch counts
final tasks from the store and the others from memory, so a task whose final status was
committed but which the Host still keeps in memory must not be counted twice.
"""

from __future__ import annotations

import asyncio

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
