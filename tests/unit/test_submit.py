"""SubmitTask answers after the placement pass that considered the new tasks: a task placed at
once comes back assigning on its node; one that must wait comes back pending with its queue
position. Either way the task is stored before the answer."""

from __future__ import annotations

from hakuriver_common.proto.hakuriver.v1 import task_pb2, task_service_pb2 as tpb
from hakuriver_common.statuses import TaskStatus
from tests.fake_runner import HOLD
from tests.unit.local_cluster import LocalCluster, status_of


async def test_a_task_that_fits_comes_back_placed(local_cluster: LocalCluster) -> None:
    await local_cluster.add_runner("a", cores=2, answer=HOLD)
    task = await local_cluster.submit("job", cores=2)
    assert status_of(task) is TaskStatus.ASSIGNING
    assert (task.assigned_node, task.queue_position) == ("a", 0)
    assert len(task.assigned_cpus) == 2


async def test_a_task_that_must_wait_comes_back_queued(local_cluster: LocalCluster) -> None:
    await local_cluster.add_runner("a", cores=2, answer=HOLD)
    await local_cluster.submit_running(cores=2)
    task = await local_cluster.submit("job", cores=1)
    assert status_of(task) is TaskStatus.PENDING
    assert (task.assigned_node, task.queue_position) == ("", 1)


async def test_a_batch_reports_each_task_as_placed_or_queued(local_cluster: LocalCluster) -> None:
    await local_cluster.add_runner("a", cores=1, answer=HOLD)
    await local_cluster.add_runner("b", cores=1, answer=HOLD)
    await local_cluster.submit_running(targets=[task_pb2.Target(hostname="b")])
    request = tpb.SubmitTaskRequest(
        command="job",
        targets=[task_pb2.Target(hostname="a"), task_pb2.Target(hostname="b")],
    )
    reply = await local_cluster.tasks.SubmitTask(request, timeout=5)
    on_a, on_b = reply.tasks
    assert reply.batch_id
    assert (status_of(on_a), on_a.assigned_node) == (TaskStatus.ASSIGNING, "a")
    assert (status_of(on_b), on_b.queue_position) == (TaskStatus.PENDING, 1)
