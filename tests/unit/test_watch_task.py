"""WatchTask sends every transition, in order, up to and including the final one, whatever
the timing: a consumer that holds a message while the task moves on still gets each step."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Iterable

import pytest

from hakuriver_common.proto.hakuriver.v1 import (
    runner_service_pb2 as rpb,
    task_pb2,
    task_service_pb2 as tpb,
)
from hakuriver_common.statuses import TaskStatus
from hakuriver_host.task_machine import IllegalTransition
from tests.fake_runner import HOLD, NO_ANSWER, RUN_AND_EXIT, eventually
from tests.unit.local_cluster import LocalCluster


def _book(cluster: LocalCluster):  # type: ignore[no-untyped-def]
    assert cluster.server is not None
    return cluster.server.cluster.book


@contextlib.asynccontextmanager
async def _store_held(cluster: LocalCluster) -> AsyncIterator[None]:
    """The store's one thread kept busy: changes are made in memory, none is stored."""
    assert cluster.server is not None
    busy = threading.Event()
    blocker = asyncio.ensure_future(cluster.server.store.run(busy.wait, 30))
    try:
        yield
    finally:
        busy.set()
        await blocker


async def test_a_held_watcher_gets_every_transition_in_order(local_cluster: LocalCluster) -> None:
    runner = await local_cluster.add_runner("a", answer=HOLD)
    [task] = await local_cluster.submit_running()
    watch = _book(local_cluster).watch(task.task_id)
    first = await anext(watch)
    assert first.status == TaskStatus.RUNNING

    # The consumer holds ``first`` while the task moves three times, each change stored.
    await local_cluster.tasks.PauseTask(tpb.PauseTaskRequest(task_id=task.task_id), timeout=5)
    await local_cluster.tasks.ResumeTask(tpb.ResumeTaskRequest(task_id=task.task_id), timeout=5)
    runner.finish(task.task_id, 0)
    await local_cluster.wait_status(task.task_id, TaskStatus.COMPLETED)

    rest = [t.status async for t in watch]
    assert rest == [TaskStatus.PAUSED, TaskStatus.RUNNING, TaskStatus.COMPLETED]


async def test_a_watch_opened_while_the_final_change_is_being_stored_ends_final(
    local_cluster: LocalCluster,
) -> None:
    """It is shown the task as stored (running), then its end once that is stored."""
    await local_cluster.add_runner("a", answer=HOLD)
    [task] = await local_cluster.submit_running()
    book = _book(local_cluster)

    async def statuses() -> list[str]:
        return [t.status async for t in book.watch(task.task_id)]

    # Decided in memory, not yet stored: neither active nor final in the database.
    storing = book.apply(book.active[task.task_id], TaskStatus.KILLED, "killed by the test")
    watching = asyncio.ensure_future(statuses())
    await storing
    assert await asyncio.wait_for(watching, 10) == [TaskStatus.RUNNING, TaskStatus.KILLED]


async def test_watch_streams_opened_at_submit_end_with_the_final_status(
    local_cluster: LocalCluster,
) -> None:
    await local_cluster.add_runner("a", answer=RUN_AND_EXIT)
    for _ in range(30):
        task = await local_cluster.submit("true")
        call = local_cluster.tasks.WatchTask(tpb.WatchTaskRequest(task_id=task.task_id))
        statuses = [reply.task.status async for reply in call]
        assert statuses[-1] == task_pb2.TASK_STATUS_COMPLETED, statuses
        order = [TaskStatus.from_pb(s) for s in statuses]
        # Strictly forward through pending/assigning/running: no step repeated or reversed.
        ranks = {TaskStatus.PENDING: 0, TaskStatus.ASSIGNING: 1, TaskStatus.RUNNING: 2}
        ranked = [ranks.get(s, 3) for s in order]
        assert ranked == sorted(set(ranked)), order


async def test_changes_stored_together_are_one_nodes_and_each_is_told(
    local_cluster: LocalCluster,
) -> None:
    """Changes made in memory one by one and stored as one write (a Runner's message of
    reports): an illegal one is refused before it is made, changes of two nodes are not
    one write, and a watcher is told each change in order once the write is stored."""
    await local_cluster.add_runner("a", answer=HOLD)
    await local_cluster.add_runner("b", answer=HOLD)
    submitted = [
        await local_cluster.submit("job", targets=[task_pb2.Target(hostname=name)])
        for name in ("a", "b")
    ]
    for task in submitted:
        await local_cluster.wait_status(task.task_id, TaskStatus.RUNNING)
    book = _book(local_cluster)
    first, second = (book.active[t.task_id] for t in submitted)
    before = await local_cluster.events(first.task_id)
    with pytest.raises(IllegalTransition):
        book.change(first, TaskStatus.PENDING)
    assert first.status == TaskStatus.RUNNING
    assert await local_cluster.events(first.task_id) == before

    watch = book.watch(first.task_id)
    assert (await anext(watch)).status == TaskStatus.RUNNING
    paused = [book.change(first, TaskStatus.PAUSED), book.change(second, TaskStatus.PAUSED)]
    with pytest.raises(ValueError, match="2 write keys"):
        book.store_changes(paused)
    for change in paused:  # each node's on its own
        await book.store_changes([change])
    made = [book.change(first, TaskStatus.RUNNING), book.change(first, TaskStatus.PAUSED)]
    assert first.status == TaskStatus.PAUSED
    await book.store_changes(made)
    assert [(await anext(watch)).status for _ in range(3)] == [
        TaskStatus.PAUSED,
        TaskStatus.RUNNING,
        TaskStatus.PAUSED,
    ]
    assert [s for s, _ in await local_cluster.events(first.task_id)][-3:] == [
        TaskStatus.PAUSED,
        TaskStatus.RUNNING,
        TaskStatus.PAUSED,
    ]


async def test_a_change_whose_telling_fails_leaves_no_other_untold(
    local_cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Changes stored as one write are told one by one: a telling that fails (the
    metrics, here) is raised once every watcher has been told."""
    await local_cluster.add_runner("a", answer=HOLD)
    first, second = await local_cluster.submit_running(2)
    book = _book(local_cluster)
    tasks = [book.active[first.task_id], book.active[second.task_id]]
    assert tasks[0].assigned_node == tasks[1].assigned_node
    watch = book.watch(second.task_id)
    assert (await anext(watch)).status == TaskStatus.RUNNING
    moved = book.metrics.tasks_moved

    def failing_once(moves: Iterable[tuple[TaskStatus, TaskStatus, str]]) -> None:
        listed = list(moves)
        if all(new is not TaskStatus.PAUSED for _, new, _ in listed):  # another write's
            return moved(listed)
        monkeypatch.setattr(book.metrics, "tasks_moved", moved)
        raise RuntimeError("metrics down")

    monkeypatch.setattr(book.metrics, "tasks_moved", failing_once)
    made = [book.change(task, TaskStatus.PAUSED) for task in tasks]
    with pytest.raises(RuntimeError, match="metrics down"):
        await book.store_changes(made)
    assert (await asyncio.wait_for(anext(watch), 5)).status == TaskStatus.PAUSED


async def test_a_small_report_after_a_big_one_is_told_after_it(
    local_cluster: LocalCluster,
) -> None:
    """A Runner's message of many reports, then one of a single report on one of those
    tasks, both stored in one transaction: however the Host spreads the bulk of the first
    over the event loop (bulk_lane), a watcher is told the first message's change first
    (telling them the other way round, its watch would end at the final status, never
    showing it running)."""
    runner = await local_cluster.add_runner("a", cores=64, answer=NO_ANSWER)
    tasks = [await local_cluster.submit("job") for _ in range(40)]
    for task in tasks:
        await local_cluster.wait_status(task.task_id, TaskStatus.ASSIGNING)
    for _ in range(200):
        if len(runner.dispatched) == len(tasks):
            break
        await asyncio.sleep(0.01)
    watched = tasks[0].task_id
    call = local_cluster.tasks.WatchTask(tpb.WatchTaskRequest(task_id=watched))
    seen = [(await anext(aiter(call))).task.status]

    # The store's thread is kept busy until all three messages' changes are made in
    # memory: the first message's write waits alone, the next two are then stored together
    # and complete at once.
    book = _book(local_cluster)
    async with _store_held(local_cluster):
        first, *many = tasks[::-1]
        runner.send(
            rpb.ConnectRequest(
                task_state=rpb.TaskStateReport(
                    task_id=first.task_id, state=rpb.RUNNER_TASK_STATE_RUNNING
                )
            )
        )
        reports = [
            rpb.TaskStateReport(task_id=t.task_id, state=rpb.RUNNER_TASK_STATE_RUNNING)
            for t in many
        ]
        runner.send(rpb.ConnectRequest(task_states=rpb.TaskStateBatch(reports=reports)))
        exited = rpb.TaskStateReport(
            task_id=watched, state=rpb.RUNNER_TASK_STATE_EXITED, exit_code=0
        )
        runner.send(rpb.ConnectRequest(task_state=exited))

        def exited_in_memory() -> bool:  # a final task leaves ``active`` once decided
            task = book.active.get(watched)
            return task is None or task.status == TaskStatus.COMPLETED

        await eventually(exited_in_memory, what="the exit decided in memory")
    seen += [reply.task.status async for reply in call]
    assert seen == [
        task_pb2.TASK_STATUS_ASSIGNING,
        task_pb2.TASK_STATUS_RUNNING,
        task_pb2.TASK_STATUS_COMPLETED,
    ]


async def test_a_watcher_is_told_a_task_runs_at_once_and_that_it_ended_once_stored(
    local_cluster: LocalCluster,
) -> None:
    """As GetTask shows it: a watcher learns a task runs as soon as its Runner says so,
    not once the store's thread gets to the change (a lone task's submit -> running waited
    for a job array's writes); its end only once stored, when its output is closed."""
    runner = await local_cluster.add_runner("a", answer=NO_ANSWER)
    task = await local_cluster.submit("job")
    for _ in range(500):
        if runner.dispatched:
            break
        await asyncio.sleep(0.01)
    call = local_cluster.tasks.WatchTask(tpb.WatchTaskRequest(task_id=task.task_id), timeout=30)
    replies = aiter(call)
    assert TaskStatus.from_pb((await anext(replies)).task.status) is TaskStatus.ASSIGNING

    async with _store_held(local_cluster):
        for state in (rpb.RUNNER_TASK_STATE_RUNNING, rpb.RUNNER_TASK_STATE_EXITED):
            report = rpb.TaskStateReport(task_id=task.task_id, state=state, exit_code=0)
            runner.send(rpb.ConnectRequest(task_state=report))
            if state == rpb.RUNNER_TASK_STATE_RUNNING:
                running = await asyncio.wait_for(anext(replies), 5)
                assert TaskStatus.from_pb(running.task.status) is TaskStatus.RUNNING
        ended = asyncio.ensure_future(anext(replies))
        book = _book(local_cluster)

        def completed_in_memory() -> bool:  # GetTask would wait for the store's thread
            live = book.live(task.task_id)
            return live is not None and live.status == TaskStatus.COMPLETED

        await eventually(completed_in_memory, what="the end decided in memory")
        await asyncio.sleep(0.2)
        assert not ended.done(), "told of the end before it was stored"
    final = await asyncio.wait_for(ended, 5)
    assert TaskStatus.from_pb(final.task.status) is TaskStatus.COMPLETED


async def test_a_placement_is_told_once_stored_and_a_pause_answered_once_stored(
    local_cluster: LocalCluster,
) -> None:
    """Only what a Runner reports is told before it is stored. A placement is the Host's
    own decision (told after the end that freed its room, in its node's order; a Host that
    crashed before storing it places the task anew), and PauseTask answers once the pause
    is stored, though its watchers hear of it at once."""
    runner = await local_cluster.add_runner("a", cores=1, answer=HOLD)
    [first] = await local_cluster.submit_running()
    queued = await local_cluster.submit("job")
    call = local_cluster.tasks.WatchTask(tpb.WatchTaskRequest(task_id=queued.task_id), timeout=30)
    replies = aiter(call)
    assert TaskStatus.from_pb((await anext(replies)).task.status) is TaskStatus.PENDING
    book = _book(local_cluster)

    async with _store_held(local_cluster):
        told = asyncio.ensure_future(anext(replies))
        runner.finish(first.task_id, 0)
        await eventually(
            lambda: book.active[queued.task_id].status == TaskStatus.ASSIGNING,
            what="the placement decided in memory",
        )
        await asyncio.sleep(0.2)
        assert not told.done(), "told of a placement not yet stored"
    assert TaskStatus.from_pb((await asyncio.wait_for(told, 5)).task.status) in (
        TaskStatus.ASSIGNING,
        TaskStatus.RUNNING,
    )
    await local_cluster.wait_status(queued.task_id, TaskStatus.RUNNING)

    watch = book.watch(queued.task_id)
    assert (await anext(watch)).status == TaskStatus.RUNNING
    async with _store_held(local_cluster):
        pausing = asyncio.ensure_future(
            local_cluster.tasks.PauseTask(tpb.PauseTaskRequest(task_id=queued.task_id), timeout=10)
        )
        assert (await asyncio.wait_for(anext(watch), 5)).status == TaskStatus.PAUSED
        await asyncio.sleep(0.2)
        assert not pausing.done(), "answered before the pause was stored"
    paused = await asyncio.wait_for(pausing, 5)
    assert TaskStatus.from_pb(paused.task.status) is TaskStatus.PAUSED
