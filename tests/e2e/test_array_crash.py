"""A Host SIGKILLed in the middle of a job array spread over several nodes: after its restart
every task completes, none is dispatched twice, and no CPU of a node is ever given to two of
its running tasks at once.

The store orders a task's changes with its node's only (a release of cores before the
placement that reuses them); nodes are not ordered with each other. A crash may stop any
node's changes at any point: what is stored must still never hold one core twice. A real
Host process (killed for real), simulated Runners in the test (FakeRunners: the real
Connect protocol, no Docker) that hold each task a few milliseconds and check, at each
dispatch, that its CPUs are free on their node.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable

from bench.host_process import bench_host
from hakuriver_common.channels import open_aio_channel
from hakuriver_common.config import Config
from hakuriver_common.proto.hakuriver.v1 import (
    runner_service_pb2 as rpb,
    task_service_pb2 as tpb,
    task_service_pb2_grpc,
)
from hakuriver_common.statuses import TaskStatus
from tests.fake_runner import HOLD, Answer, FakeRunner, eventually

ENV = "bench"
NODES = 8
CORES = 32
TASKS = 10_000  # issue 14: "a Host restart in the middle of a 10,000-task array"
# How long a simulated task runs, and how many must have started when the Host is killed.
HOLD_SECONDS = 0.02
KILL_AFTER = TASKS // 3


class Node:
    """A simulated Runner that records any dispatch whose CPUs a running task holds."""

    def __init__(self, config: Config, index: int) -> None:
        self.overlaps: list[tuple[int, list[int], list[int]]] = []
        self.runner = FakeRunner(
            config,
            f"crash-{index}",
            cores=CORES,
            memory_bytes=64 * 2**30,
            environments=[ENV],
            answer=self._answer,
            reconnect_delay=0.2,
        )

    def _answer(self, dispatch: rpb.DispatchCommand) -> Answer:
        for task_id in self.runner.running:
            holder = self.runner.tasks[task_id].dispatch
            if holder is not None and set(holder.cpus) & set(dispatch.cpus):
                self.overlaps.append((dispatch.task_id, list(dispatch.cpus), list(holder.cpus)))
        return HOLD

    async def finish_held(self, until: asyncio.Event) -> None:
        """Each held task exits HOLD_SECONDS after its dispatch (disconnected too: its exit
        is reported when the Host adopts it)."""
        while not until.is_set():
            now = time.perf_counter()
            for task_id in self.runner.running:
                if now - self.runner.dispatched_at.get(task_id, now) >= HOLD_SECONDS:
                    self.runner.finish(task_id)
            await asyncio.sleep(0.005)


async def _run_array_through_a_crash(
    host_config: Config, token: str, kill: Callable[[], None], start: Callable[[], None]
) -> None:
    nodes = [Node(host_config, i) for i in range(NODES)]
    await asyncio.gather(*(node.runner.start() for node in nodes))
    done = asyncio.Event()
    finishers = [asyncio.create_task(node.finish_held(done)) for node in nodes]
    try:
        async with open_aio_channel(host_config, token) as channel:
            tasks = task_service_pb2_grpc.TaskServiceStub(channel)
            reply = await tasks.SubmitTask(
                tpb.SubmitTaskRequest(
                    command="work",
                    cores=1,
                    container_name=ENV,
                    array=tpb.TaskArray(indices=range(TASKS)),
                ),
                timeout=60,
            )
        await eventually(
            lambda: sum(len(n.runner.dispatched) for n in nodes) >= KILL_AFTER,
            within=60,
            what="the array to get going",
        )
        await asyncio.to_thread(kill)
        # Killed in the middle: some of the array had not been dispatched yet. Counted before
        # the restart, whose Host goes on dispatching while it is being waited for.
        assert sum(len(n.runner.dispatched) for n in nodes) < TASKS
        await asyncio.to_thread(start)
        async with open_aio_channel(host_config, token) as channel:
            tasks = task_service_pb2_grpc.TaskServiceStub(channel)

            async def completed() -> bool:
                batch = await tasks.GetBatch(
                    tpb.GetBatchRequest(batch_id=reply.batch_id), timeout=10
                )
                counts = {TaskStatus.from_pb(c.status): c.count for c in batch.batch.counts}
                return counts == {TaskStatus.COMPLETED: TASKS}

            await eventually(completed, within=120, what="every task of the array to complete")
    finally:
        done.set()
        await asyncio.gather(*finishers)
        await asyncio.gather(*(node.runner.stop() for node in nodes))
    dispatched = [task_id for node in nodes for task_id in node.runner.dispatched]
    assert len(dispatched) == len(set(dispatched)) == TASKS
    assert [node.overlaps for node in nodes] == [[]] * NODES


def test_a_host_killed_mid_array_over_several_nodes_never_gives_a_core_twice() -> None:
    with bench_host() as host:
        asyncio.run(
            _run_array_through_a_crash(
                host.client_config,
                host.admin_token,
                lambda: host.stop(signal.SIGKILL),
                host.start,
            )
        )
