"""Races in a task's life, each interleaving forced through the public API of an in-process
Host with FakeRunners: a control call that meets the task's end, a Runner that reconnects
while a placement is being stored."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

import grpc
import pytest

from hakuriver_common.proto.hakuriver.v1 import (
    runner_service_pb2 as rpb,
    task_pb2,
    task_service_pb2 as tpb,
)
from hakuriver_common.statuses import TaskStatus
from hakuriver_host.store import Store, TaskWrite
from tests.fake_runner import HOLD, FakeRunner, eventually
from tests.unit.conftest import MakeCluster
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


async def test_a_runner_registering_while_a_placement_is_stored_gets_it_only_once_stored(
    make_local_cluster: MakeCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pass places a task on a node (in memory) while its Runner's registration is being
    stored: the reconciliation that follows sent it the task at once, ahead of the
    placement's write, so a Host crashing in between had the task pending while it ran
    (placed again after the restart, it ran twice). It is dispatched once its placement is
    stored, as every placement is."""
    order: list[tuple[str, int]] = []
    apply = Store._apply

    def slow_apply(store: Store, writes: list[TaskWrite]) -> None:
        placed = [
            u["task_id"]
            for w in writes
            for u in w.updates
            if u.get("status") == TaskStatus.ASSIGNING.value
        ]
        if placed:
            time.sleep(0.5)  # the placement's commit takes a while
        apply(store, writes)
        order.extend(("stored placement", task_id) for task_id in placed)

    monkeypatch.setattr(Store, "_apply", slow_apply)
    cluster = await make_local_cluster()
    runner = await cluster.add_runner(
        "a", answer=HOLD, on_dispatch=lambda t: order.append(("dispatched", t))
    )
    other = await cluster.add_runner("b", answer=HOLD)
    assert cluster.server is not None
    host = cluster.server.cluster
    await runner.drop()
    await eventually(lambda: host.nodes.nodes["a"].link is None, what="a's stream closed")
    queued = await cluster.submit("job", targets=[task_pb2.Target(hostname="a")])
    assert status_of(queued) is TaskStatus.PENDING
    held = threading.Event()
    cluster.server.store.executor.submit(held.wait, 10)  # the store's one thread is busy
    try:
        connecting = asyncio.create_task(runner.connect())  # its node's row waits its turn
        await eventually(lambda: host.nodes.nodes["a"].link is not None, what="a's new link")
        other.environments = [*other.environments, "another"]  # a heartbeat that kicks a pass
        await eventually(
            lambda: host.book.active[queued.task_id].status == TaskStatus.ASSIGNING,
            what="the placement decided in memory",
        )
    finally:
        held.set()
    await connecting
    await cluster.wait_status(queued.task_id, TaskStatus.RUNNING)
    assert order.index(("stored placement", queued.task_id)) < order.index(
        ("dispatched", queued.task_id)
    )


async def test_an_end_reported_twice_is_released_only_once_it_is_stored(
    make_local_cluster: MakeCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Runner reports a task's end a second time (a kill that finds its container gone)
    while the first report's end waits to be stored: the second was answered with a release
    at once, so the Runner dropped the task before the Host had stored its end (a Host
    crashing then lost it: the Runner no longer had it to report again)."""
    order: list[tuple[str, int]] = []
    apply = Store._apply
    final = {s.value for s in TaskStatus if s.is_final}

    def recording_apply(store: Store, writes: list[TaskWrite]) -> None:
        apply(store, writes)
        ended = [u["task_id"] for w in writes for u in w.updates if u.get("status") in final]
        order.extend(("stored end", task_id) for task_id in ended)

    monkeypatch.setattr(Store, "_apply", recording_apply)
    cluster = await make_local_cluster()
    runner = await cluster.add_runner(
        "a", answer=HOLD, on_release=lambda t: order.append(("released", t))
    )
    [task, other] = await cluster.submit_running(2)
    assert cluster.server is not None
    book = cluster.server.cluster.book
    held = threading.Event()
    cluster.server.store.executor.submit(held.wait, 10)  # the store's one thread is busy
    try:
        runner.finish(task.task_id, 0)
        await eventually(lambda: book.finishing(task.task_id), what="the end made in memory")
        again = rpb.TaskStateReport(
            task_id=task.task_id,
            state=rpb.RUNNER_TASK_STATE_EXITED,
            error_message="nothing of the task is left on the runner",
        )
        runner.send(rpb.ConnectRequest(task_state=again))
        runner.write(other.task_id, b"after\n")  # read after the report, on the same stream
        await eventually(lambda: cluster.read_log(other.task_id), what="the chunk after it")
    finally:
        held.set()
    await cluster.wait_status(task.task_id, TaskStatus.COMPLETED)
    await eventually(lambda: ("released", task.task_id) in order, what="the release")
    assert order.index(("stored end", task.task_id)) < order.index(("released", task.task_id))


async def test_two_kills_at_once_are_both_answered_with_the_one_end(
    local_cluster: LocalCluster,
) -> None:
    """Two kills of a running task, the second asked while the Runner still stops it for
    the first: both are answered killed, and the task ends once (one final event, one
    release). Pins the interleaving: the second finds the kill asked for already."""
    kills: list[int] = []
    held: list[FakeRunner] = []

    def second_kill_ends_it(kind: str, task_id: int) -> None:
        if kind == "kill":
            kills.append(task_id)
            if len(kills) == 2:
                held[0].finish(task_id, 143)

    runner = await local_cluster.add_runner(
        "a", answer=HOLD, answer_kills=False, on_command=second_kill_ends_it
    )
    held.append(runner)
    [task] = await local_cluster.submit_running()
    first = asyncio.create_task(local_cluster.kill(task.task_id))
    await eventually(lambda: kills, what="the first kill at the Runner")
    second = await local_cluster.kill(task.task_id)
    assert [status_of(t) for t in (await first, second)] == [TaskStatus.KILLED] * 2
    ends = [s for s, _ in await local_cluster.events(task.task_id) if s.is_final]
    assert ends == [TaskStatus.KILLED]
    await eventually(lambda: runner.released == [task.task_id], what="the release")
