"""Heartbeat scale: a real Host, N simulated Runners heartbeating every 5 s (no Docker).

Each simulated Runner (a FakeRunner) opens its own Connect stream (many streams share a few
channels, as HTTP/2 allows), registers, then sends a heartbeat with a health sample every
interval at a random phase. After all have registered and one full interval has passed, the
server's CPU is measured over a steady window against its own idle CPU measured first.

The same fleet first heartbeats grpc.aio alone (bench/grpc_ceiling.py: a bare server with the
Host's TLS files that acknowledges the registration and drops every later message), then the
Host: the cost of a heartbeat is printed for both, and the Host's as a ratio of the bare
server's, what the library alone costs per message on this machine.

Target: 20,000 Runners every 5 s (4,000 heartbeats/s) with the Host under 50% of one core.
One load generator drives 5,000 here; the figure for 20,000 is the measured cost per
heartbeat scaled linearly, and printed as such. Asserts nothing about time.
"""

from __future__ import annotations

import asyncio
import math
import os
import random
import time
from dataclasses import dataclass

import psutil

from bench.grpc_ceiling import bare_server
from bench.host_process import bench_host
from hakuriver_common.config import Config
from hakuriver_common.proto.hakuriver.v1 import node_pb2
from tests.fake_runner import Fleet

RUNNERS = int(os.environ.get("HAKURIVER_BENCH_HB_RUNNERS", "5000"))
INTERVAL = float(os.environ.get("HAKURIVER_BENCH_HB_INTERVAL", "5"))
WINDOW = float(os.environ.get("HAKURIVER_BENCH_HB_WINDOW", "30"))
STREAMS_PER_CHANNEL = 100
TARGET_RUNNERS = 20_000
TARGET_INTERVAL = 5.0
IDLE_SECONDS = 5.0


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


@dataclass
class Load:
    """One server heartbeated by the fleet: CPU as fractions of one core."""

    idle: float
    loaded: float
    # Heartbeats the fleet sent during the window, per second.
    rate: float
    register_seconds: float
    rss: int
    # The load generator's own CPU during the window.
    generator: float

    @property
    def per_heartbeat(self) -> float:
        """Seconds of the server's CPU per heartbeat, above its idle."""
        return (self.loaded - self.idle) / self.rate if self.rate else math.nan


@dataclass
class Outcome:
    runners: int
    interval: float
    window: float
    bare: Load
    host: Load
    host_label: str
    authenticated: bool


async def load(config: Config, pid: int, runners: int, interval: float, window: float) -> Load:
    """The fleet registered with the server at ``config`` (process ``pid``), heartbeating it
    for ``window`` seconds of steady state; stopped afterwards."""
    server = psutil.Process(pid)
    idle = await measure(server, min(IDLE_SECONDS, window))
    own = psutil.Process()
    fleet = Fleet(
        config,
        runners,
        "hb-{:05d}",
        STREAMS_PER_CHANNEL,
        cores=32,
        memory_bytes=128 * 10**9,
        environments=[],
        reconnect=False,
        heartbeat_interval=interval,
        health=sample,
    )
    try:
        for runner in fleet.runners:
            runner.first_heartbeat_delay = random.uniform(0, interval)
        started = time.perf_counter()
        await asyncio.wait_for(asyncio.gather(*(r.start() for r in fleet.runners)), 300)
        register_seconds = time.perf_counter() - started
        await asyncio.sleep(interval)
        sent_before = sum(r.heartbeats_sent for r in fleet.runners)
        own_before, window_start = cpu_seconds(own), time.perf_counter()
        loaded = await measure(server, window)
        elapsed = time.perf_counter() - window_start
        sent = sum(r.heartbeats_sent for r in fleet.runners) - sent_before
        generator = (cpu_seconds(own) - own_before) / elapsed
        rss = server.memory_info().rss
    finally:
        await fleet.stop()
    return Load(idle, loaded, sent / elapsed, register_seconds, rss, generator)


def run(runners: int = RUNNERS, interval: float = INTERVAL, window: float = WINDOW) -> Outcome:
    """grpc.aio alone, then the Host, each heartbeated by a fleet of ``runners``."""
    with bench_host(interval) as host:
        assert host.proc is not None
        with bare_server(host.client_config) as bare:
            bare_load = asyncio.run(load(bare.config, bare.pid, runners, interval, window))
        host_load = asyncio.run(load(host.client_config, host.proc.pid, runners, interval, window))
        return Outcome(
            runners, interval, window, bare_load, host_load, host.label, host.authentication
        )


def _line(load: Load) -> str:
    return (
        f"{load.loaded:.1%} of a core at {load.rate:.0f} heartbeats/s, idle {load.idle:.1%}: "
        f"{load.per_heartbeat * 1e6:.0f} us per heartbeat"
    )


def report(outcome: Outcome) -> None:
    bare, host = outcome.bare, outcome.host
    target_rate = TARGET_RUNNERS / TARGET_INTERVAL
    print(
        f"heartbeats: {outcome.runners} simulated runners, one heartbeat each every "
        f"{outcome.interval:g} s; CPU over {outcome.window:g} s of steady state"
    )
    print(
        "  grpc.aio alone (a bare server, TLS, that acknowledges the registration and drops "
        f"each message): {_line(bare)}"
    )
    joined = "; each runner joined with the join token" if outcome.authenticated else ""
    print(f"  Host: a subprocess ({outcome.host_label}){joined}")
    print(f"    registered all in {host.register_seconds:.1f} s")
    print(f"    {_line(host)} = {host.per_heartbeat / bare.per_heartbeat:.2f}x grpc.aio alone")
    print(
        f"  at {TARGET_RUNNERS:,} runners every {TARGET_INTERVAL:g} s ({target_rate:,.0f} "
        f"heartbeats/s), scaled from the cost per heartbeat: Host "
        f"{host.idle + host.per_heartbeat * target_rate:.0%} of a core (target < 50%), "
        f"grpc.aio alone {bare.idle + bare.per_heartbeat * target_rate:.0%}"
    )
    print(f"  Host memory: {host.rss / 2**20:.0f} MiB RSS (10 minutes of health history per node)")
    print(f"  load generator: {host.generator:.0%} of a core")


def main() -> None:
    report(run())


if __name__ == "__main__":
    main()
