"""Heartbeat scale: a real Host, N simulated Runners heartbeating every 5 s (no Docker).

Each simulated Runner opens its own Connect stream (many streams share a few channels, as
HTTP/2 allows), registers, then sends a heartbeat with a health sample every interval at a
random phase. After all have registered and one full interval has passed, the Host's CPU
and memory are measured over a steady window. The baseline is the same Host, idle, measured
first in the same run. Target: 5,000 runners with the Host under 50% of one core. Asserts
nothing about time.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import time

import grpc
import psutil

from bench.host_process import bench_host
from hakuriver_common.proto.hakuriver.v1 import (
    node_pb2,
    runner_service_pb2 as rpb,
    runner_service_pb2_grpc,
)

RUNNERS = int(os.environ.get("HAKURIVER_BENCH_HB_RUNNERS", "5000"))
INTERVAL = float(os.environ.get("HAKURIVER_BENCH_HB_INTERVAL", "5"))
WINDOW = float(os.environ.get("HAKURIVER_BENCH_HB_WINDOW", "30"))
STREAMS_PER_CHANNEL = 100


def cpu_seconds(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return times.user + times.system


async def measure(proc: psutil.Process, seconds: float) -> float:
    """Fraction of one core the process used over ``seconds``."""
    before, start = cpu_seconds(proc), time.perf_counter()
    await asyncio.sleep(seconds)
    return (cpu_seconds(proc) - before) / (time.perf_counter() - start)


async def sim_runner(
    index: int, channel: grpc.aio.Channel, registered: asyncio.Queue[int], stop: asyncio.Event
) -> int:
    """Register, then heartbeat until stopped; returns heartbeats sent."""
    call = runner_service_pb2_grpc.RunnerServiceStub(channel).Connect()
    await call.write(
        rpb.ConnectRequest(
            register=rpb.RegisterRunner(
                hostname=f"hb-{index:05d}",
                total_cores=32,
                total_memory_bytes=128 * 10**9,
                numa_nodes=[node_pb2.NumaNode(id=0, cpus=range(32), memory_bytes=128 * 10**9)],
            )
        )
    )
    await call.read()
    registered.put_nowait(index)
    sent = 0
    await asyncio.sleep(random.uniform(0, INTERVAL))
    while not stop.is_set():
        health = node_pb2.Health(
            cpu_percent=random.uniform(0, 100),
            memory_percent=40.0,
            memory_used_bytes=50 * 10**9,
            memory_total_bytes=128 * 10**9,
            current_avg_temp=45.0,
            current_max_temp=60.0,
        )
        health.sampled_at.GetCurrentTime()
        await call.write(rpb.ConnectRequest(heartbeat=rpb.Heartbeat(health=health)))
        sent += 1
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), INTERVAL)
    call.cancel()
    return sent


async def bench(target: str, host: psutil.Process) -> None:
    idle = await measure(host, 5)
    own = psutil.Process()
    channels = [
        # A connection per channel, as separate Runner machines would have (channels with
        # equal arguments would otherwise share one connection).
        grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range((RUNNERS + STREAMS_PER_CHANNEL - 1) // STREAMS_PER_CHANNEL)
    ]
    registered: asyncio.Queue[int] = asyncio.Queue()
    stop = asyncio.Event()
    started = time.perf_counter()
    runners = [
        asyncio.create_task(sim_runner(i, channels[i // STREAMS_PER_CHANNEL], registered, stop))
        for i in range(RUNNERS)
    ]
    for _ in range(RUNNERS):
        await asyncio.wait_for(registered.get(), 300)
    register_seconds = time.perf_counter() - started
    await asyncio.sleep(INTERVAL)
    own_before = cpu_seconds(own)
    window_start = time.perf_counter()
    loaded = await measure(host, WINDOW)
    own_used = (cpu_seconds(own) - own_before) / (time.perf_counter() - window_start)
    rss = host.memory_info().rss
    stop.set()
    sent = sum(await asyncio.gather(*runners))
    for channel in channels:
        await channel.close()
    rate = RUNNERS / INTERVAL
    print(f"heartbeats: {RUNNERS} simulated runners, one heartbeat each every {INTERVAL:g} s")
    print(f"  registered all in {register_seconds:.1f} s; {sent} heartbeats sent in all")
    print(
        f"  Host CPU: {loaded:.1%} of a core at {rate:.0f} heartbeats/s "
        f"(target < 50%); idle baseline {idle:.1%}; "
        f"{(loaded - idle) / rate * 1e6:.0f} us of Host CPU per heartbeat"
    )
    print(f"  Host memory: {rss / 2**20:.0f} MiB RSS (10 minutes of health history per node)")
    print(f"  load generator: {own_used:.0%} of a core")


def main() -> None:
    with bench_host(INTERVAL) as (target, host):
        asyncio.run(bench(target, psutil.Process(host.pid)))


if __name__ == "__main__":
    main()
