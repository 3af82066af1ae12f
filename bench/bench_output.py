"""The output path at the speed a task writes: a container printing 50 MB as fast as it can
(`yes` with 60-character lines into `head -c`), on one Runner of this machine. Prints;
asserts nothing.

Each round, interleaved:
- the baseline: the same container run by docker-py, then its whole log read back through
  the Docker API in large blocks (one request, no follow): the rate at which the daemon
  hands out that output;
- ours: the same command as a task, timed from its container's start (``started_at``) to
  the Host holding its final status, its output stored; the output rate is the bytes
  stored over that time, and the delay is from the container's exit (``completed_at``, the
  daemon's own time) to the final status seen by a client polling every 20 ms.

Goals (issue 16): the output path at 0.5x the raw read or better, under 1 s from exit to
final.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from hakuriver_common.proto.hakuriver.v1 import task_pb2
from tests.e2e.harness import BASE_ENV, FINAL, ProcessCluster, running_cluster

IMAGE = f"hakuriver/{BASE_ENV}:base"
MEGABYTES = int(os.environ.get("HAKURIVER_BENCH_OUTPUT_MB", "50"))
ROUNDS = int(os.environ.get("HAKURIVER_BENCH_OUTPUT_ROUNDS", "3"))
TIMEOUT = 600.0
LINE = "0123456789" * 6
READ_BYTES = 1 << 20


def command(size: int) -> list[str]:
    return ["sh", "-c", f"yes {LINE} | head -c {size}"]


@dataclass
class Result:
    size: int
    raw_mb_s: list[float] = field(default_factory=list)
    ours_mb_s: list[float] = field(default_factory=list)
    exit_to_final: list[float] = field(default_factory=list)
    ran_seconds: list[float] = field(default_factory=list)


def raw_read(cluster: ProcessCluster, size: int) -> float:
    """MB/s of reading a finished container's whole log through the Docker API."""
    client = cluster.docker
    container = client.containers.run(IMAGE, command(size), detach=True, network_mode="none")
    try:
        container.wait(timeout=TIMEOUT)
        api = client.api
        start = time.perf_counter()
        response = api._get(
            api._url("/containers/{0}/logs", container.id),
            params={"stdout": 1, "stderr": 1, "follow": 0},
            stream=True,
        )
        api._raise_for_status(response)
        total = sum(len(block) for block in response.raw.stream(READ_BYTES, decode_content=False))
        seconds = time.perf_counter() - start
    finally:
        container.remove(force=True)
    if total < size:
        raise RuntimeError(f"the daemon handed out {total} bytes of {size}")
    return size / seconds / 1e6


def ours(cluster: ProcessCluster, size: int) -> tuple[float, float, float]:
    """(MB/s from the container's start to the final status, seconds from exit to final,
    seconds the container ran)."""
    task = cluster.submit(command(size), network=task_pb2.TASK_NETWORK_NONE)
    deadline = time.monotonic() + TIMEOUT
    while True:
        current = cluster.get(task.task_id)
        if current.status in FINAL:
            seen = time.time()
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"task {task.task_id} not final within {TIMEOUT:.0f} s")
        time.sleep(0.02)
    if current.status != task_pb2.TASK_STATUS_COMPLETED:
        raise RuntimeError(f"the task ended {current.status}: {current.error_message}")
    stored = Path(current.stdout_path).stat().st_size
    if stored != size:
        raise RuntimeError(f"{stored} bytes of output stored, not {size}")
    started = current.started_at.ToNanoseconds() / 1e9
    exited = current.completed_at.ToNanoseconds() / 1e9
    return size / (seen - started) / 1e6, seen - exited, exited - started


def run(megabytes: int, rounds: int) -> Result:
    size = megabytes * 1_000_000
    result = Result(size)
    with (
        tempfile.TemporaryDirectory() as tmp,
        running_cluster(Path(tmp), runner_count=1) as cluster,
    ):
        for _ in range(rounds):
            result.raw_mb_s.append(raw_read(cluster, size))
            rate, delay, ran = ours(cluster, size)
            result.ours_mb_s.append(rate)
            result.exit_to_final.append(delay)
            result.ran_seconds.append(ran)
    return result


def report(result: Result) -> None:
    raw, mine = statistics.median(result.raw_mb_s), statistics.median(result.ours_mb_s)
    each = ", ".join(f"{o / r:.2f}" for o, r in zip(result.ours_mb_s, result.raw_mb_s, strict=True))
    delays = ", ".join(f"{d:.2f}" for d in result.exit_to_final)
    print(f"output path: {result.size / 1e6:.0f} MB of 60-character lines, "
          f"{len(result.raw_mb_s)} rounds, interleaved, medians")  # fmt: skip
    print(f"  Docker API, whole log read back      {raw:8.1f} MB/s")
    print(f"  HakuRiver, container start -> final  {mine:8.1f} MB/s  "
          f"(container ran {statistics.median(result.ran_seconds):.2f} s)")  # fmt: skip
    print(f"  ratio {mine / raw:.2f}x of the raw read (goal >= 0.5x); rounds {each}")
    print(f"  exit -> final {statistics.median(result.exit_to_final):.2f} s (goal < 1 s); "
          f"rounds {delays}")  # fmt: skip


if __name__ == "__main__":
    report(run(MEGABYTES, ROUNDS))
