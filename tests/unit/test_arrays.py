"""Job arrays through the public API: one request creates every task of the array, each with
its index in its environment and in its command; the array's cap on tasks holding resources
at once holds; a whole array is counted, killed, paused and resumed as one; another user's
array answers as a missing one; bad arrays are refused with nothing stored."""

from __future__ import annotations

import asyncio
import itertools
import time

import grpc
import pytest

from hakuriver_cli import task as cli_task
from hakuriver_common.arrays import parse_array
from hakuriver_common.channels import open_channel
from hakuriver_common.proto.hakuriver.v1 import (
    node_service_pb2 as npb,
    task_pb2,
    task_service_pb2 as tpb,
    task_service_pb2_grpc,
)
from hakuriver_common.roles import Role
from hakuriver_common.statuses import TaskStatus
from hakuriver_host import task_book
from hakuriver_host.identity import Kind, Principal
from tests.fake_runner import HOLD, eventually
from tests.unit.local_cluster import LocalCluster, status_of
from tests.unit.test_metrics_auth import Samples, metric_values
from tests.unit.test_watch_tasks import Seen, _seen_by


def _array(indices: list[int], max_running: int = 0, **fields: object) -> tpb.SubmitTaskRequest:
    return tpb.SubmitTaskRequest(
        command="echo",
        arguments=[
            "seed=$HAKURIVER_ARRAY_INDEX",
            "of ${HAKURIVER_ARRAY_ID}",
            "$HAKURIVER_ARRAY_IDX",
        ],
        array=tpb.TaskArray(indices=indices, max_running=max_running),
        **fields,  # type: ignore[arg-type]
    )


def _counts(batch: tpb.BatchSummary) -> dict[TaskStatus, int]:
    return {TaskStatus.from_pb(c.status): c.count for c in batch.counts}


async def test_an_array_creates_one_task_per_index_with_its_index(
    local_cluster: LocalCluster,
) -> None:
    runner = await local_cluster.add_runner("a", cores=4, answer=HOLD)
    reply = await local_cluster.tasks.SubmitTask(_array([9, 3, 5]), timeout=5)
    assert reply.created == 3 and reply.batch_id
    # Numbered, and so queued, in index order, whatever the order of the request.
    assert [t.array_index for t in reply.tasks] == [3, 5, 9]
    assert [t.task_id for t in reply.tasks] == sorted(t.task_id for t in reply.tasks)
    assert all(t.batch_id == reply.batch_id for t in reply.tasks)
    await eventually(lambda: len(runner.dispatched) == 3)
    dispatch = runner.tasks[reply.tasks[1].task_id].dispatch
    assert dispatch is not None
    assert dispatch.env["HAKURIVER_ARRAY_INDEX"] == "5"
    assert dispatch.env["HAKURIVER_ARRAY_ID"] == str(reply.batch_id)
    # Replaced in the arguments (whole variable names only), so no shell is needed.
    assert list(dispatch.arguments) == ["seed=5", f"of {reply.batch_id}", "$HAKURIVER_ARRAY_IDX"]
    listed = await local_cluster.tasks.ListTasks(
        tpb.ListTasksRequest(batch_id=reply.batch_id, array_index=9), timeout=5
    )
    assert [t.task_id for t in listed.tasks] == [reply.tasks[2].task_id]


async def test_an_arrays_tasks_ids_follow_its_id_whatever_the_clock_does(
    local_cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One range of ids for the array and its tasks: with the id clock a millisecond on at
    every reading, the array's first task was the next millisecond's first id, not the
    array's id + 1 (an e2e test that counted on it failed on a loaded machine)."""
    assert local_cluster.server is not None
    ticks = itertools.count(time.time_ns() // 1_000_000)
    monkeypatch.setattr(local_cluster.server.cluster.ids, "_clock", lambda: next(ticks))
    await local_cluster.add_runner("a", cores=4, answer=HOLD)
    reply = await local_cluster.tasks.SubmitTask(_array([0, 1, 2]), timeout=5)
    first = reply.batch_id + 1
    assert [t.task_id for t in reply.tasks] == [first, first + 1, first + 2]


async def test_an_array_index_without_its_array_is_refused(local_cluster: LocalCluster) -> None:
    """ListTasks took array_index without batch_id and listed that index of every array
    (the proto says it goes with batch_id): a script that forgot the array's id got tasks
    of other arrays, which it would then kill or read as its own."""
    await local_cluster.add_runner("a", cores=4, answer=HOLD)
    for _ in range(2):
        await local_cluster.tasks.SubmitTask(_array([0, 1]), timeout=5)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await local_cluster.tasks.ListTasks(tpb.ListTasksRequest(array_index=1), timeout=5)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.details() == (
        "array_index: give the array's id in batch_id too; an index alone is one task of "
        "every array"
    )


async def test_an_arrays_environment_is_stored_once_and_each_task_gets_its_index(
    local_cluster: LocalCluster,
) -> None:
    """Each task sees its array id and index in its environment (dispatched and shown);
    the array's tasks share one stored environment, the submitted one, so an array's rows
    bind it once instead of a copy per task."""
    runner = await local_cluster.add_runner("a", cores=4, answer=HOLD)
    request = _array([4, 7], env={"MODE": "fast"})
    reply = await local_cluster.tasks.SubmitTask(request, timeout=5)
    await eventually(lambda: len(runner.dispatched) == 2)
    assert local_cluster.server is not None
    store = local_cluster.server.store
    for task, index in zip(reply.tasks, (4, 7), strict=True):
        expected = {
            "MODE": "fast",
            "HAKURIVER_ARRAY_ID": str(reply.batch_id),
            "HAKURIVER_ARRAY_INDEX": str(index),
        }
        dispatch = runner.tasks[task.task_id].dispatch
        assert dispatch is not None and dict(dispatch.env) == expected
        shown = await local_cluster.tasks.GetTask(tpb.GetTaskRequest(task_id=task.task_id))
        assert dict(shown.task.env) == expected
        row, _ = await store.run(store.get_task, task.task_id)
        assert row is not None and row.env == {"MODE": "fast"}


async def test_the_cap_holds_and_the_next_index_starts_when_one_ends(
    local_cluster: LocalCluster,
) -> None:
    runner = await local_cluster.add_runner("a", cores=8, answer=HOLD)
    reply = await local_cluster.tasks.SubmitTask(_array(list(range(6)), max_running=2), timeout=5)
    ids = [t.task_id for t in reply.tasks]
    await eventually(lambda: len(runner.running) == 2)
    assert sorted(runner.running) == ids[:2]  # lowest indices first, though 8 cores are free
    batch = (await local_cluster.tasks.GetBatch(tpb.GetBatchRequest(batch_id=reply.batch_id))).batch
    assert (batch.size, batch.array, batch.max_running) == (6, True, 2)
    assert _counts(batch) == {TaskStatus.RUNNING: 2, TaskStatus.PENDING: 4}
    waiting = await local_cluster.get(ids[2])
    assert waiting.status_detail == "its array's cap: 2 of its tasks hold resources"
    runner.finish(ids[0], 0)
    await eventually(lambda: ids[2] in runner.running)
    assert len(runner.running) == 2
    # Another submission is not held back by the array's cap.
    other = await local_cluster.submit("job")
    await local_cluster.wait_status(other.task_id, TaskStatus.RUNNING)


async def test_a_whole_array_is_killed_pending_ones_first(local_cluster: LocalCluster) -> None:
    runner = await local_cluster.add_runner("a", cores=2, answer=HOLD)
    reply = await local_cluster.tasks.SubmitTask(_array(list(range(5))), timeout=5)
    await eventually(lambda: len(runner.running) == 2)
    killed = await local_cluster.tasks.KillBatch(
        tpb.KillBatchRequest(batch_id=reply.batch_id), timeout=30
    )
    assert killed.affected == 5
    assert _counts(killed.batch) == {TaskStatus.KILLED: 5}
    # None of the pending ones started on the cores the killed ones freed.
    assert len(runner.dispatched) == 2
    again = await local_cluster.tasks.KillBatch(
        tpb.KillBatchRequest(batch_id=reply.batch_id), timeout=30
    )
    assert again.affected == 0


async def test_a_whole_array_is_paused_and_resumed(local_cluster: LocalCluster) -> None:
    runner = await local_cluster.add_runner("a", cores=4, answer=HOLD)
    reply = await local_cluster.tasks.SubmitTask(_array([1, 2, 3], max_running=2), timeout=5)
    await eventually(lambda: len(runner.running) == 2)
    paused = await local_cluster.tasks.PauseBatch(tpb.PauseBatchRequest(batch_id=reply.batch_id))
    assert paused.affected == 2
    assert _counts(paused.batch) == {TaskStatus.PAUSED: 2, TaskStatus.PENDING: 1}
    resumed = await local_cluster.tasks.ResumeBatch(tpb.ResumeBatchRequest(batch_id=reply.batch_id))
    assert resumed.affected == 2
    assert _counts(resumed.batch) == {TaskStatus.RUNNING: 2, TaskStatus.PENDING: 1}


async def test_holding_or_letting_go_a_batch_tells_live_lists(local_cluster: LocalCluster) -> None:
    """No status changes, but the queue's places do: a live list (the dashboard's) hears
    of one of the batch's pending tasks, on which it ranks its pending tasks again."""
    a = await local_cluster.add_runner("a", cores=1, answer=HOLD)
    [blocker] = await local_cluster.submit_running()
    watcher = Seen(local_cluster)
    try:
        await _seen_by(watcher, local_cluster)
        reply = await local_cluster.tasks.SubmitTask(_array([1, 2]), timeout=5)
        ids = {t.task_id for t in reply.tasks}

        def heard() -> int:
            return sum(1 for task_id, _ in watcher.items if task_id in ids)

        await eventually(lambda: heard() == 2, what="the array's submission")
        await local_cluster.tasks.PauseBatch(tpb.PauseBatchRequest(batch_id=reply.batch_id))
        await eventually(lambda: heard() == 3, what="the hold")
        await local_cluster.tasks.ResumeBatch(tpb.ResumeBatchRequest(batch_id=reply.batch_id))
        await eventually(lambda: heard() == 4, what="its end")
        assert {status for task_id, status in watcher.items if task_id in ids} == {
            task_pb2.TASK_STATUS_PENDING
        }
    finally:
        await watcher.close()
    a.finish(blocker.task_id, 0)


async def test_a_held_arrays_tasks_take_no_place_in_the_queue(local_cluster: LocalCluster) -> None:
    """`pending #1` is next: a held array's tasks start nowhere until resumed, so they are
    not counted ahead of work that can start (they say why they wait instead)."""
    a = await local_cluster.add_runner("a", cores=1, answer=HOLD)
    [blocker] = await local_cluster.submit_running()
    reply = await local_cluster.tasks.SubmitTask(_array([1, 2]), timeout=5)
    await local_cluster.tasks.PauseBatch(tpb.PauseBatchRequest(batch_id=reply.batch_id))
    other = await local_cluster.submit("other")
    assert other.queue_position == 1
    assert await local_cluster.queue_positions([t.task_id for t in reply.tasks]) == [0, 0]
    listed = await local_cluster.tasks.ListTasks(tpb.ListTasksRequest(), timeout=5)
    assert {t.task_id: t.queue_position for t in listed.tasks if t.queue_position} == {
        other.task_id: 1
    }
    await local_cluster.tasks.ResumeBatch(tpb.ResumeBatchRequest(batch_id=reply.batch_id))
    ids = [*(t.task_id for t in reply.tasks), other.task_id]
    assert await local_cluster.queue_positions(ids) == [1, 2, 3]
    a.finish(blocker.task_id, 0)
    await local_cluster.wait_status(reply.tasks[0].task_id, TaskStatus.RUNNING)


async def test_tasks_waiting_for_their_arrays_cap_take_no_place_in_the_queue(
    local_cluster: LocalCluster,
) -> None:
    """As a held batch's, a capped array's tasks that cannot start before one of its own
    ends (its tasks holding resources and those queued ahead of it fill the cap) are not
    counted ahead of other work and say why they wait; when one of the array's tasks ends,
    its next one has a place again, in GetTask's answer (counted for the one task) as in
    ListTasks' (the ranked queue)."""
    a = await local_cluster.add_runner("a", cores=2, answer=HOLD)
    reply = await local_cluster.tasks.SubmitTask(_array(list(range(6)), max_running=2), timeout=5)
    ids = [t.task_id for t in reply.tasks]
    await eventually(lambda: sorted(a.running) == ids[:2])
    lone = await local_cluster.submit("other")
    assert lone.queue_position == 1
    at_cap = "its array's cap: 2 of its tasks hold resources"

    async def shown() -> tuple[dict[int, int], dict[int, int]]:
        """Each task's position and its reason as GetTask answers them, then ListTasks'
        positions (after a change: GetTask counts each task's, ListTasks ranks them)."""
        got = [await local_cluster.get(task_id) for task_id in [*ids[2:], lone.task_id]]
        for task in got:
            assert (task.status_detail == at_cap) == (task.queue_position == 0)
        listed = await local_cluster.tasks.ListTasks(tpb.ListTasksRequest(), timeout=5)
        pending = [t for t in listed.tasks if status_of(t) is TaskStatus.PENDING]
        return {t.task_id: t.queue_position for t in got}, {
            t.task_id: t.queue_position for t in pending
        }

    one, listed = await shown()
    assert one == listed == {ids[2]: 0, ids[3]: 0, ids[4]: 0, ids[5]: 0, lone.task_id: 1}

    # Drained, the node starts nothing: the array has room for one, its next task.
    await local_cluster.nodes.DrainNode(npb.DrainNodeRequest(hostname="a"), timeout=5)
    a.finish(ids[0], 0)
    await local_cluster.wait_status(ids[0], TaskStatus.COMPLETED)
    listed = await local_cluster.tasks.ListTasks(tpb.ListTasksRequest(), timeout=5)
    assert {t.task_id: t.queue_position for t in listed.tasks if t.queue_position} == {
        ids[2]: 1,
        lone.task_id: 2,
    }
    later = await local_cluster.submit("later")
    at_cap = "its array's cap: 2 of its tasks hold resources or are queued ahead of it"
    one, listed = await shown()
    expected = {ids[2]: 1, ids[3]: 0, ids[4]: 0, ids[5]: 0, lone.task_id: 2}
    assert one == expected and listed == {**expected, later.task_id: 3}
    assert (await local_cluster.get(later.task_id)).queue_position == 3


async def test_a_paused_array_holds_its_pending_tasks_until_resumed_across_restarts(
    local_cluster: LocalCluster,
) -> None:
    """Pausing a whole array stops it: its running tasks are paused and its pending ones
    start nowhere, even where cores are free, until it is resumed; a Host restart keeps
    the hold. Other work queued behind it (the same shape) is placed meanwhile."""
    a = await local_cluster.add_runner("a", cores=2, answer=HOLD)
    reply = await local_cluster.tasks.SubmitTask(_array([1, 2, 3, 4]), timeout=5)
    batch = tpb.GetBatchRequest(batch_id=reply.batch_id)
    await eventually(lambda: len(a.running) == 2)
    paused = await local_cluster.tasks.PauseBatch(tpb.PauseBatchRequest(batch_id=reply.batch_id))
    assert paused.affected == 2 and paused.batch.held
    assert _counts(paused.batch) == {TaskStatus.PAUSED: 2, TaskStatus.PENDING: 2}
    b = await local_cluster.add_runner("b", cores=4, answer=HOLD)
    # Each pass that places these would have placed the held tasks first (queued ahead).
    before = await local_cluster.submit("other")
    await local_cluster.wait_status(before.task_id, TaskStatus.RUNNING)
    await local_cluster.restart_host()
    after = await local_cluster.submit("other")
    await local_cluster.wait_status(after.task_id, TaskStatus.RUNNING)
    assert b.dispatched == [before.task_id, after.task_id]
    held = (await local_cluster.tasks.GetBatch(batch)).batch
    assert held.held and _counts(held) == {TaskStatus.PAUSED: 2, TaskStatus.PENDING: 2}
    assert (await local_cluster.get(reply.tasks[3].task_id)).status_detail == (
        f"held: batch {reply.batch_id} is paused (resume it to let it start)"
    )

    resumed = await local_cluster.tasks.ResumeBatch(
        tpb.ResumeBatchRequest(batch_id=reply.batch_id), timeout=10
    )
    assert resumed.affected == 2 and not resumed.batch.held
    await eventually(lambda: len(b.dispatched) == 4, what="the held tasks to start")
    running = (await local_cluster.tasks.GetBatch(batch)).batch
    assert _counts(running) == {TaskStatus.RUNNING: 4}, _counts(running)


async def test_a_held_array_is_killed_whole(local_cluster: LocalCluster) -> None:
    await local_cluster.add_runner("a", cores=1, answer=HOLD)
    reply = await local_cluster.tasks.SubmitTask(_array([1, 2]), timeout=5)
    await local_cluster.wait_status(reply.tasks[0].task_id, TaskStatus.RUNNING)
    paused = await local_cluster.tasks.PauseBatch(tpb.PauseBatchRequest(batch_id=reply.batch_id))
    assert paused.batch.held
    killed = await local_cluster.tasks.KillBatch(
        tpb.KillBatchRequest(batch_id=reply.batch_id), timeout=30
    )
    assert not killed.batch.held
    assert _counts(killed.batch) == {TaskStatus.KILLED: 2}


async def test_another_users_array_answers_as_a_missing_one(local_cluster: LocalCluster) -> None:
    await local_cluster.add_runner("a", cores=2, answer=HOLD)
    alice = await local_cluster.add_user("alice")
    bob = await local_cluster.add_user("bob")
    reply = await alice.tasks.SubmitTask(_array([0, 1]), timeout=5)
    missing = reply.batch_id + 12345
    for batch_id in (reply.batch_id, missing):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await bob.tasks.KillBatch(tpb.KillBatchRequest(batch_id=batch_id), timeout=5)
        assert refused.value.code() == grpc.StatusCode.NOT_FOUND
        assert refused.value.details() == f"batch_id: batch {batch_id} not found"
    mine = await alice.tasks.GetBatch(tpb.GetBatchRequest(batch_id=reply.batch_id), timeout=5)
    assert mine.batch.owner == "alice"


@pytest.mark.parametrize(
    ("request_fields", "message"),
    [
        ({"array": tpb.TaskArray()}, "array.indices: a job array needs at least one index"),
        ({"array": tpb.TaskArray(indices=[1, 1])}, "array.indices: an index is given twice"),
        ({"array": tpb.TaskArray(indices=[-1])}, "array.indices: each must be 0..10,000,000"),
        (
            {"array": tpb.TaskArray(indices=[1], max_running=-2)},
            "array.max_running: must not be negative, got -2",
        ),
        (
            {"array": tpb.TaskArray(indices=list(range(100_001)))},
            "array.indices: at most 100000 tasks allowed, got 100001 tasks",
        ),
        (
            # Each task within its limits, the array not: 300 MB stored from one request.
            {"array": tpb.TaskArray(indices=list(range(100_000))), "env": {"DATA": "x" * 3000}},
            "array: 100,000 tasks of 3,007 bytes each (command, arguments, environment and "
            "mounts) make 300,700,000 bytes; at most 268,435,456 in all: put large inputs in a "
            "file on shared storage",
        ),
        (
            {
                "array": tpb.TaskArray(indices=[1]),
                "targets": [task_pb2.Target(hostname="a"), task_pb2.Target(hostname="a")],
            },
            "targets: a job array takes at most one target",
        ),
        (
            {"array": tpb.TaskArray(indices=[1]), "kind": task_pb2.TASK_KIND_VPS},
            "array: a VPS cannot be a job array",
        ),
    ],
)
async def test_bad_arrays_are_refused_and_nothing_is_stored(
    local_cluster: LocalCluster, request_fields: dict[str, object], message: str
) -> None:
    await local_cluster.add_runner("a", cores=2, answer=HOLD)
    request = tpb.SubmitTaskRequest(command="job", **request_fields)  # type: ignore[arg-type]
    if request.kind == task_pb2.TASK_KIND_VPS:
        request.ssh_public_key = (
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE1KjKdQFMK2E8kVmbb3r2Dk5c6bwSvpZ0ZyYy2sQkVx"
        )
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await local_cluster.tasks.SubmitTask(request, timeout=5)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.details() == message
    listed = await local_cluster.tasks.ListTasks(tpb.ListTasksRequest(), timeout=5)
    assert not listed.tasks


async def test_a_large_array_answers_with_its_first_tasks_and_lists_the_rest(
    local_cluster: LocalCluster,
) -> None:
    await local_cluster.add_runner("a", cores=1, answer=HOLD)
    reply = await local_cluster.tasks.SubmitTask(_array(list(range(2500))), timeout=30)
    assert (reply.created, len(reply.tasks)) == (2500, 1000)
    assert status_of(reply.tasks[0]) is TaskStatus.ASSIGNING
    assert [t.queue_position for t in reply.tasks[1:4]] == [1, 2, 3]
    batch = (await local_cluster.tasks.GetBatch(tpb.GetBatchRequest(batch_id=reply.batch_id))).batch
    assert batch.size == 2500


@pytest.mark.parametrize(
    ("text", "indices", "cap"),
    [
        ("1-5%2", (1, 2, 3, 4, 5), 2),
        ("0-15:4", (0, 4, 8, 12), 0),
        ("1,3,5-7", (1, 3, 5, 6, 7), 0),
        ("7", (7,), 0),
        ("5,1,3", (1, 3, 5), 0),  # in index order, as Slurm takes them
        ("1-3%500000", (1, 2, 3), 500000),  # a cap above the size holds nothing back
        ("0" * 5000 + "7", (7,), 0),
    ],
)
def test_the_array_syntax(text: str, indices: tuple[int, ...], cap: int) -> None:
    spec = parse_array(text)
    assert (spec.indices, spec.max_running) == (indices, cap)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "5-1",
        "1-3%0",
        "1-3%000",
        "1-3%x",
        "a",
        "1,1",
        "0-20000000",
        "1-2:0",
        "\u0661-\u0663",  # Arabic-Indic digits
        "1-3%2147483648",
        "9" * 5000,
        "1-3:" + "9" * 5000,
        "1-3%" + "9" * 5000,
        "0" * 5000 + "20000000",  # leading zeros hide no digits
    ],
)
def test_bad_array_syntax_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="--array") as refused:
        parse_array(text)
    assert len(str(refused.value)) < 200, "the message repeats no huge input"


async def test_a_host_restart_in_the_middle_of_an_array_loses_none_and_starts_none_twice(
    local_cluster: LocalCluster,
) -> None:
    runners = [await local_cluster.add_runner(f"n{i}", cores=4) for i in range(4)]
    size = 1500
    reply = await local_cluster.tasks.SubmitTask(
        _array(list(range(size)), max_running=12), timeout=60
    )

    def started() -> int:
        return sum(len(r.dispatched) for r in runners)

    await eventually(lambda: started() >= size // 3, within=60, what="a third to start")
    await local_cluster.restart_host()
    assert 0 < started() < size

    async def completed() -> bool:
        batch = await local_cluster.tasks.GetBatch(
            tpb.GetBatchRequest(batch_id=reply.batch_id), timeout=5
        )
        return _counts(batch.batch) == {TaskStatus.COMPLETED: size}

    await eventually(completed, within=120, what="every task of the array to complete")
    dispatched = [task_id for r in runners for task_id in r.dispatched]
    assert len(dispatched) == len(set(dispatched)) == size


async def test_an_array_goes_to_a_runner_in_batched_dispatches_when_it_takes_them(
    local_cluster: LocalCluster,
) -> None:
    batched = await local_cluster.add_runner("a", cores=200, answer=HOLD)
    alone = await local_cluster.add_runner("b", cores=200, answer=HOLD, takes_batches=False)
    for target in ("a", "b"):
        await local_cluster.tasks.SubmitTask(
            _array(list(range(200)), targets=[task_pb2.Target(hostname=target)]), timeout=10
        )
    await eventually(lambda: len(batched.running) == len(alone.running) == 200)
    assert max(batched.dispatch_messages) > 1 and sum(batched.dispatch_messages) == 200
    assert alone.dispatch_messages == [1] * 200


async def test_an_arrays_ends_are_released_in_batches_to_a_runner_that_takes_them(
    local_cluster: LocalCluster,
) -> None:
    batched = await local_cluster.add_runner("a", cores=200)
    alone = await local_cluster.add_runner("b", cores=200, takes_batches=False)
    for target in ("a", "b"):
        await local_cluster.tasks.SubmitTask(
            _array(list(range(200)), targets=[task_pb2.Target(hostname=target)]), timeout=10
        )
    await eventually(lambda: len(batched.released) == len(alone.released) == 200)
    assert max(batched.release_messages) > 1 and sum(batched.release_messages) == 200
    assert sorted(batched.released) == sorted(set(batched.released))
    assert alone.release_messages == [1] * 200


async def test_an_array_counts_in_the_metrics_as_its_tasks(local_cluster: LocalCluster) -> None:
    await local_cluster.add_runner("a", cores=1, answer=HOLD)
    await local_cluster.tasks.SubmitTask(_array(list(range(7))), timeout=5)
    command = (("kind", "command"),)

    async def values() -> Samples | None:
        found = await metric_values(local_cluster)
        # The placement is counted once it is stored (then the task runs).
        placed = sum(
            found.get(("hakuriver_tasks", (*command, ("status", status))), 0)
            for status in ("assigning", "running")
        )
        return found if placed == 1 else None

    found = await eventually(values, what="the placed task counted")
    assert found[("hakuriver_tasks_submitted_total", command)] == 7
    assert found[("hakuriver_queue_depth", ())] == 6  # one placed on the one core
    assert found[("hakuriver_tasks", (*command, ("status", "pending")))] == 6


async def test_an_element_killed_while_its_array_is_being_queued_never_starts(
    local_cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A job array's tasks are queued in slices, the loop serving others in between (its
    tasks are active, and stored, from the first slice on). One killed in between must not
    join the queue after. The kill is made in that window directly: over the API it would
    land there only by chance."""
    monkeypatch.setattr(task_book, "QUEUE_SLICE", 10)
    runner = await local_cluster.add_runner("a", cores=1)
    assert local_cluster.server is not None
    cluster = local_cluster.server.cluster
    request = _array(list(range(100)))

    async def submit() -> tpb.SubmitTaskReply:
        reply: tpb.SubmitTaskReply = await local_cluster.tasks.SubmitTask(request, timeout=10)
        return reply

    submitted = asyncio.create_task(submit())
    last = None
    for _ in range(10_000):
        array = [t for t in cluster.book.active.values() if t.array_index is not None]
        if len(array) == 100:
            last = max(array, key=lambda t: t.array_index or 0)
            break
        await asyncio.sleep(0)
    assert last is not None and last.task_id not in cluster.book.pending
    admin = Principal(Kind.USER, local_cluster.config.auth.bootstrap_admin, Role.ADMIN)
    await cluster.kill(last.task_id, admin)
    reply = await submitted
    assert last.task_id not in cluster.book.pending
    await eventually(lambda: len(runner.dispatched) == 99)
    final = await local_cluster.get(last.task_id)
    assert status_of(final) is TaskStatus.KILLED
    assert last.task_id not in runner.dispatched
    batch = await local_cluster.tasks.GetBatch(
        tpb.GetBatchRequest(batch_id=reply.batch_id), timeout=5
    )
    assert _counts(batch.batch)[TaskStatus.KILLED] == 1


async def test_what_a_pass_placed_before_it_failed_is_stored_and_dispatched(
    local_cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A placement pass that fails part way (a bug) still stores and dispatches what it
    placed: those tasks left the queue and hold their cores."""
    runner = await local_cluster.add_runner("a", cores=8, answer=HOLD)
    assert local_cluster.server is not None
    scheduler = local_cluster.server.cluster.scheduler
    plan = scheduler.iter_plan

    def failing_plan(*args: object, **kwargs: object):  # type: ignore[no-untyped-def]
        for count, placed in enumerate(plan(*args, **kwargs), start=1):  # type: ignore[arg-type]
            yield placed
            if count == 2:
                monkeypatch.setattr(scheduler, "iter_plan", plan)
                raise RuntimeError("a bug in the pass")

    monkeypatch.setattr(scheduler, "iter_plan", failing_plan)
    reply = await local_cluster.tasks.SubmitTask(_array([0, 1, 2, 3]), timeout=5)
    await eventually(lambda: len(runner.running) >= 2, what="the two placed to run")
    running = [await local_cluster.get(task_id) for task_id in runner.running]
    assert all(status_of(t) is TaskStatus.RUNNING for t in running)
    assert all(t.batch_id == reply.batch_id for t in running)


async def test_the_tasks_an_arrays_answer_shows_are_read_again_in_one_list_call(
    local_cluster: LocalCluster,
) -> None:
    """`submit --array --wait --json` shows the answer's tasks as they ended: one ListTasks
    of those, not every page of the array from its newest down."""
    await local_cluster.add_runner("a", cores=1, answer=HOLD)
    reply = await local_cluster.tasks.SubmitTask(_array(list(range(2500))), timeout=30)
    shown = [t.task_id for t in reply.tasks]
    assert len(shown) == 1000

    def read_again() -> list[int]:
        channel = open_channel(local_cluster.config, local_cluster.admin_token)
        try:
            stub = task_service_pb2_grpc.TaskServiceStub(channel)
            return [t.task_id for t in cli_task._batch_tasks(stub, reply.batch_id, shown)]
        finally:
            channel.close()

    listed = ("/hakuriver.v1.TaskService/ListTasks", "OK")
    before = (await local_cluster.request_counts()).get(listed, 0)
    assert await asyncio.to_thread(read_again) == sorted(shown)
    assert (await local_cluster.request_counts())[listed] - before == 1
