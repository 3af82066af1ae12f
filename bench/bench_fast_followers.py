"""Followers of a fast writer (issue 16): a task printing 10 MB a second (each second, 10 MB
of 60-character lines at once, then a wait for the next second) for 10 s, on one Runner,
read by 20 followers at a time (``LogService.ReadLog`` with ``follow``, each on a connection
of its own). Prints; asserts nothing.

Three rounds:
- **alone**, no followers: the baseline, the rate its output is stored at (bytes over the
  time from its container's start to its final status) and the delay from its exit to its
  final status;
- **every byte**: 20 followers reading as fast as they can (as ``hakuriver.task stdout
  --follow > file`` does): the stored rate against the baseline, each follower's rate, how
  far behind the end it was when the task became final, and how long after that it had
  everything;
- **near the end**: 20 slow followers (pausing 50 ms after every message, like a busy
  browser) asking for ``max_lag_bytes`` = 2 MiB less 32 KiB, as the dashboard does: the
  stored rate against the baseline, how much they skipped, and the same lag figures.

And the Host's RSS before and at its peak: followers must cost the Host no backlog.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.bench_slow_followers import RssSampler, follow, host_rss
from hakuriver_common.proto.hakuriver.v1 import task_pb2
from tests.e2e.harness import FINAL, ProcessCluster, running_cluster

LINE = "0123456789" * 6
MIB = 1024 * 1024
DASHBOARD_LAG = 2 * MIB - 32 * 1024  # what the dashboard's log viewer asks for
TIMEOUT = 600.0


@dataclass(frozen=True)
class Counts:
    seconds: int = 10  # how long the writer writes
    mb_per_second: int = 10
    followers: int = 20
    slow_pause: float = 0.05  # seconds a slow follower waits after each message


def counts_from_env() -> Counts:
    return Counts(
        seconds=int(os.environ.get("HAKURIVER_BENCH_FAST_SECONDS", "10")),
        followers=int(os.environ.get("HAKURIVER_BENCH_FOLLOWERS", "20")),
    )


def writer(counts: Counts) -> list[str]:
    """10 MB (or as set) at the start of each second, for ``counts.seconds`` seconds."""
    burst = counts.mb_per_second * 1_000_000
    return [
        "sh",
        "-c",
        f"i=0; while [ $i -lt {counts.seconds} ]; do t=$(( $(date +%s) + 1 )); "
        f"yes {LINE} | head -c {burst}; "
        "while [ $(date +%s) -lt $t ]; do usleep 10000; done; i=$((i+1)); done",
    ]


@dataclass
class Reader:
    """One follower's view: where it is, what it skipped, when it got its last byte."""

    offset: int = 0
    received: int = 0
    skipped: int = 0
    skips: int = 0
    first_at: float = 0.0
    last_at: float = 0.0
    offset_at_final: int = 0

    def on_data(self, offset: int, data: bytes) -> None:
        now = time.monotonic()
        if offset > self.offset:
            self.skipped += offset - self.offset
            self.skips += 1
        self.first_at = self.first_at or now
        self.last_at = now
        self.received += len(data)
        self.offset = offset + len(data)


@dataclass
class Round:
    name: str
    stored: int = 0
    ran_seconds: float = 0.0  # the container's start to its exit (the daemon's clock)
    start_to_final: float = 0.0  # the container's start to the final status seen
    exit_to_final: float = 0.0
    readers: list[Reader] = field(default_factory=list)
    final_at: float = 0.0  # monotonic

    @property
    def stored_mb_s(self) -> float:
        return self.stored / self.start_to_final / 1e6

    @property
    def written_mb_s(self) -> float:
        return self.stored / self.ran_seconds / 1e6


def one_round(
    cluster: ProcessCluster, counts: Counts, name: str, followers: int, pause: float, lag: int
) -> Round:
    task = cluster.submit(writer(counts), network=task_pb2.TASK_NETWORK_NONE)
    found = Round(name, readers=[Reader() for _ in range(followers)])
    stop = threading.Event()
    threads = [
        follow(cluster, task.task_id, reader.on_data, stop, pause=pause, max_lag=lag)[0]
        for reader in found.readers
    ]
    deadline = time.monotonic() + TIMEOUT
    while (current := cluster.get(task.task_id)).status not in FINAL:
        if time.monotonic() > deadline:
            raise TimeoutError(f"task {task.task_id} not final within {TIMEOUT:.0f} s")
        time.sleep(0.02)
    seen, found.final_at = time.time(), time.monotonic()
    for reader in found.readers:
        reader.offset_at_final = reader.offset
    if current.status != task_pb2.TASK_STATUS_COMPLETED:
        raise RuntimeError(f"the writer ended {current.status}: {current.error_message}")
    for thread in threads:
        thread.join(TIMEOUT)
    stop.set()
    started = current.started_at.ToNanoseconds() / 1e9
    exited = current.completed_at.ToNanoseconds() / 1e9
    found.stored = Path(current.stdout_path).stat().st_size
    found.ran_seconds = exited - started
    found.start_to_final = seen - started
    found.exit_to_final = seen - exited
    return found


@dataclass
class Result:
    counts: Counts
    rounds: list[Round]
    rss_before: int
    rss_peak: int


def run(counts: Counts) -> Result:
    with (
        tempfile.TemporaryDirectory() as tmp,
        running_cluster(Path(tmp), runner_count=1) as cluster,
    ):
        cluster.wait_final(cluster.submit(["true"]).task_id)  # warm: image, first dispatch
        rss_before = host_rss(cluster)
        sampler = RssSampler(cluster)
        rounds = [
            one_round(cluster, counts, "alone", 0, 0, 0),
            one_round(cluster, counts, "every byte", counts.followers, 0, 0),
            one_round(
                cluster, counts, "near the end", counts.followers, counts.slow_pause, DASHBOARD_LAG
            ),
        ]
        sampler.stop()
        return Result(counts, rounds, rss_before, sampler.peak)


def spread(values: list[float], unit: str, digits: int = 1) -> str:
    if not values:
        return "-"
    return (
        f"median {statistics.median(values):.{digits}f}{unit}, "
        f"{min(values):.{digits}f}-{max(values):.{digits}f}{unit}"
    )


def report(result: Result) -> None:
    counts = result.counts
    base = result.rounds[0]
    print(
        f"fast followers: a task writes {counts.mb_per_second} MB/s for {counts.seconds} s; "
        f"{counts.followers} followers each round"
    )
    for r in result.rounds:
        print(
            f"  {r.name:12}  written {r.written_mb_s:5.1f} MB/s, stored {r.stored_mb_s:5.1f} MB/s "
            f"({r.stored_mb_s / base.stored_mb_s:.2f}x alone), "
            f"exit -> final {r.exit_to_final:.2f} s"
        )
        if not r.readers:
            continue
        rates = [
            x.received / (x.last_at - x.first_at) / 1e6 for x in r.readers if x.last_at > x.first_at
        ]
        behind = [(r.stored - x.offset_at_final) / MIB for x in r.readers]
        after = [x.last_at - r.final_at for x in r.readers]
        print(f"    {'':12}  follower rate  {spread(rates, ' MB/s')}")
        print(f"    {'':12}  behind the end at final  {spread(behind, ' MiB')}")
        print(f"    {'':12}  had all it gets, after final  {spread(after, ' s', 2)}")
        got = [x.received / r.stored for x in r.readers]
        print(
            f"    {'':12}  received {spread([100 * g for g in got], '%', 0)} of the output, "
            f"skips per follower {spread([float(x.skips) for x in r.readers], '', 0)}"
        )
    print(
        f"  Host RSS: before {result.rss_before / MIB:.0f} MiB, peak {result.rss_peak / MIB:.0f}"
        f" MiB (+{(result.rss_peak - result.rss_before) / MIB:.0f} MiB)"
    )


if __name__ == "__main__":
    report(run(counts_from_env()))
