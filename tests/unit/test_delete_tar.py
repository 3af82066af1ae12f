"""DeleteTar refuses an environment that unfinished tasks use (VPS included), as ``docker rmi``
refuses an image a container uses, naming how many in each status; with ``force`` it
deletes anyway, fails the pending tasks at once ("environment NAME was deleted") and leaves
the running ones to end (docs/environments.md)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from hakuriver_common.proto.hakuriver.v1 import (
    environment_service_pb2 as epb,
    task_pb2,
    task_service_pb2 as tpb,
)
from hakuriver_common.statuses import TaskStatus
from tests.fake_runner import HOLD, FakeRunner
from tests.unit.local_cluster import LocalCluster, status_of

ENV = "myenv"
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIG5vdGFyZWFsa2V5 user@lab"


def _tarball(cluster: LocalCluster, timestamp: int = 1_700_000_000) -> Path:
    """A tarball of ENV as create-tar leaves it (its contents are not read here)."""
    folder = cluster.config.paths.shared_dir / cluster.config.docker.container_dir
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{ENV}-{timestamp}.tar"
    path.write_bytes(b"not read")
    return path


@dataclass
class InUse:
    """A Runner with one core and ENV's tarball; a task of ENV running, a task and a VPS of
    ENV queued, and a task of another environment queued."""

    runner: FakeRunner
    tarball: Path
    running: task_pb2.Task
    pending: task_pb2.Task
    vps: task_pb2.Task
    other: task_pb2.Task


async def _in_use(cluster: LocalCluster) -> InUse:
    runner = await cluster.add_runner("a", cores=1, answer=HOLD)
    tarball = _tarball(cluster)
    [running] = await cluster.submit_running(container_name=ENV)
    pending = await cluster.submit("job", container_name=ENV)
    vps = await cluster.submit(
        "", kind=task_pb2.TASK_KIND_VPS, ssh_public_key=KEY, container_name=ENV, cores=1
    )
    other = await cluster.submit("job")
    assert [status_of(t) for t in (pending, vps, other)] == [TaskStatus.PENDING] * 3
    return InUse(runner, tarball, running, pending, vps, other)


async def _delete(cluster: LocalCluster, force: bool = False) -> epb.DeleteTarResponse:
    request = epb.DeleteTarRequest(name=ENV, force=force)
    reply: epb.DeleteTarResponse = await cluster.environments.DeleteTar(request, timeout=5)
    return reply


async def test_deleting_an_environment_in_use_is_refused_naming_its_tasks(
    local_cluster: LocalCluster,
) -> None:
    used = await _in_use(local_cluster)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await _delete(local_cluster)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    ids = ", ".join(map(str, sorted(t.task_id for t in (used.running, used.pending, used.vps))))
    assert refused.value.details() == (
        f"name: environment '{ENV}' is used by 3 unfinished tasks (2 pending, 1 running: "
        f"{ids}); wait for them to end or kill them, or force the deletion "
        "(hakuriver.docker delete-tar --force): the pending ones then fail at once, the "
        "others are left to end"
    )
    assert used.tarball.exists()
    queued = await local_cluster.get(used.pending.task_id)
    assert (status_of(queued), queued.queue_position) == (TaskStatus.PENDING, 1)


async def test_a_forced_deletion_fails_the_pending_tasks_and_leaves_the_running_ones(
    local_cluster: LocalCluster,
) -> None:
    used = await _in_use(local_cluster)
    reply = await _delete(local_cluster, force=True)
    assert list(reply.removed) == [str(used.tarball)] and not used.tarball.exists()
    assert list(reply.failed_task_ids) == sorted((used.pending.task_id, used.vps.task_id))
    why = f"environment '{ENV}' was deleted"
    for task_id in reply.failed_task_ids:
        failed = await local_cluster.get(task_id)
        assert (status_of(failed), failed.error_message) == (TaskStatus.FAILED, why)
        assert failed.assigned_node == "" and not failed.HasField("started_at")
        assert (await local_cluster.events(task_id))[-1] == (TaskStatus.FAILED, why)
        assert task_id not in used.runner.dispatched
    assert status_of(await local_cluster.get(used.running.task_id)) is TaskStatus.RUNNING
    assert status_of(await local_cluster.get(used.other.task_id)) is TaskStatus.PENDING
    used.runner.finish(used.running.task_id, 0)  # the running one ends as it would have
    done = await local_cluster.wait_status(used.running.task_id)
    assert status_of(done) is TaskStatus.COMPLETED
    await local_cluster.wait_status(used.other.task_id, TaskStatus.RUNNING)  # the queue moves
    with pytest.raises(grpc.aio.AioRpcError) as gone:  # no tarball, no Runner has its image
        await local_cluster.submit("job", container_name=ENV)
    assert gone.value.code() == grpc.StatusCode.NOT_FOUND


async def test_an_environment_no_unfinished_task_uses_is_deleted_without_force(
    local_cluster: LocalCluster,
) -> None:
    runner = await local_cluster.add_runner("a", cores=1, answer=HOLD)
    tarball = _tarball(local_cluster)
    [task] = await local_cluster.submit_running(container_name=ENV)
    runner.finish(task.task_id, 0)
    await local_cluster.wait_status(task.task_id)
    reply = await _delete(local_cluster)
    assert list(reply.removed) == [str(tarball)] and list(reply.failed_task_ids) == []
    with pytest.raises(grpc.aio.AioRpcError) as again:
        await _delete(local_cluster, force=True)
    assert again.value.code() == grpc.StatusCode.NOT_FOUND
    assert again.value.details() == f"name: no tarball of environment '{ENV}'"
    listed = await local_cluster.tasks.ListTasks(tpb.ListTasksRequest(limit=10), timeout=5)
    assert [status_of(t) for t in listed.tasks] == [TaskStatus.COMPLETED]
