"""Slow consumers must not hurt others: one task prints as fast as it can for 10 s while 20
slow followers (LogService.ReadLog follow streams, each on its own connection, pausing after
every message) read it; meanwhile a second task prints one line every 100 ms, read by one
prompt follower. Prints that second task's live log latency without and with the flood, and
the Host's RSS before, at its peak and after. Asserts nothing (see docs/reliability.md for
the bounds it is held to).

Latency of a line: the container's own clock when it printed it (the /proc/uptime the line
carries; 10 ms resolution, the kernel's boot clock, which the benchmark reads too) to the
moment the prompt follower has it; and, finer, Docker's receive timestamp of it (the log
driver's, nanoseconds) to the same moment, as in bench_dispatch.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import grpc

from hakuriver_common.channels import NEAR_THE_END, open_channel
from hakuriver_common.proto.hakuriver.v1 import (
    log_service_pb2 as lpb,
    log_service_pb2_grpc,
    task_pb2,
)
from tests.e2e.harness import ProcessCluster, running_cluster, wait_for

FOLLOW_TIMEOUT = 900  # seconds: no follow stream outlives this, whatever happens


@dataclass(frozen=True)
class Counts:
    flood_seconds: float = 10.0
    followers: int = 20
    follower_pause: float = 0.2  # seconds a slow follower waits after each message
    tick_lines: int = 100  # the second task's lines, one per 100 ms
    tick_linger: float = 5.0  # seconds it stays after its last line: Docker's log read whole
    flood_bound: float = 300.0  # seconds the flood task has to end once it stops printing
    settle_seconds: float = 3.0  # seconds after the floods before the Host's RSS "after"


def counts_from_env() -> Counts:
    return Counts(
        flood_seconds=float(os.environ.get("HAKURIVER_BENCH_FLOOD_SECONDS", "10")),
        followers=int(os.environ.get("HAKURIVER_BENCH_FOLLOWERS", "20")),
    )


@dataclass
class Latencies:
    uptime: list[float] = field(default_factory=list)  # the container's clock -> follower
    stored: list[float] = field(default_factory=list)  # the container's clock -> Host's file
    docker: list[float] = field(default_factory=list)  # Docker's timestamp -> follower
    errors: list[str] = field(default_factory=list)  # why Docker's timestamps are missing

    def summary(self, values: list[float]) -> str:
        if not values:
            return "no lines"
        ordered = sorted(values)
        return (
            f"p50 {ms(statistics.median(ordered))}  p99 {ms(percentile(ordered, 0.99))}  "
            f"max {ms(ordered[-1])}  ({len(ordered)} lines)"
        )


@dataclass
class Flood:
    """One flood: the other task's latencies meanwhile, and what the flood did."""

    followers: int
    latencies: Latencies
    stored_bytes: int
    seconds_to_final: float
    follower_bytes: list[int]


@dataclass
class Result:
    quiet: Latencies
    alone: Flood  # the flood without followers: what the flood itself costs
    followed: Flood  # the flood with the slow followers
    rss_before: int
    rss_peak: int
    rss_after: int

    @property
    def flooded(self) -> Latencies:
        return self.followed.latencies


def ms(seconds: float) -> str:
    return f"{seconds * 1000:7.1f} ms"


def percentile(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def docker_time(stamp: str) -> float:
    main, _, frac = stamp.rstrip("Z").partition(".")
    return datetime.fromisoformat(main + "+00:00").timestamp() + float("0." + (frac or "0"))


def boottime() -> float:
    return time.clock_gettime(time.CLOCK_BOOTTIME)


def host_rss(cluster: ProcessCluster) -> int:
    assert cluster.host is not None
    for line in Path(f"/proc/{cluster.host.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


class RssSampler:
    """The Host's RSS every 100 ms in a thread; ``peak`` is the largest seen."""

    def __init__(self, cluster: ProcessCluster) -> None:
        self.cluster = cluster
        self.peak = host_rss(cluster)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            self.peak = max(self.peak, host_rss(self.cluster))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


def follow(
    cluster: ProcessCluster,
    task_id: int,
    on_data: Callable[[int, bytes], None],
    stop: threading.Event,
    pause: float = 0,
    max_lag: int = 0,
) -> tuple[threading.Thread, list[int]]:
    """Follow a task's stdout on a connection of its own in a thread, calling ``on_data``
    with each message's offset and bytes (then sleeping ``pause``), until the stream ends or
    ``stop``; ``max_lag`` is the request's ``max_lag_bytes``."""
    received = [0]

    def run() -> None:
        options = NEAR_THE_END if max_lag else ()
        with open_channel(cluster.client_config, cluster.admin_token, options) as channel:
            logs = log_service_pb2_grpc.LogServiceStub(channel)
            request = lpb.ReadLogRequest(
                task_id=task_id,
                stream=task_pb2.LOG_STREAM_STDOUT,
                follow=True,
                max_lag_bytes=max_lag,
            )
            call = logs.ReadLog(request, timeout=FOLLOW_TIMEOUT)
            watcher = threading.Thread(target=lambda: (stop.wait(), call.cancel()), daemon=True)
            watcher.start()
            try:
                for message in call:
                    received[0] += len(message.data)
                    on_data(message.offset, message.data)
                    if pause and stop.wait(pause):
                        break
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.CANCELLED:
                    raise
            finally:
                call.cancel()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, received


def docker_stamps(
    cluster: ProcessCluster, task_id: int, written: dict[str, float], errors: list[str]
) -> None:
    """Docker's receive timestamp of each stdout line of the task, read from the daemon as
    the container runs (its log is gone once the Runner removes it)."""
    try:
        container = wait_for(
            lambda: cluster.docker.containers.list(
                all=True, ignore_removed=True, filters={"label": f"hakuriver.task_id={task_id}"}
            ),
            timeout=60,
            what=f"the container of task {task_id}",
        )[0]
        pending = b""
        for chunk in container.logs(
            stdout=True, stderr=False, timestamps=True, stream=True, follow=True
        ):
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for raw in lines:
                stamp, _, text = raw.decode().partition(" ")
                written[text.strip()] = docker_time(stamp)
    except Exception as exc:  # reported beside the figures, which then lack this measure
        errors.append(f"{exc.__class__.__name__}: {exc}")


def watch_stored(path: Path, seen: dict[str, float], stop: threading.Event) -> None:
    """When each line appears in the Host's output file (read every 10 ms): tells the
    Runner-to-Host part of a delay from the Host-to-follower part."""
    offset, pending = 0, b""
    while not stop.wait(0.01):
        if not path.exists():
            continue
        with path.open("rb") as file:
            file.seek(offset)
            data = file.read()
        now = boottime()
        offset += len(data)
        pending += data
        *lines, pending = pending.split(b"\n")
        for line in lines:
            seen.setdefault(line.decode(), now)


def ticker(cluster: ProcessCluster, counts: Counts) -> Latencies:
    """Run the one-line-per-100-ms task with a prompt follower; its latencies."""
    script = (
        f"i=0; while [ $i -lt {counts.tick_lines} ]; do "
        'read up _ < /proc/uptime; echo "tick-$i $up"; i=$((i+1)); usleep 100000; done; '
        f"sleep {counts.tick_linger:g}"
    )
    task = cluster.submit(["sh", "-c", script], cores=1)
    arrived: dict[str, tuple[float, float]] = {}
    pending = bytearray()
    found = Latencies()

    def on_data(_offset: int, data: bytes) -> None:
        now, boot = time.time(), boottime()
        pending.extend(data)
        *lines, rest = bytes(pending).split(b"\n")
        pending[:] = rest
        for line in lines:
            arrived.setdefault(line.decode(), (now, boot))

    stop = threading.Event()
    thread, _ = follow(cluster, task.task_id, on_data, stop)
    stored: dict[str, float] = {}
    out = cluster.shared_dir / "task_outputs" / f"{task.task_id}.out"
    storing = threading.Thread(target=watch_stored, args=(out, stored, stop), daemon=True)
    storing.start()
    written: dict[str, float] = {}
    stamper = threading.Thread(
        target=docker_stamps, args=(cluster, task.task_id, written, found.errors), daemon=True
    )
    stamper.start()
    wait_for(
        lambda: len(arrived) >= counts.tick_lines,
        timeout=counts.tick_lines * 0.1 + 120,
        what="every tick line at the follower",
    )
    stamper.join(30)
    if len(written) < len(arrived) and not found.errors:
        found.errors.append(f"Docker's log gave {len(written)} of {len(arrived)} lines")
    stop.set()
    thread.join(10)
    storing.join(10)
    for text, (now, boot) in arrived.items():
        if text in written:
            found.docker.append(now - written[text])
        printed = float(text.split()[1])
        found.uptime.append(boot - printed)
        if text in stored:
            found.stored.append(stored[text] - printed)
    return found


def flood(cluster: ProcessCluster, counts: Counts, followers: int) -> Flood:
    """A task printing as fast as it can, ``followers`` slow followers on it, and the other
    task's latencies meanwhile."""
    task = cluster.submit(
        ["sh", "-c", f"timeout {counts.flood_seconds:g} yes flood-{'x' * 60}; true"], cores=1
    )
    stop = threading.Event()
    readers = [
        follow(cluster, task.task_id, lambda _o, _d: None, stop, pause=counts.follower_pause)
        for _ in range(followers)
    ]
    cluster.wait_status(task.task_id, {task_pb2.TASK_STATUS_RUNNING})
    started = time.monotonic()
    latencies = ticker(cluster, counts)
    cluster.wait_final(task.task_id, timeout=counts.flood_bound)
    seconds = time.monotonic() - started
    stop.set()
    for thread, _ in readers:
        thread.join(30)
    return Flood(
        followers=followers,
        latencies=latencies,
        stored_bytes=(cluster.shared_dir / "task_outputs" / f"{task.task_id}.out").stat().st_size,
        seconds_to_final=seconds,
        follower_bytes=[received[0] for _, received in readers],
    )


def run(counts: Counts) -> Result:
    with (
        tempfile.TemporaryDirectory() as tmp,
        running_cluster(Path(tmp), runner_count=1, heartbeat_interval=1) as cluster,
    ):
        cluster.wait_final(cluster.submit(["true"]).task_id)  # warm: image, first dispatch
        time.sleep(1)
        rss_before = host_rss(cluster)
        sampler = RssSampler(cluster)
        quiet = ticker(cluster, counts)
        alone = flood(cluster, counts, 0)
        followed = flood(cluster, counts, counts.followers)
        time.sleep(counts.settle_seconds)
        rss_after = host_rss(cluster)
        sampler.stop()
        return Result(quiet, alone, followed, rss_before, sampler.peak, rss_after)


def report(result: Result, counts: Counts) -> None:
    mib = 1024 * 1024
    print(
        f"slow followers: a task prints as fast as it can for {counts.flood_seconds:g} s, "
        f"alone, then read by {counts.followers} followers pausing {counts.follower_pause:g} s "
        "per message; meanwhile another task prints a line every 100 ms, read promptly"
    )
    for run in (result.alone, result.followed):
        got = run.follower_bytes or [0]
        print(
            f"  flood with {run.followers:2} followers: {run.stored_bytes / mib:.0f} MiB stored, "
            f"final {run.seconds_to_final:.1f} s after it started"
            + (
                f"; followers got {min(got) / mib:.1f}-{max(got) / mib:.1f} MiB"
                if run.followers
                else ""
            )
        )
    print("  the other task's live log latency:")
    rows = (
        ("without the flood", result.quiet),
        ("flood, no followers", result.alone.latencies),
        (f"flood, {counts.followers} followers", result.flooded),
    )
    for label, lat in rows:
        print(f"    {label:22} container clock  -> follower  {lat.summary(lat.uptime)}")
        print(f"    {'':22} container clock  -> Host's file {lat.summary(lat.stored)}")
        print(f"    {'':22} Docker timestamp -> follower  {lat.summary(lat.docker)}")
        for error in lat.errors:
            print(f"    {'':22} (Docker's timestamps: {error})")
    quiet, flooded = sorted(result.quiet.uptime), sorted(result.flooded.uptime)
    if quiet and flooded:
        print(
            "    with followers / quiet (container clock): "
            f"p50 {statistics.median(flooded) / statistics.median(quiet):.1f}x, "
            f"p99 {percentile(flooded, 0.99) / percentile(quiet, 0.99):.1f}x"
            "  (bound: p99 with the flood < 250 ms)"
        )
    print(
        f"  Host RSS: before {result.rss_before / mib:.0f} MiB, peak {result.rss_peak / mib:.0f}"
        f" MiB, after {result.rss_after / mib:.0f} MiB; peak / before "
        f"{result.rss_peak / result.rss_before:.2f}x (bounds: peak < before + 100 MiB, "
        "after < before + 20 MiB)"
    )


def main() -> None:
    counts = counts_from_env()
    report(run(counts), counts)


if __name__ == "__main__":
    main()
