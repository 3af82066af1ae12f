"""Dispatch overhead and live-log latency through a real cluster. Prints; asserts nothing.

1. Submit-to-completed of a trivial task (`true`) through Host, Runner and Docker, against a
   bare `docker run` of the same image from a warm docker-py client, interleaved in the same
   run; medians of several runs. Design target: overhead < 50 ms.
2. Live log latency: a task prints a line every 100 ms; for each line, the time from Docker
   receiving it (its log timestamp) to `hakuriver.task stdout --follow` printing it.
   Design target: < 100 ms median.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

from hakuriver_common.proto.hakuriver.v1 import task_pb2, task_service_pb2 as tpb
from tests.e2e.harness import BASE_ENV, FINAL, ProcessCluster, running_cluster

IMAGE = f"hakuriver/{BASE_ENV}:base"
RUNS = int(os.environ.get("HAKURIVER_BENCH_RUNS", "15"))
LINES = int(os.environ.get("HAKURIVER_BENCH_LINES", "30"))


def ms(seconds: float) -> str:
    return f"{seconds * 1000:7.1f} ms"


def submit_to_completed(cluster: ProcessCluster) -> float:
    start = time.perf_counter()
    task = cluster.submit(["true"])
    for update in cluster.tasks.WatchTask(tpb.WatchTaskRequest(task_id=task.task_id), timeout=60):
        if update.task.status in FINAL:
            assert update.task.status == task_pb2.TASK_STATUS_COMPLETED, update.task
            break
    return time.perf_counter() - start


def bare_docker_run(cluster: ProcessCluster) -> float:
    start = time.perf_counter()
    cluster.docker.containers.run(IMAGE, ["true"], remove=True, network_mode="host")
    return time.perf_counter() - start


def dispatch_overhead(cluster: ProcessCluster) -> None:
    submit_to_completed(cluster)
    bare_docker_run(cluster)
    ours, bare = [], []
    for _ in range(RUNS):
        bare.append(bare_docker_run(cluster))
        ours.append(submit_to_completed(cluster))
    ours_median, bare_median = statistics.median(ours), statistics.median(bare)
    print(f"dispatch: {RUNS} runs each, interleaved")
    print(f"  bare docker run (docker-py)     median {ms(bare_median)}  min {ms(min(bare))}")
    print(f"  HakuRiver submit -> completed   median {ms(ours_median)}  min {ms(min(ours))}")
    print(f"  overhead                        median {ms(ours_median - bare_median)}"
          f"  (ratio {ours_median / bare_median:.2f}x; target < 50 ms)")  # fmt: skip


def docker_time(stamp: str) -> float:
    """A Docker log timestamp (RFC 3339, nanoseconds) as seconds since the epoch."""
    main, _, frac = stamp.rstrip("Z").partition(".")
    whole = datetime.fromisoformat(main + "+00:00").timestamp()
    return whole + float("0." + (frac or "0"))


def log_latency(cluster: ProcessCluster) -> None:
    script = (
        f"i=0; while [ $i -lt {LINES} ]; do echo line-$i; i=$((i+1)); usleep 100000; done; sleep 3"
    )
    task = cluster.submit(["sh", "-c", script])
    follower = subprocess.Popen(
        [sys.executable, "-m", "hakuriver_cli.task", "stdout", str(task.task_id), "--follow"],
        stdout=subprocess.PIPE,
        env={**os.environ, "HAKURIVER_CONFIG": str(cluster.config_path)},
    )
    assert follower.stdout is not None
    arrived: dict[str, float] = {}
    while len(arrived) < LINES:
        line = follower.stdout.readline()
        if not line:
            break
        arrived[line.decode().strip()] = time.time()
    [container] = cluster.docker.containers.list(
        filters={"label": f"hakuriver.task_id={task.task_id}"}
    )
    written: dict[str, float] = {}
    for raw in container.logs(stdout=True, stderr=False, timestamps=True).decode().splitlines():
        stamp, _, text = raw.partition(" ")
        written[text.strip()] = docker_time(stamp)
    follower.wait(30)
    delays = [arrived[k] - written[k] for k in arrived if k in written]
    delays.sort()
    print(f"live log latency: {len(delays)} lines, container write -> CLI --follow prints")
    print(f"  median {ms(statistics.median(delays))}  p90 {ms(delays[int(len(delays) * 0.9)])}"
          f"  max {ms(delays[-1])}  (target < 100 ms median)")  # fmt: skip


def main() -> None:
    with (
        tempfile.TemporaryDirectory() as tmp,
        running_cluster(Path(tmp), runner_count=1) as cluster,
    ):
        dispatch_overhead(cluster)
        log_latency(cluster)


if __name__ == "__main__":
    main()
