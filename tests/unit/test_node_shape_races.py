"""Races of a node's shape changing: its Runner registering again with less hardware (a
machine reconfigured, a GPU gone from NVML) while tasks hold resources on it or are being
placed there, forced through the public API of an in-process Host with FakeRunners."""

from __future__ import annotations

import asyncio
import threading

from hakuriver_common.proto.hakuriver.v1 import node_pb2, runner_service_pb2 as rpb
from hakuriver_common.statuses import TaskStatus
from tests.fake_runner import HOLD, NO_ANSWER, Answer, eventually
from tests.unit.local_cluster import LocalCluster, status_of


async def test_an_assigning_task_is_not_dispatched_again_on_cpus_its_node_no_longer_has(
    local_cluster: LocalCluster,
) -> None:
    """A task placed on CPU 1 that had not started when its Runner's stream ended; the Runner
    registers again with one CPU (0): the task was dispatched again on CPU 1, which the node
    no longer has (Docker refuses such a cpuset; a host process is pinned to nothing). It
    ends failed, saying why, and the running task on CPU 0 keeps running."""
    cpus: dict[int, list[int]] = {}

    def answer(dispatch: rpb.DispatchCommand) -> Answer:
        cpus.setdefault(dispatch.task_id, []).extend(dispatch.cpus)
        return HOLD if len(cpus) == 1 else NO_ANSWER

    runner = await local_cluster.add_runner("a", cores=2, answer=answer)
    [running] = await local_cluster.submit_running(cores=1)
    placed = await local_cluster.submit(cores=1)
    await eventually(lambda: placed.task_id in runner.unanswered, what="the second dispatch")
    assert cpus[placed.task_id] == [1]
    runner.cores = 1
    runner.numa_nodes = [node_pb2.NumaNode(id=0, cpus=[0], memory_bytes=runner.memory_bytes)]
    await runner.connect(known_task_ids=[running.task_id])
    failed = await local_cluster.wait_status(placed.task_id)
    assert status_of(failed) is TaskStatus.FAILED
    assert failed.error_message == (
        "its node a registered again without CPU 1 it was placed on (it has CPU 0): submit it again"
    )
    assert cpus[placed.task_id] == [1]  # never dispatched again
    assert status_of(await local_cluster.get(running.task_id)) is TaskStatus.RUNNING


async def test_a_placement_stored_after_its_node_registered_with_less_is_not_dispatched(
    local_cluster: LocalCluster,
) -> None:
    """A task ends and frees CPU 1; a pass places a queued task there in memory, and its
    Runner registers again with one CPU (0) while the placement's write waits: once stored,
    the placement was dispatched on the new stream on CPU 1, which the node no longer has.
    It ends failed, saying why."""
    cpus: dict[int, list[int]] = {}

    def answer(dispatch: rpb.DispatchCommand) -> Answer:
        cpus.setdefault(dispatch.task_id, []).extend(dispatch.cpus)
        return HOLD

    runner = await local_cluster.add_runner("a", cores=2, answer=answer)
    running, ending = await local_cluster.submit_running(2, cores=1)
    placed = await local_cluster.submit(cores=1)
    assert status_of(placed) is TaskStatus.PENDING
    assert local_cluster.server is not None
    host = local_cluster.server.cluster
    held = threading.Event()
    local_cluster.server.store.executor.submit(held.wait, 10)  # the store's one thread is busy
    try:
        runner.finish(ending.task_id)
        await eventually(
            lambda: host.book.active[placed.task_id].assigned_cpus == [1],
            what="the placement on CPU 1 decided in memory",
        )
        runner.cores = 1
        runner.numa_nodes = [node_pb2.NumaNode(id=0, cpus=[0], memory_bytes=runner.memory_bytes)]
        connecting = asyncio.create_task(runner.connect(known_task_ids=[running.task_id]))
        await eventually(lambda: host.nodes.nodes["a"].total_cores == 1, what="a with 1 CPU")
    finally:
        held.set()
    await connecting
    failed = await local_cluster.wait_status(placed.task_id)
    assert status_of(failed) is TaskStatus.FAILED
    assert failed.error_message == (
        "its node a registered again without CPU 1 it was placed on (it has CPU 0): submit it again"
    )
    assert placed.task_id not in cpus  # never dispatched
    assert status_of(await local_cluster.get(running.task_id)) is TaskStatus.RUNNING
