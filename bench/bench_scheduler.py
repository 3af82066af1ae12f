"""Scheduler throughput: a real Host, N simulated Runners (in-process, no Docker), M tasks.

Each simulated Runner is a FakeRunner (tests/fake_runner.py), the real Connect protocol: it
registers, heartbeats, and answers every dispatch at once with "running" then "exited 0".
Submitters keep a bounded number of SubmitTask calls in flight. Prints tasks placed per
second end to end (submit to completed) and submit-to-running latency percentiles, against
the design target (> 2,000 tasks/s with 100 runners). Asserts nothing about time.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time

import grpc
import psutil
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.host_process import HostProcess, bench_host
from hakuriver_common.channels import open_aio_channel
from hakuriver_common.proto.hakuriver.v1 import task_service_pb2 as tpb, task_service_pb2_grpc
from tests.fake_runner import FakeRunner

RUNNERS = int(os.environ.get("HAKURIVER_BENCH_RUNNERS", "100"))
TASKS = int(os.environ.get("HAKURIVER_BENCH_TASKS", "2000"))
IN_FLIGHT = int(os.environ.get("HAKURIVER_BENCH_IN_FLIGHT", "64"))
ENV = "bench"
# A path: profile the Host under this load with py-spy (must be installed) into that file.
PROFILE = os.environ.get("HAKURIVER_BENCH_PROFILE", "")


async def unary_floor(channel: grpc.aio.Channel) -> float:
    """Calls/s of the cheapest unary RPC (health Check) at the same concurrency: the most
    one-call-per-task submission could reach on this machine."""
    stub = health_pb2_grpc.HealthStub(channel)
    slots = asyncio.Semaphore(IN_FLIGHT)

    async def check() -> None:
        async with slots:
            await stub.Check(health_pb2.HealthCheckRequest())

    start = time.perf_counter()
    await asyncio.gather(*(check() for _ in range(TASKS)))
    return TASKS / (time.perf_counter() - start)


async def bench(host: HostProcess) -> None:
    assert host.proc is not None
    host_pid = host.proc.pid
    submitted_at: dict[int, float] = {}
    done: asyncio.Queue[int] = asyncio.Queue()
    runners = [
        FakeRunner(
            host.client_config,
            f"sim-{i:03d}",
            cores=64,
            memory_bytes=256 * 10**9,
            environments=[ENV],
            on_release=done.put_nowait,
        )
        for i in range(RUNNERS)
    ]
    await asyncio.gather(*(r.start() for r in runners))
    async with open_aio_channel(host.client_config, host.admin_token) as channel:
        stub = task_service_pb2_grpc.TaskServiceStub(channel)
        slots = asyncio.Semaphore(IN_FLIGHT)

        async def submit() -> None:
            async with slots:
                sent = time.perf_counter()
                reply = await stub.SubmitTask(
                    tpb.SubmitTaskRequest(command="true", container_name=ENV)
                )
                submitted_at[reply.tasks[0].task_id] = sent

        baseline = await unary_floor(channel)
        host_cpu = psutil.Process(host_pid).cpu_times()
        own_cpu = psutil.Process().cpu_times()
        start = time.perf_counter()
        await asyncio.gather(*(submit() for _ in range(TASKS)))
        submit_seconds = time.perf_counter() - start
        finished = 0
        while finished < TASKS:
            await asyncio.wait_for(done.get(), 120)
            finished += 1
        total = time.perf_counter() - start
        host_used = sum(psutil.Process(host_pid).cpu_times()[:2]) - sum(host_cpu[:2])
        own_used = sum(psutil.Process().cpu_times()[:2]) - sum(own_cpu[:2])
    await asyncio.gather(*(r.stop() for r in runners))
    running_at = {t: at for r in runners for t, at in r.dispatched_at.items()}
    latencies = sorted(running_at[t] - submitted_at[t] for t in submitted_at if t in running_at)
    p = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))]  # noqa: E731
    print(f"scheduler: {RUNNERS} simulated runners, {TASKS} tasks, {IN_FLIGHT} submits in flight")
    print(f"  Host: a subprocess ({host.label})")
    print(f"  submitted at   {TASKS / submit_seconds:8.0f} tasks/s")
    print(f"  placed, ran and completed end to end at {TASKS / total:8.0f} tasks/s (target > 2000)")
    print(
        f"  baseline: bare gRPC health checks to the same Host at {baseline:8.0f} calls/s; "
        f"end to end is {TASKS / total / baseline:.2f}x that"
    )
    print(f"  submit -> running  p50 {p(0.5) * 1000:7.1f} ms  p99 {p(0.99) * 1000:7.1f} ms")
    print(
        f"  CPU: Host {host_used / total:.0%} of a core, "
        f"load generator and simulated runners {own_used / total:.0%} of a core"
    )


def main() -> None:
    with bench_host() as host:
        profiler = None
        if PROFILE:
            spy = ["py-spy", "record", "--gil", "--nonblocking", "-f", "raw", "-o", PROFILE]
            assert host.proc is not None
            profiler = subprocess.Popen([*spy, "--pid", str(host.proc.pid)])
        try:
            asyncio.run(bench(host))
        finally:
            if profiler is not None:
                profiler.send_signal(signal.SIGINT)
                profiler.wait(30)


if __name__ == "__main__":
    main()
