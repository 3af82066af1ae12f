"""DeleteTar refuses an environment that unfinished tasks use (VPS included, and tasks
whose submission is being stored), as ``docker rmi`` refuses an image a container uses,
naming how many in each status (docs/environments.md, "Deleting an environment")."""

from __future__ import annotations

import asyncio
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
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE1KjKdQFMK2E8kVmbb3r2Dk5c6bwSvpZ0ZyYy2sQkVx user@lab"


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


async def _delete(cluster: LocalCluster) -> epb.DeleteTarResponse:
    request = epb.DeleteTarRequest(name=ENV)
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
        f"{ids}); wait for them to end or kill them (hakuriver.client kill ID), then delete it"
    )
    assert used.tarball.exists()
    queued = await local_cluster.get(used.pending.task_id)
    assert (status_of(queued), queued.queue_position) == (TaskStatus.PENDING, 1)


async def test_a_submission_being_stored_counts_as_in_use(
    local_cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A job array of ENV admitted and being inserted (a 10,000-task array's insert takes a
    while) is not in the Host's memory yet: the deletion is refused all the same."""
    assert local_cluster.server is not None
    await local_cluster.add_runner("a", cores=1, answer=HOLD)
    tarball = _tarball(local_cluster)
    store = local_cluster.server.cluster.store
    original = store.insert_tasks
    inserting, release = asyncio.Event(), asyncio.Event()

    async def insert_tasks(write: object) -> None:
        inserting.set()
        await asyncio.wait_for(release.wait(), 10)
        await original(write)  # type: ignore[arg-type]

    monkeypatch.setattr(store, "insert_tasks", insert_tasks)
    request = tpb.SubmitTaskRequest(
        command="job", container_name=ENV, array=tpb.TaskArray(indices=[0, 1])
    )
    submitted = asyncio.ensure_future(local_cluster.tasks.SubmitTask(request, timeout=10))
    await asyncio.wait_for(inserting.wait(), 10)
    try:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await _delete(local_cluster)
    finally:
        release.set()
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "is used by 2 unfinished tasks (2 pending: " in (refused.value.details() or "")
    assert tarball.exists()
    reply = await submitted
    assert reply.created == 2


async def test_an_environment_no_unfinished_task_uses_is_deleted(
    local_cluster: LocalCluster,
) -> None:
    runner = await local_cluster.add_runner("a", cores=1, answer=HOLD)
    tarball = _tarball(local_cluster)
    [task] = await local_cluster.submit_running(container_name=ENV)
    runner.finish(task.task_id, 0)
    await local_cluster.wait_status(task.task_id)
    reply = await _delete(local_cluster)
    assert list(reply.removed) == [str(tarball)] and not tarball.exists()
    with pytest.raises(grpc.aio.AioRpcError) as again:
        await _delete(local_cluster)
    assert again.value.code() == grpc.StatusCode.NOT_FOUND
    assert again.value.details() == f"name: no tarball of environment '{ENV}'"
    listed = await local_cluster.tasks.ListTasks(tpb.ListTasksRequest(limit=10), timeout=5)
    assert [status_of(t) for t in listed.tasks] == [TaskStatus.COMPLETED]
