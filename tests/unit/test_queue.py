"""The queue, through the public API of an in-process Host with FakeRunners: waiting for room,
priority order, drain, and killing a task that never left the queue."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
import pytest

from hakuriver_common.proto.hakuriver.v1 import node_pb2, node_service_pb2 as npb, task_pb2
from hakuriver_common.statuses import TaskStatus
from tests.fake_runner import HOLD, FakeRunner, eventually
from tests.unit.local_cluster import LocalCluster, status_of


async def test_task_that_does_not_fit_waits_and_runs_when_cores_free(
    local_cluster: LocalCluster,
) -> None:
    runner = await local_cluster.add_runner("a", cores=2, answer=HOLD)
    [big] = await local_cluster.submit_running(cores=2)
    first = await local_cluster.submit("small", cores=1)
    second = await local_cluster.submit("small", cores=1)

    for task, position in ((first, 1), (second, 2)):
        stored = await local_cluster.get(task.task_id)
        assert status_of(stored) is TaskStatus.PENDING
        assert stored.queue_position == position and stored.assigned_node == ""
    assert runner.dispatched == [big.task_id]
    assert (await local_cluster.node("a")).available_cores == 0

    runner.finish(big.task_id)
    for task in (first, second):
        running = await local_cluster.wait_status(task.task_id, TaskStatus.RUNNING)
        assert running.queue_position == 0 and running.assigned_node == "a"
    assert sorted(runner.dispatched[1:]) == sorted([first.task_id, second.task_id])
    assert (await local_cluster.node("a")).available_cores == 0


async def test_higher_priority_first_then_submission_order(local_cluster: LocalCluster) -> None:
    runner = await local_cluster.add_runner("a", cores=1, answer=HOLD)
    [blocker] = await local_cluster.submit_running()
    low_1 = await local_cluster.submit("low-1", priority=0)
    high_1 = await local_cluster.submit("high-1", priority=5)
    low_2 = await local_cluster.submit("low-2", priority=0)
    high_2 = await local_cluster.submit("high-2", priority=5)
    expected = [high_1, high_2, low_1, low_2]

    positions = await local_cluster.queue_positions(t.task_id for t in expected)
    assert positions == [1, 2, 3, 4]

    # One core: each task starts only when the one before it ends, in queue order.
    running = blocker
    for task in expected:
        runner.finish(running.task_id)
        await local_cluster.wait_status(task.task_id, TaskStatus.RUNNING)
        running = task
    runner.finish(running.task_id)
    await local_cluster.wait_status(running.task_id, TaskStatus.COMPLETED)
    assert runner.dispatched == [blocker.task_id, *(t.task_id for t in expected)]


async def test_drained_node_takes_nothing_new_and_its_running_task_continues(
    local_cluster: LocalCluster,
) -> None:
    a = await local_cluster.add_runner("a", cores=4, answer=HOLD)
    b = await local_cluster.add_runner("b", cores=4, answer=HOLD)
    [on_a] = await local_cluster.submit_running(targets=[task_pb2.Target(hostname="a")])

    drained = await local_cluster.nodes.DrainNode(npb.DrainNodeRequest(hostname="a"), timeout=5)
    assert drained.node.draining
    assert (await local_cluster.node("a")).draining

    anywhere = [await local_cluster.submit("any") for _ in range(3)]
    for task in anywhere:
        placed = await local_cluster.wait_status(task.task_id, TaskStatus.RUNNING)
        assert placed.assigned_node == "b"
    wants_a = await local_cluster.submit("wants-a", targets=[task_pb2.Target(hostname="a")])
    waiting = await local_cluster.get(wants_a.task_id)
    assert status_of(waiting) is TaskStatus.PENDING and waiting.queue_position == 1
    assert a.dispatched == [on_a.task_id]

    a.finish(on_a.task_id, stdout=b"done\n")
    done = await local_cluster.wait_status(on_a.task_id)
    assert status_of(done) is TaskStatus.COMPLETED
    assert await local_cluster.read_log(on_a.task_id) == b"done\n"
    assert status_of(await local_cluster.get(wants_a.task_id)) is TaskStatus.PENDING

    undrained = await local_cluster.nodes.UndrainNode(
        npb.UndrainNodeRequest(hostname="a"), timeout=5
    )
    assert not undrained.node.draining
    placed = await local_cluster.wait_status(wants_a.task_id, TaskStatus.RUNNING)
    assert placed.assigned_node == "a" and a.dispatched[-1] == wants_a.task_id
    assert len(b.dispatched) == 3


async def test_killing_a_queued_task_touches_no_runner_and_holds_nothing(
    local_cluster: LocalCluster,
) -> None:
    runner = await local_cluster.add_runner("a", cores=1, answer=HOLD)
    [running] = await local_cluster.submit_running()
    queued = await local_cluster.submit("queued")
    assert (await local_cluster.get(queued.task_id)).queue_position == 1

    killed = await local_cluster.kill(queued.task_id)
    assert status_of(killed) is TaskStatus.KILLED
    stored = await local_cluster.get(queued.task_id)
    assert status_of(stored) is TaskStatus.KILLED and stored.queue_position == 0
    assert stored.assigned_node == "" and list(stored.assigned_cpus) == []
    assert [s for s, _ in await local_cluster.events(queued.task_id)] == [
        TaskStatus.PENDING,
        TaskStatus.KILLED,
    ]

    # The core frees when the running task ends, and nothing takes it.
    runner.finish(running.task_id)
    await local_cluster.wait_status(running.task_id, TaskStatus.COMPLETED)
    node = await eventually(lambda: _idle(local_cluster, "a"), what="node a to have its core back")
    assert node.available_cores == 1 and node.active_tasks == 0
    assert runner.dispatched == [running.task_id]
    assert all(task_id != queued.task_id for _, task_id in runner.commands)


async def _idle(cluster: LocalCluster, hostname: str) -> object:
    node = await cluster.node(hostname)
    return node if node.active_tasks == 0 else None


async def _two_numa_nodes(cluster: LocalCluster, **more: Any) -> FakeRunner:
    """Runner "a": 8 cores and 16 GiB, as NUMA nodes 0 and 1 of 4 cores and 8 GiB each."""
    gib = 2**30
    return await cluster.add_runner(
        "a",
        cores=8,
        memory_bytes=16 * gib,
        numa_nodes=[
            node_pb2.NumaNode(id=0, cpus=range(4), memory_bytes=8 * gib),
            node_pb2.NumaNode(id=1, cpus=range(4, 8), memory_bytes=8 * gib),
        ],
        **more,
    )


async def test_numa_targets_pin_cpus_and_gpus_are_exclusive(local_cluster: LocalCluster) -> None:
    runner = await _two_numa_nodes(
        local_cluster,
        gpus=[node_pb2.Gpu(index=i, uuid=f"GPU-{i}", name="fake") for i in range(2)],
        answer=HOLD,
    )
    [pinned] = await local_cluster.submit_running(
        cores=2, targets=[task_pb2.Target(hostname="a", numa_node_id=1)]
    )
    first_gpu, second_gpu = await local_cluster.submit_running(2, gpus=1)
    third_gpu = await local_cluster.submit("gpu", gpus=1)

    dispatches = {t: task.dispatch for t, task in runner.tasks.items() if task.dispatch is not None}
    numa = dispatches[pinned.task_id]
    assert numa.numa_node_id == 1 and set(numa.cpus) <= {4, 5, 6, 7}
    assert len(numa.cpus) == 2 and list(pinned.assigned_cpus) == list(numa.cpus)
    gpu_ids = [list(dispatches[t.task_id].gpu_ids) for t in (first_gpu, second_gpu)]
    assert sorted(gpu_ids) == [[0], [1]]
    held = [set(d.cpus) for d in dispatches.values()]
    assert sum(len(c) for c in held) == len(set().union(*held)), "no CPU is held twice"
    waiting = await local_cluster.get(third_gpu.task_id)
    assert status_of(waiting) is TaskStatus.PENDING and waiting.queue_position == 1

    runner.finish(first_gpu.task_id)
    started = await local_cluster.wait_status(third_gpu.task_id, TaskStatus.RUNNING)
    assert list(started.required_gpus) == gpu_ids[0]


def _reading(*indices: int) -> Callable[[], node_pb2.Health]:
    """Health whose GPU readings are those of ``indices`` (the others dropped out)."""

    def health() -> node_pb2.Health:
        sample = node_pb2.Health(gpus=[node_pb2.Gpu(index=i, name="fake") for i in indices])
        sample.sampled_at.GetCurrentTime()
        return sample

    return health


async def _beat(cluster: LocalCluster, runner: FakeRunner, health: Callable[[], Any]) -> None:
    """Send heartbeats of ``health`` from now until the Host has one."""
    runner.health = health

    async def arrived() -> bool:
        return (await cluster.node(runner.hostname)).health.gpus == health().gpus

    await eventually(arrived, what="the heartbeat's GPU readings")


async def test_a_gpu_missing_from_the_readings_is_given_to_no_new_task_until_read_again(
    local_cluster: LocalCluster,
) -> None:
    """GPU 1 fell off the bus: the heartbeats read GPU 0 only. The task on GPU 1 keeps it;
    no new task gets it (one naming it waits saying why), until it is read again. Readings
    without any GPU (NVML failing) are no news."""
    gpus = [node_pb2.Gpu(index=i, uuid=f"GPU-{i}", name="fake") for i in range(2)]
    runner = await local_cluster.add_runner("a", gpus=gpus, answer=HOLD)
    on_one = task_pb2.Target(hostname="a", gpu_ids=[1])
    [holder] = await local_cluster.submit_running(targets=[on_one])
    await _beat(local_cluster, runner, _reading(0))
    named = await local_cluster.submit("named", targets=[on_one])
    runner.finish(holder.task_id)
    await local_cluster.wait_status(holder.task_id, TaskStatus.COMPLETED)
    [counted] = await local_cluster.submit_running(gpus=1)
    waiting = await local_cluster.get(named.task_id)
    assert status_of(waiting) is TaskStatus.PENDING and waiting.status_detail == (
        "node a's GPU 1 dropped out of its readings (NVML cannot read it)"
    )
    assert list(counted.required_gpus) == [0]
    assert list((await local_cluster.node("a")).allocated_gpus) == [0]

    await _beat(local_cluster, runner, _reading())
    assert status_of(await local_cluster.get(named.task_id)) is TaskStatus.PENDING

    await _beat(local_cluster, runner, _reading(0, 1))
    started = await local_cluster.wait_status(named.task_id, TaskStatus.RUNNING)
    assert list(started.required_gpus) == [1]


async def test_a_task_waiting_for_gpus_other_tasks_hold_says_which(
    local_cluster: LocalCluster,
) -> None:
    """A task asking for GPUs of its node while other tasks held them said nothing of why
    it waited: its user could not tell them from cores or its turn. It names the GPUs in
    use (for a count, how many are free), as they are when asked."""
    gpus = [node_pb2.Gpu(index=i, uuid=f"GPU-{i}", name="fake") for i in range(4)]
    runner = await local_cluster.add_runner("a", cores=8, gpus=gpus, answer=HOLD)
    [holder] = await local_cluster.submit_running(
        targets=[task_pb2.Target(hostname="a", gpu_ids=[0, 1, 2])]
    )
    named = await local_cluster.submit(
        "train", targets=[task_pb2.Target(hostname="a", gpu_ids=[0, 1])]
    )
    one = await local_cluster.submit(
        "train", targets=[task_pb2.Target(hostname="a", gpu_ids=[1, 3])]
    )
    counted = await local_cluster.submit("train", gpus=2, targets=[task_pb2.Target(hostname="a")])
    assert [(status_of(t), t.status_detail) for t in (named, one, counted)] == [
        (TaskStatus.PENDING, "node a's GPUs 0, 1 are in use"),
        (TaskStatus.PENDING, "node a's GPU 1 is in use"),
        (TaskStatus.PENDING, "node a has 1 GPU free; it asks for 2"),
    ]
    assert (await local_cluster.get(named.task_id)).status_detail == named.status_detail

    runner.finish(holder.task_id)
    for started in (named, counted):  # on GPUs 0, 1 and 2, 3
        await local_cluster.wait_status(started.task_id, TaskStatus.RUNNING)
    waiting = await local_cluster.get(one.task_id)
    assert (status_of(waiting), waiting.status_detail) == (
        TaskStatus.PENDING,
        "node a's GPUs 1, 3 are in use",
    )


async def _gpus_of(cluster: LocalCluster, hostname: str) -> tuple[list[int], list[int]]:
    """The node's GPUs (indices) and those of them unread, as ListNodes shows them."""
    node = await cluster.node(hostname)
    return [g.index for g in node.gpus], list(node.unread_gpus)


async def test_gpus_unread_at_a_reconnect_of_the_same_runner_stay_the_nodes_unread(
    local_cluster: LocalCluster,
) -> None:
    """GPUs 1 and 2 cannot be read when the Runner's stream comes back (the same process;
    2 held by a task): the node keeps all three, 1 and 2 unread; no new task gets GPU 1 (one
    naming it waits) until a heartbeat reads it. A registration reading no GPU at all (NVML
    failing) is no news. They were dropped from the node until the Runner restarted."""
    gpus = [node_pb2.Gpu(index=i, uuid=f"GPU-{i}", name="fake") for i in range(3)]
    runner = await local_cluster.add_runner("a", gpus=gpus, answer=HOLD)
    [holder] = await local_cluster.submit_running(
        targets=[task_pb2.Target(hostname="a", gpu_ids=[2])]
    )

    runner.gpus, runner.health = gpus[:1], _reading(0)
    await runner.connect()
    assert await _gpus_of(local_cluster, "a") == ([0, 1, 2], [1, 2])
    on_one = task_pb2.Target(hostname="a", gpu_ids=[1])
    named = await local_cluster.submit("named", targets=[on_one])
    waiting = await local_cluster.get(named.task_id)
    assert status_of(waiting) is TaskStatus.PENDING and waiting.status_detail == (
        "node a's GPU 1 dropped out of its readings (NVML cannot read it)"
    )
    assert status_of(await local_cluster.get(holder.task_id)) is TaskStatus.RUNNING

    runner.gpus, runner.health = [], _reading()
    await runner.connect()
    assert await _gpus_of(local_cluster, "a") == ([0, 1, 2], [1, 2])

    await _beat(local_cluster, runner, _reading(0, 1, 2))
    started = await local_cluster.wait_status(named.task_id, TaskStatus.RUNNING)
    assert list(started.required_gpus) == [1]
    assert await _gpus_of(local_cluster, "a") == ([0, 1, 2], [])


async def test_gpus_unread_when_the_host_restarts_stay_the_nodes_unread(
    local_cluster: LocalCluster,
) -> None:
    """The Host restarts while GPU 1 cannot be read: the same Runner process reconnecting
    to the new Host keeps it on its node, unread."""
    gpus = [node_pb2.Gpu(index=i, uuid=f"GPU-{i}", name="fake") for i in range(2)]
    runner = await local_cluster.add_runner("a", gpus=gpus)
    runner.gpus, runner.health = gpus[:1], _reading(0)
    await local_cluster.restart_host()
    assert await _gpus_of(local_cluster, "a") == ([0, 1], [1])


async def test_gpus_first_read_after_the_runner_registered_are_the_nodes(
    local_cluster: LocalCluster,
) -> None:
    """The Runner registered while NVML did not answer (started before the driver was
    loaded): no GPUs. Its heartbeats read two once NVML answers: they were the node's only
    after the Runner restarted; they are the node's now, given to tasks, and kept in its row
    (a restarted Host shows them before the Runner is back)."""
    runner = await local_cluster.add_runner("a", answer=HOLD)
    await _beat(local_cluster, runner, _reading(0, 1))
    assert await _gpus_of(local_cluster, "a") == ([0, 1], [])
    [task] = await local_cluster.submit_running(gpus=2)
    assert sorted(task.required_gpus) == [0, 1]

    await runner.drop()
    await local_cluster.restart_host(wait_runners=False)
    assert await _gpus_of(local_cluster, "a") == ([0, 1], [])


@pytest.mark.parametrize("instance_id", ["restarted", ""], ids=["restarted", "unnamed"])
async def test_a_restarted_runner_has_the_gpus_it_reads(
    local_cluster: LocalCluster, instance_id: str
) -> None:
    """A Runner that restarted (a new instance id), or one that does not say which process
    it is (a Runner of before the field), has the GPUs it reads at registration: one gone
    for good leaves the node so."""
    gpus = [node_pb2.Gpu(index=i, uuid=f"GPU-{i}", name="fake") for i in range(2)]
    runner = await local_cluster.add_runner("a", gpus=gpus)
    runner.instance_id = instance_id
    runner.gpus, runner.health = gpus[:1], _reading(0)
    await runner.connect()
    assert await _gpus_of(local_cluster, "a") == ([0], [])


async def test_listnodes_and_the_nodes_table_count_a_gpu_not_read_as_not_free(
    local_cluster: LocalCluster,
) -> None:
    """GPUs 1 and 2 fell off the bus, 2 held by a task: ListNodes names both as unread and
    ``hakuriver.client nodes`` counts neither as free, until they are read again."""
    from hakuriver_cli import client

    gpus = [node_pb2.Gpu(index=i, uuid=f"GPU-{i}", name="fake") for i in range(3)]
    runner = await local_cluster.add_runner("a", gpus=gpus, answer=HOLD)
    await local_cluster.submit_running(targets=[task_pb2.Target(hostname="a", gpu_ids=[2])])

    async def unread(expected: list[int]) -> node_pb2.Node | None:
        node = await local_cluster.node("a")
        return node if list(node.unread_gpus) == expected else None

    await _beat(local_cluster, runner, _reading(0))
    node = await eventually(lambda: unread([1, 2]), what="GPUs 1 and 2 unread")
    assert list(node.allocated_gpus) == [2]
    assert client._gpu_summary(node) == "1/3 (fake; GPU 1, 2 not read)"

    await _beat(local_cluster, runner, _reading(0, 1, 2))
    node = await eventually(lambda: unread([]), what="every GPU read again")
    assert client._gpu_summary(node) == "2/3 (fake)"


async def test_tasks_bound_to_one_numa_node_share_its_memory_not_the_nodes(
    local_cluster: LocalCluster,
) -> None:
    """Two tasks of 6 GiB bound to NUMA node 0 (8 GiB of the node's 16) would share 8 GiB:
    the second waits for the first (or runs on NUMA node 1 when asked to), though the node
    as a whole has room for both."""
    runner = await _two_numa_nodes(local_cluster, answer=HOLD)
    node_0 = [task_pb2.Target(hostname="a", numa_node_id=0)]
    [first] = await local_cluster.submit_running(memory="6Gi", targets=node_0)
    second = await local_cluster.submit("second", memory="6Gi", targets=node_0)
    [elsewhere] = await local_cluster.submit_running(
        memory="6Gi", targets=[task_pb2.Target(hostname="a", numa_node_id=1)]
    )
    assert status_of(await local_cluster.get(second.task_id)) is TaskStatus.PENDING
    assert runner.tasks[elsewhere.task_id].dispatch.numa_node_id == 1  # type: ignore[union-attr]

    runner.finish(first.task_id)
    started = await local_cluster.wait_status(second.task_id, TaskStatus.RUNNING)
    assert started.assigned_node == "a" and set(started.assigned_cpus) <= {0, 1, 2, 3}


async def test_a_numa_target_asking_more_memory_than_its_numa_node_has_is_refused(
    local_cluster: LocalCluster,
) -> None:
    """Its memory is bound to the NUMA node (cpuset-mems), so more than that node has could
    never be used: refused naming the NUMA node's memory, not queued or run to be OOM-killed."""
    await _two_numa_nodes(local_cluster)
    numa = [task_pb2.Target(hostname="a", numa_node_id=1)]
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await local_cluster.submit("big", memory="10Gi", targets=numa)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.details() == (
        "memory: 10737418240 bytes (10.7G) requested but NUMA node 1 of a has 8589934592 (8.6G)"
    )
    unbound = await local_cluster.submit(
        "unbound", memory="10Gi", targets=[task_pb2.Target(hostname="a")]
    )
    assert unbound.assigned_node == "a"
    await local_cluster.wait_status(unbound.task_id, TaskStatus.COMPLETED)
    fits = await local_cluster.submit("fits", memory="8Gi", targets=numa)
    assert fits.assigned_node == "a"
