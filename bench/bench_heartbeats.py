"""Heartbeat scale: a real Host, N simulated Runners heartbeating every 5 s (no Docker).

Each simulated Runner (a FakeRunner) opens its own Connect stream (many streams share a few
channels, as HTTP/2 allows), registers, then sends a heartbeat with a health sample every
interval at a random phase. After all have registered and one full interval has passed, the
Host's CPU and memory are measured over a steady window. The baseline is the same Host,
idle, measured first in the same run. Target: 5,000 runners with the Host under 50% of one
core. Asserts nothing about time.
"""

from __future__ import annotations

import asyncio
import os
import random
import time

import psutil

from bench.host_process import HostProcess, bench_host
from hakuriver_common.proto.hakuriver.v1 import node_pb2
from tests.fake_runner import Fleet

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


def sample() -> node_pb2.Health:
    health = node_pb2.Health(
        cpu_percent=random.uniform(0, 100),
        memory_percent=40.0,
        memory_used_bytes=50 * 10**9,
        memory_total_bytes=128 * 10**9,
        current_avg_temp=45.0,
        current_max_temp=60.0,
    )
    health.sampled_at.GetCurrentTime()
    return health


async def bench(server: HostProcess) -> None:
    assert server.proc is not None
    host = psutil.Process(server.proc.pid)
    idle = await measure(host, 5)
    own = psutil.Process()
    fleet = Fleet(
        server.client_config,
        RUNNERS,
        "hb-{:05d}",
        STREAMS_PER_CHANNEL,
        cores=32,
        memory_bytes=128 * 10**9,
        environments=[],
        reconnect=False,
        heartbeat_interval=INTERVAL,
        health=sample,
    )
    runners = fleet.runners
    for runner in runners:
        runner.first_heartbeat_delay = random.uniform(0, INTERVAL)
    started = time.perf_counter()
    await asyncio.wait_for(asyncio.gather(*(r.start() for r in runners)), 300)
    register_seconds = time.perf_counter() - started
    await asyncio.sleep(INTERVAL)
    own_before = cpu_seconds(own)
    window_start = time.perf_counter()
    loaded = await measure(host, WINDOW)
    own_used = (cpu_seconds(own) - own_before) / (time.perf_counter() - window_start)
    rss = host.memory_info().rss
    await fleet.stop()
    sent = sum(r.heartbeats_sent for r in runners)
    rate = RUNNERS / INTERVAL
    print(f"heartbeats: {RUNNERS} simulated runners, one heartbeat each every {INTERVAL:g} s")
    joined = "; each runner joined with the join token" if server.authentication else ""
    print(f"  Host: a subprocess ({server.label}){joined}")
    print(f"  registered all in {register_seconds:.1f} s; {sent} heartbeats sent in all")
    print(
        f"  Host CPU: {loaded:.1%} of a core at {rate:.0f} heartbeats/s "
        f"(target < 50%); idle baseline {idle:.1%}; "
        f"{(loaded - idle) / rate * 1e6:.0f} us of Host CPU per heartbeat"
    )
    print(f"  Host memory: {rss / 2**20:.0f} MiB RSS (10 minutes of health history per node)")
    print(f"  load generator: {own_used:.0%} of a core")


def main() -> None:
    with bench_host(INTERVAL) as host:
        asyncio.run(bench(host))


if __name__ == "__main__":
    main()
