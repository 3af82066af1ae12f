"""Host restart with tasks in flight: a real Host is SIGKILLed with 1,000 tasks running.

Simulated Runners (the real Connect protocol, no Docker) run every dispatched task: they
report it running and stream the first half of its output. Then the Host is killed with
SIGKILL and started again. The Runners reconnect, naming the tasks they still hold; for
each task the Host adopts, a Runner resends output from the offset the Host asks for, then
reports exit 0. Printed: tasks lost, tasks whose output is not byte-exact, and the time from
restart to every task final. Target: zero lost, every status and byte kept.
"""

from __future__ import annotations

import asyncio
import os
import signal
import tempfile
import time
from pathlib import Path

import grpc

from bench.host_process import HostProcess
from hakuriver_common.proto.hakuriver.v1 import (
    log_service_pb2 as lpb,
    log_service_pb2_grpc,
    node_pb2,
    runner_service_pb2 as rpb,
    runner_service_pb2_grpc,
    task_pb2,
    task_service_pb2 as tpb,
    task_service_pb2_grpc,
)

TASKS = int(os.environ.get("HAKURIVER_BENCH_RESTART_TASKS", "1000"))
RUNNERS = 20
CORES = 64
ENV = "bench"


def output_of(task_id: int) -> bytes:
    """What a task writes: two halves, the second sent only after the restart."""
    return b"".join(f"task {task_id} line {i}\n".encode() for i in range(20))


class Disconnected(Exception):
    """The Host ended the stream."""


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


class SimRunner:
    def __init__(self, name: str, target: str, running: Tally, released: Tally) -> None:
        self.name = name
        self.target = target
        self.held: set[int] = set()
        self.running = running
        self.released = released
        self.connected = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> None:
        """Stay connected, reconnecting after the Host goes away, until ``stop``."""
        while not stop.is_set():
            try:
                await self._session(stop)
            except (grpc.aio.AioRpcError, Disconnected):
                self.connected.clear()
                await asyncio.sleep(0.5)

    async def _session(self, stop: asyncio.Event) -> None:
        async with grpc.aio.insecure_channel(self.target) as channel:
            call = runner_service_pb2_grpc.RunnerServiceStub(channel).Connect()
            await call.write(
                rpb.ConnectRequest(
                    register=rpb.RegisterRunner(
                        hostname=self.name,
                        total_cores=CORES,
                        total_memory_bytes=256 * 10**9,
                        numa_nodes=[
                            node_pb2.NumaNode(id=0, cpus=range(CORES), memory_bytes=256 * 10**9)
                        ],
                        environments=[ENV],
                        known_task_ids=sorted(self.held),
                    )
                )
            )
            first = await call.read()
            if first is grpc.aio.EOF:
                raise Disconnected
            ack = first.registered
            for adopt in ack.adopt:
                await self._finish(call, adopt.task_id, adopt.stdout_offset)
            for task_id in ack.discard_task_ids:
                self.held.discard(task_id)
            self.connected.set()
            reader = asyncio.create_task(self._serve(call))
            stopper = asyncio.create_task(stop.wait())
            await asyncio.wait({reader, stopper}, return_when=asyncio.FIRST_COMPLETED)
            stopper.cancel()
            if reader.done():
                reader.result()
            else:
                reader.cancel()
                call.cancel()

    async def _finish(self, call: grpc.aio.StreamStreamCall, task_id: int, offset: int) -> None:
        data = output_of(task_id)
        await call.write(
            rpb.ConnectRequest(
                log_chunk=rpb.LogChunk(
                    task_id=task_id,
                    stream=task_pb2.LOG_STREAM_STDOUT,
                    offset=offset,
                    data=data[offset:],
                )
            )
        )
        await call.write(
            rpb.ConnectRequest(
                task_state=rpb.TaskStateReport(
                    task_id=task_id, state=rpb.RUNNER_TASK_STATE_EXITED, exit_code=0
                )
            )
        )

    async def _serve(self, call: grpc.aio.StreamStreamCall) -> None:
        while True:
            message = await call.read()
            if message is grpc.aio.EOF:
                raise Disconnected
            if message.HasField("dispatch"):
                task_id = message.dispatch.task_id
                self.held.add(task_id)
                await call.write(
                    rpb.ConnectRequest(
                        task_state=rpb.TaskStateReport(
                            task_id=task_id, state=rpb.RUNNER_TASK_STATE_RUNNING
                        )
                    )
                )
                half = output_of(task_id)[: len(output_of(task_id)) // 2]
                await call.write(
                    rpb.ConnectRequest(
                        log_chunk=rpb.LogChunk(
                            task_id=task_id, stream=task_pb2.LOG_STREAM_STDOUT, offset=0, data=half
                        )
                    )
                )
                self.running.add(task_id)
            elif message.HasField("release"):
                self.held.discard(message.release.task_id)
                self.released.add(message.release.task_id)


async def bench(host: HostProcess) -> None:
    stop = asyncio.Event()
    running, released = Tally(TASKS), Tally(TASKS)
    runners = [
        SimRunner(f"restart-{i:02d}", host.target, running, released) for i in range(RUNNERS)
    ]
    loops = [asyncio.create_task(r.run(stop)) for r in runners]
    await asyncio.gather(*(r.connected.wait() for r in runners))
    async with grpc.aio.insecure_channel(host.target) as channel:
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
    async with grpc.aio.insecure_channel(host.target) as channel:
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
    stop.set()
    await asyncio.gather(*loops, return_exceptions=True)
    completed = sum(1 for s in statuses.values() if s == task_pb2.TASK_STATUS_COMPLETED)
    lost = sum(1 for s in statuses.values() if s == task_pb2.TASK_STATUS_LOST)
    print(f"restart: Host SIGKILLed with {TASKS} tasks running on {RUNNERS} simulated runners")
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
