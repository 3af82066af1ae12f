"""Races in a task's life, each interleaving forced through the public API of an in-process
Host with FakeRunners: a control call that meets the task's end, a Runner that reconnects
while a placement is being stored."""

from __future__ import annotations

from collections.abc import Callable

import grpc
import pytest

from hakuriver_common.proto.hakuriver.v1 import task_service_pb2 as tpb
from hakuriver_common.statuses import TaskStatus
from tests.fake_runner import HOLD, FakeRunner
from tests.unit.local_cluster import LocalCluster, status_of


def _ends_on(kind: str, runner: list[FakeRunner]) -> Callable[[str, int], None]:
    """An ``on_command`` that makes the task exit 0 as a ``kind`` command reaches the
    Runner: it finds nothing left to pause or resume, as the real Runner then does."""

    def ended(command: str, task_id: int) -> None:
        if command == kind:
            runner[0].finish(task_id, 0)

    return ended


@pytest.mark.parametrize("action", ["pause", "resume"])
async def test_a_pause_or_resume_that_meets_the_tasks_end_is_refused_as_for_an_ended_task(
    local_cluster: LocalCluster, action: str
) -> None:
    """The task exits as its pause (resume) reaches the Runner: the call is refused as one
    that came a moment later, FAILED_PRECONDITION naming the status; it was answered
    UNAVAILABLE, "did not confirm", which says the task kept its status and invites a retry
    (the Runner had answered: the task ended)."""
    held: list[FakeRunner] = []
    runner = await local_cluster.add_runner("a", answer=HOLD, on_command=_ends_on(action, held))
    held.append(runner)
    [task] = await local_cluster.submit_running()
    tasks = local_cluster.tasks
    if action == "resume":
        await tasks.PauseTask(tpb.PauseTaskRequest(task_id=task.task_id), timeout=5)
    call = tasks.PauseTask if action == "pause" else tasks.ResumeTask
    request = (tpb.PauseTaskRequest if action == "pause" else tpb.ResumeTaskRequest)(
        task_id=task.task_id
    )
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await call(request, timeout=5)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    allowed = "running" if action == "pause" else "paused"
    assert refused.value.details() == (
        f"task {task.task_id} is completed: only {allowed} tasks can be {action}d"
    )
    assert status_of(await local_cluster.get(task.task_id)) is TaskStatus.COMPLETED
