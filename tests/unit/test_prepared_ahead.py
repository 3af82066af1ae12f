"""A queued task starts the moment its cores free up: a busy node's Runner is told which
queued tasks it starts next, and where, so it creates their containers while they wait
(docs/scheduling.md, "Prepared ahead"), and a task's end frees its cores for placement
before it is stored."""

from __future__ import annotations

import time

import pytest

from hakuriver_common.proto.hakuriver.v1 import task_pb2, task_service_pb2 as tpb
from hakuriver_common.statuses import TaskStatus
from hakuriver_host.models import TaskRecord
from hakuriver_host.prepared_ahead import PreparedAhead
from hakuriver_host.runner_link import RunnerLink
from hakuriver_host.scheduler import Allocation
from hakuriver_host.store import Store, TaskWrite
from hakuriver_host.task_book import request_of
from tests.fake_runner import HOLD, FakeRunner, eventually
from tests.unit.conftest import MakeCluster
from tests.unit.local_cluster import LocalCluster


def _hinted(runner: FakeRunner) -> list[int]:
    return [p.task_id for p in runner.prepares]


async def test_queued_tasks_are_prepared_where_they_start_and_released_when_killed(
    local_cluster: LocalCluster,
) -> None:
    runner = await local_cluster.add_runner("a", cores=2, answer=HOLD, prepares_ahead=True)
    first, second = await local_cluster.submit_running(2, cores=1)
    third, fourth, fifth = [await local_cluster.submit("queued", cores=1) for _ in range(3)]

    # Two ahead per node (the default): the next two, on the CPUs of the tasks placed first.
    await eventually(lambda: len(runner.prepares) >= 2, what="two prepare hints")
    assert _hinted(runner) == [third.task_id, fourth.task_id]
    assert [list(p.cpus) for p in runner.prepares] == [
        list(first.assigned_cpus),
        list(second.assigned_cpus),
    ]
    assert all(p.container_name == "hakuriver-base" for p in runner.prepares)

    runner.finish(first.task_id)
    started = await local_cluster.wait_status(third.task_id, TaskStatus.RUNNING)
    assert list(started.assigned_cpus) == list(first.assigned_cpus)
    # The dispatch is exactly what was prepared: the Runner only starts the container.
    assert runner.tasks[third.task_id].dispatch == runner.prepares[0]

    # The fifth moves up to be foreseen; the fourth, killed while queued, is released.
    await eventually(lambda: fifth.task_id in _hinted(runner), what="the fifth foreseen")
    assert (await local_cluster.kill(fourth.task_id)).status == task_pb2.TASK_STATUS_KILLED
    await eventually(lambda: fourth.task_id in runner.released, what="the fourth released")
    assert third.task_id not in runner.released


async def test_when_tasks_end_in_another_order_the_one_made_ready_for_the_freed_cpus_starts(
    local_cluster: LocalCluster,
) -> None:
    """Foreseen: the first to end first. The second ends first: the task prepared for its
    CPUs starts (its dispatch is what was prepared), not the head of the queue, which
    starts on the next CPUs to free, as prepared too. No container is made twice."""
    runner = await local_cluster.add_runner("a", cores=2, answer=HOLD, prepares_ahead=True)
    first, second = await local_cluster.submit_running(2, cores=1)
    third, fourth = [await local_cluster.submit("queued", cores=1) for _ in range(2)]
    await eventually(lambda: len(runner.prepares) >= 2, what="two prepare hints")
    prepared = {p.task_id: p for p in runner.prepares}
    assert list(prepared[fourth.task_id].cpus) == list(second.assigned_cpus)

    runner.finish(second.task_id)
    started = await local_cluster.wait_status(fourth.task_id, TaskStatus.RUNNING)
    assert list(started.assigned_cpus) == list(second.assigned_cpus)
    assert runner.tasks[fourth.task_id].dispatch == prepared[fourth.task_id]
    assert status_is_pending(await local_cluster.get(third.task_id))

    runner.finish(first.task_id)
    await local_cluster.wait_status(third.task_id, TaskStatus.RUNNING)
    assert runner.tasks[third.task_id].dispatch == prepared[third.task_id]
    assert [p.task_id for p in runner.prepares] == [third.task_id, fourth.task_id]


async def test_no_hints_to_a_runner_that_does_not_prepare_or_when_turned_off(
    make_local_cluster: MakeCluster,
) -> None:
    plain_cluster = await make_local_cluster()
    plain = await plain_cluster.add_runner("a", cores=1, answer=HOLD)
    off_cluster = await make_local_cluster(scheduling={"prepare_ahead": 0})
    off = await off_cluster.add_runner("a", cores=1, answer=HOLD, prepares_ahead=True)
    for cluster, runner in ((plain_cluster, plain), (off_cluster, off)):
        (busy,) = await cluster.submit_running(1, cores=1)
        queued = await cluster.submit("queued", cores=1)
        runner.finish(busy.task_id)
        await cluster.wait_status(queued.task_id, TaskStatus.RUNNING)
        assert runner.prepares == []


async def test_a_hint_no_longer_foreseen_is_released(local_cluster: LocalCluster) -> None:
    """Foreseen on the only node taking work; once a second node joins, the queued task
    could go to either, so the first node's prepared container is released."""
    a = await local_cluster.add_runner("a", cores=1, answer=HOLD, prepares_ahead=True)
    (busy,) = await local_cluster.submit_running(1, cores=1)
    queued = await local_cluster.submit("queued", cores=1, memory="2G")
    await eventually(lambda: _hinted(a) == [queued.task_id], what="the queued task foreseen")

    await local_cluster.add_runner("b", cores=1, memory_bytes=1024**3, answer=HOLD)
    await eventually(lambda: queued.task_id in a.released, what="the hint released")
    assert busy.task_id not in a.released
    assert status_is_pending(await local_cluster.get(queued.task_id))


def status_is_pending(task: task_pb2.Task) -> bool:
    return task.status == task_pb2.TASK_STATUS_PENDING


async def test_freed_cores_are_placed_at_once_and_dispatched_only_after_the_end_is_stored(
    make_local_cluster: MakeCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The next task is placed as soon as the end of the one before it is known (not once
    stored), but its dispatch still waits until that end is stored: a Host that crashes in
    between never finds a task started on cores its database still gives to another."""
    order: list[tuple[str, int]] = []
    stored_at: dict[int, float] = {}
    apply = Store._apply
    final = {s.value for s in TaskStatus if s.is_final}

    def slow_apply(store: Store, writes: list[TaskWrite]) -> None:
        ended = [u["task_id"] for w in writes for u in w.updates if u.get("status") in final]
        if ended:
            time.sleep(0.5)
        apply(store, writes)
        for task_id in ended:
            stored_at[task_id] = time.time()
            order.append(("stored end", task_id))

    monkeypatch.setattr(Store, "_apply", slow_apply)
    cluster = await make_local_cluster()
    runner = await cluster.add_runner(
        "a", cores=1, answer=HOLD, on_dispatch=lambda t: order.append(("dispatched", t))
    )
    (first,) = await cluster.submit_running(1, cores=1)
    second = await cluster.submit("next", cores=1)

    runner.finish(first.task_id)
    await cluster.wait_status(second.task_id, TaskStatus.RUNNING)
    assert order.index(("stored end", first.task_id)) < order.index(("dispatched", second.task_id))
    reply = await cluster.tasks.GetTask(tpb.GetTaskRequest(task_id=second.task_id), timeout=5)
    [placed] = [e for e in reply.events if e.status == task_pb2.TASK_STATUS_ASSIGNING]
    # Placed while the end was still being stored (it took 0.5 s).
    assert placed.at.ToNanoseconds() / 1e9 < stored_at[first.task_id] - 0.2


def test_foreseen_on_other_cpus_of_its_node_it_stays_as_prepared() -> None:
    """Which of a node's tasks ends first is a guess that changes as they end; a task foreseen
    on its node again, on other CPUs, keeps its container (a pass places it where it was
    made ready when those CPUs free up). Foreseen on another node, it is prepared there."""
    links = {name: RunnerLink(name, batches=True, prepares=True) for name in ("a", "b")}
    task = TaskRecord(task_id=7, command="true", status="pending", container_name="x")
    request = request_of(task)
    ahead = PreparedAhead()

    def foresee(hostname: str, cpu: int) -> list[str]:
        ahead.update([(request, Allocation(hostname, (cpu,), 0))], links.get, {7: task}.get)
        sent = []
        for link in links.values():
            while not link.outbox.empty():
                message = link.outbox.get_nowait()
                assert message is not None
                sent.append(f"{link.hostname}:{message.WhichOneof('payload')}")
        return sent

    assert foresee("a", 0) == ["a:prepare"]
    assert foresee("a", 1) == []
    assert ahead.allocations == {7: Allocation("a", (0,), 0)}
    assert foresee("b", 1) == ["a:release", "b:prepare"]
    assert ahead.allocations == {7: Allocation("b", (1,), 0)}


async def test_an_array_capped_at_one_runs_in_index_order_each_as_prepared(
    local_cluster: LocalCluster,
) -> None:
    """``%1`` on a node with a core to spare: the next element is foreseen on the core its
    predecessor frees (the cap holds it back until then), so each starts in index order
    from what was prepared for it; none is passed over for another made ready elsewhere."""
    runner = await local_cluster.add_runner("a", cores=2, answer=HOLD, prepares_ahead=True)
    array = tpb.TaskArray(indices=[1, 2, 3, 4, 5], max_running=1)
    reply = await local_cluster.tasks.SubmitTask(
        tpb.SubmitTaskRequest(command="job", cores=1, array=array), timeout=5
    )
    ids = [t.task_id for t in reply.tasks]
    started_on: list[list[int]] = []
    for running, following in zip(ids, [*ids[1:], None], strict=True):
        task = await local_cluster.wait_status(running, TaskStatus.RUNNING)
        started_on.append(list(task.assigned_cpus))
        if following is not None:
            await eventually(
                lambda next_one=following: next_one in _hinted(runner), what="the next prepared"
            )
        runner.finish(running)
    await local_cluster.wait_status(ids[-1], TaskStatus.COMPLETED)
    assert runner.dispatched == ids
    assert _hinted(runner) == ids[1:], "each prepared once, in index order"
    assert [list(p.cpus) for p in runner.prepares] == started_on[1:]
