"""Races of job arrays with caps and holds, each interleaving forced through the public API
of an in-process Host with FakeRunners: a whole array killed while its placements are being
stored, elements ending and placed in one pass at the cap, an element killed at the cap, a
batch paused between two slices of a placement pass."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

import pytest

from hakuriver_common.proto.hakuriver.v1 import runner_service_pb2 as rpb, task_service_pb2 as tpb
from hakuriver_common.statuses import TaskStatus
from hakuriver_host.cluster import PLACEMENT_SLICE
from hakuriver_host.store import Store, TaskWrite
from hakuriver_host.task_machine import PLACED_STATUSES
from tests.fake_runner import HOLD, NO_ANSWER, Answer, FakeRunner, eventually
from tests.unit.conftest import MakeCluster
from tests.unit.local_cluster import LocalCluster, status_of


@pytest.fixture
async def local_cluster(make_local_cluster: MakeCluster) -> LocalCluster:
    """A local cluster whose Runners are not taken for silent within a test: the usual 1 s
    timeout can pass on a loaded machine (a stalled loop misses heartbeats), and a Runner
    gone offline changes what these tests count (one failed so in a loaded full run)."""
    return await make_local_cluster(timing={"heartbeat_timeout_factor": 600})


def _array(indices: list[int], max_running: int = 0) -> tpb.SubmitTaskRequest:
    return tpb.SubmitTaskRequest(
        command="job", array=tpb.TaskArray(indices=indices, max_running=max_running)
    )


def _holding(cluster: LocalCluster, batch_id: int) -> int:
    """How many of the array's tasks hold resources, as the Host has them now."""
    assert cluster.server is not None
    book = cluster.server.cluster.book
    return sum(1 for t in book.of_batch(batch_id) if TaskStatus(t.status) in PLACED_STATUSES)


async def _capped_at_two(
    cluster: LocalCluster, answer: Answer | Callable[[rpb.DispatchCommand], Answer] = HOLD
) -> tuple[FakeRunner, list[int], list[int]]:
    """A Runner of 8 cores and an array of 6 tasks capped at 2 on it: the runner, the tasks'
    ids, and how many of them held resources at each dispatch."""
    seen: list[int] = []

    def holding(task_id: int) -> None:
        # The array's id from the task: its first dispatches may come before SubmitTask answers.
        assert cluster.server is not None
        seen.append(_holding(cluster, cluster.server.cluster.book.active[task_id].batch_id))

    runner = await cluster.add_runner("a", cores=8, answer=answer, on_dispatch=holding)
    reply = await cluster.tasks.SubmitTask(_array(list(range(6)), max_running=2), timeout=5)
    return runner, [t.task_id for t in reply.tasks], seen


async def test_an_array_killed_while_its_placements_are_stored_starts_none(
    make_local_cluster: MakeCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """KillBatch arrives while the array's first placements are being written: those were
    dispatched once stored (the batch's kill marked them only after its pending tasks' kills
    were stored), so their commands started after the kill was asked, to be killed at once.
    A kill asked while a placement is stored keeps its command from starting, as a task's
    own kill does."""
    go = threading.Event()
    apply = Store._apply

    def slow_placements(store: Store, writes: list[TaskWrite]) -> None:
        placing = TaskStatus.ASSIGNING.value
        if any(u.get("status") == placing for w in writes for u in w.updates):
            go.wait(10)
        apply(store, writes)

    monkeypatch.setattr(Store, "_apply", slow_placements)
    cluster = await make_local_cluster()
    runner = await cluster.add_runner("a", cores=4, answer=HOLD)
    reply = await cluster.tasks.SubmitTask(_array(list(range(6)), max_running=2), timeout=5)
    assert cluster.server is not None
    book = cluster.server.cluster.book
    first = [t.task_id for t in reply.tasks[:2]]
    assert [book.active[t].status for t in first] == [TaskStatus.ASSIGNING] * 2
    killing = asyncio.ensure_future(
        cluster.tasks.KillBatch(tpb.KillBatchRequest(batch_id=reply.batch_id), timeout=30)
    )
    await eventually(
        lambda: all(t.status == TaskStatus.KILLED for t in book.of_batch(reply.batch_id)[2:]),
        what="the pending ones killed in memory",
    )
    go.set()
    killed = await killing
    assert killed.affected == 6
    assert [status_of(await cluster.get(t.task_id)) for t in reply.tasks] == [TaskStatus.KILLED] * 6
    assert runner.dispatched == []


async def test_elements_ending_together_at_the_cap_are_replaced_within_it(
    local_cluster: LocalCluster,
) -> None:
    """Both running elements of an array capped at 2 end in one message; the pass that
    follows places the next two, never more than the cap at any dispatch."""
    runner, ids, seen = await _capped_at_two(local_cluster)
    await eventually(lambda: sorted(runner.running) == ids[:2], what="the first two running")
    runner.finish(ids[0], 0)
    runner.finish(ids[1], 0)
    await eventually(lambda: sorted(runner.running) == ids[2:4], what="the next two running")
    assert max(seen) <= 2
    assert sorted(runner.dispatched) == ids[:4]


@pytest.mark.parametrize("status", [TaskStatus.RUNNING, TaskStatus.ASSIGNING])
async def test_an_element_killed_at_the_cap_lets_exactly_one_more_start(
    local_cluster: LocalCluster, status: TaskStatus
) -> None:
    """An element of an array at its cap is killed, running or still being started (its
    Runner has not answered its dispatch): one more starts in its place, the cap kept."""
    first: list[int] = []

    def answer(dispatch: rpb.DispatchCommand) -> Answer:
        first.append(dispatch.task_id)
        return NO_ANSWER if status is TaskStatus.ASSIGNING and len(first) == 1 else HOLD

    runner, ids, seen = await _capped_at_two(local_cluster, answer)
    await eventually(lambda: sorted(runner.dispatched) == ids[:2], what="the first two sent")
    assert status_of(await local_cluster.get(ids[0])) is status
    killed = await local_cluster.kill(ids[0])
    assert status_of(killed) is TaskStatus.KILLED
    await eventually(lambda: sorted(runner.running) == [ids[1], ids[2]], what="the third")
    assert max(seen) <= 2
    assert sorted(runner.dispatched) == ids[:3]


async def test_a_batch_paused_between_two_slices_of_a_pass_places_no_more(
    local_cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PauseBatch lands while a pass placing the array serves other work between two slices
    of placements: the pass places none of the array's further tasks (held), those placed
    before go on (docs/tasks.md), and ResumeBatch lets the rest be placed."""
    runner = await local_cluster.add_runner("a", cores=PLACEMENT_SLICE * 2, answer=HOLD)
    assert local_cluster.server is not None
    host = local_cluster.server.cluster
    at_turn, go_on = asyncio.Event(), asyncio.Event()
    turn = host.lane.turn

    async def held_turn() -> None:
        placing = any(t.status == TaskStatus.ASSIGNING for t in host.book.active.values())
        if placing and not at_turn.is_set():  # the pass, its first slice placed
            at_turn.set()
            await go_on.wait()
        await turn()

    monkeypatch.setattr(host.lane, "turn", held_turn)
    size = PLACEMENT_SLICE + 10
    submitting = asyncio.ensure_future(
        local_cluster.tasks.SubmitTask(_array(list(range(size))), timeout=30)
    )
    await eventually(at_turn.is_set, what="the pass between two slices")
    batch_id = max(t.batch_id for t in host.book.active.values())
    paused = await local_cluster.tasks.PauseBatch(tpb.PauseBatchRequest(batch_id=batch_id))
    assert paused.batch.held
    go_on.set()
    reply = await submitting
    ids = [t.task_id for t in reply.tasks]
    await eventually(lambda: len(runner.running) == PLACEMENT_SLICE, what="the first slice")
    assert sorted(runner.running) == ids[:PLACEMENT_SLICE]
    assert _holding(local_cluster, batch_id) == PLACEMENT_SLICE
    await local_cluster.tasks.ResumeBatch(tpb.ResumeBatchRequest(batch_id=batch_id))
    await eventually(lambda: len(runner.running) == size, what="the rest placed")
