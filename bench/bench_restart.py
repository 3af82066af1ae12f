"""Host restart with tasks in flight: a real Host is SIGKILLed with 1,000 tasks running.

Simulated Runners (FakeRunners: the real Connect protocol, no Docker) run every dispatched
task: they report it running and stream the first half of its output. Then the Host is
killed with SIGKILL and started again. The Runners reconnect, naming the tasks they still
hold; for each task the Host adopts, a Runner resends output from the offset the Host asks
for, then sends the second half and reports exit 0. Printed: tasks lost, tasks whose output
is not byte-exact, and the time from restart to every task final. Target: zero lost, every
status and byte kept.
"""

from __future__ import annotations

import asyncio
import os
import signal
import tempfile
import time
from pathlib import Path

from bench.host_process import HostProcess
from hakuriver_common.channels import open_aio_channel
from hakuriver_common.config import Config
from hakuriver_common.proto.hakuriver.v1 import (
    log_service_pb2 as lpb,
    log_service_pb2_grpc,
    task_pb2,
    task_service_pb2 as tpb,
    task_service_pb2_grpc,
)
from tests.fake_runner import Answer, FakeRunner

TASKS = int(os.environ.get("HAKURIVER_BENCH_RESTART_TASKS", "1000"))
RUNNERS = 20
CORES = 64
ENV = "bench"


def output_of(task_id: int) -> bytes:
    """What a task writes: two halves, the second sent only after the restart."""
    return b"".join(f"task {task_id} line {i}\n".encode() for i in range(20))


def halves(task_id: int) -> tuple[bytes, bytes]:
    output = output_of(task_id)
    return output[: len(output) // 2], output[len(output) // 2 :]


class Tally:
    """Distinct task ids seen across all Runners; ``full`` is set once there are ``goal``."""

    def __init__(self, goal: int) -> None:
        self.ids: set[int] = set()
        self.goal = goal
        self.full = asyncio.Event()

    def add(self, task_id: int) -> None:
        self.ids.add(task_id)
        if len(self.ids) >= self.goal:
            self.full.set()


def sim_runner(index: int, config: Config, running: Tally, released: Tally) -> FakeRunner:
    """A Runner that holds each task after its first half of output; once the restarted
    Host adopts the task, it sends what the Host lacks, the second half and exit 0."""
    runner = FakeRunner(
        config,
        f"restart-{index:02d}",
        cores=CORES,
        memory_bytes=256 * 10**9,
        environments=[ENV],
        answer=lambda d: Answer(exit_code=None, stdout=halves(d.task_id)[0]),
        reconnect_delay=0.5,
        on_dispatch=running.add,
        on_release=released.add,
    )
    runner.on_adopt = lambda task_id: runner.finish(task_id, 0, stdout=halves(task_id)[1])
    return runner


async def bench(host: HostProcess) -> None:
    running, released = Tally(TASKS), Tally(TASKS)
    runners = [sim_runner(i, host.client_config, running, released) for i in range(RUNNERS)]
    await asyncio.gather(*(r.start() for r in runners))
    async with open_aio_channel(host.client_config, host.admin_token) as channel:
        tasks = task_service_pb2_grpc.TaskServiceStub(channel)
        slots = asyncio.Semaphore(64)

        async def submit() -> int:
            async with slots:
                reply = await tasks.SubmitTask(
                    tpb.SubmitTaskRequest(command="work", cores=1, container_name=ENV)
                )
                return reply.tasks[0].task_id

        ids = await asyncio.gather(*(submit() for _ in range(TASKS)))
    await asyncio.wait_for(running.full.wait(), 120)
    await asyncio.sleep(1)  # let the last output chunks reach the Host
    host.stop(signal.SIGKILL)
    killed_at = time.perf_counter()
    host.start()
    await asyncio.wait_for(released.full.wait(), 300)
    recovered = time.perf_counter() - killed_at
    async with open_aio_channel(host.client_config, host.admin_token) as channel:
        tasks = task_service_pb2_grpc.TaskServiceStub(channel)
        logs = log_service_pb2_grpc.LogServiceStub(channel)
        statuses: dict[int, int] = {}
        wrong_output = 0
        for task_id in ids:
            statuses[task_id] = (
                await tasks.GetTask(tpb.GetTaskRequest(task_id=task_id))
            ).task.status
            chunks = logs.ReadLog(
                lpb.ReadLogRequest(task_id=task_id, stream=task_pb2.LOG_STREAM_STDOUT)
            )
            data = b"".join([chunk.data async for chunk in chunks])
            wrong_output += data != output_of(task_id)
    await asyncio.gather(*(r.stop() for r in runners))
    completed = sum(1 for s in statuses.values() if s == task_pb2.TASK_STATUS_COMPLETED)
    lost = sum(1 for s in statuses.values() if s == task_pb2.TASK_STATUS_LOST)
    print(f"restart: Host SIGKILLed with {TASKS} tasks running on {RUNNERS} simulated runners")
    print(f"  Host: a subprocess ({host.label}); runners reconnect with their credentials")
    print(f"  completed {completed}/{TASKS}, lost {lost} (target 0)")
    print(f"  output not byte-exact: {wrong_output} (target 0)")
    print(f"  kill -> restarted -> every task final: {recovered:.1f} s")


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        host = HostProcess(Path(tmp), heartbeat_interval=5)
        host.start()
        try:
            asyncio.run(bench(host))
        finally:
            host.stop()


if __name__ == "__main__":
    main()
