"""Tasks queued on a busy node: 100 x `true` (or ``sleep S`` with
``HAKURIVER_BENCH_QUEUED_SLEEP=S``: tasks that run a while, so what is prepared ahead has
time to be ready), 1 core each, on one Runner of this machine's
cores, against two threads running `docker run` through docker-py back to back (the most a
script could get out of the same daemon with two cores busy). Prints; asserts nothing.

Each round: the baseline, then the same tasks as one job array (one request) targeted at the
Runner, timed from the submit to the Host reporting the last one final. Rounds interleave so
both see the same machine; the ratio is baseline time / ours (above 1 means faster).
"""

from __future__ import annotations

import os
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import psutil

from hakuriver_common.proto.hakuriver.v1 import task_pb2, task_service_pb2 as tpb
from tests.e2e.harness import BASE_ENV, FINAL, ProcessCluster, running_cluster

IMAGE = f"hakuriver/{BASE_ENV}:base"
TASKS = int(os.environ.get("HAKURIVER_BENCH_QUEUED_TASKS", "100"))
SLEEP = os.environ.get("HAKURIVER_BENCH_QUEUED_SLEEP", "")
ARGV = ["sleep", SLEEP] if SLEEP else ["true"]
ROUNDS = int(os.environ.get("HAKURIVER_BENCH_QUEUED_ROUNDS", "3"))
THREADS = 2
TIMEOUT = 600.0


def baseline(cluster: ProcessCluster, count: int) -> float:
    """``count`` `docker run --rm IMAGE true` split over two threads, back to back."""
    errors: list[BaseException] = []

    def runs(n: int) -> None:
        try:
            for _ in range(n):
                cluster.docker.containers.run(IMAGE, ARGV, remove=True, network_mode="none")
        except BaseException as exc:  # reported after the join
            errors.append(exc)

    shares = [count // THREADS + (1 if i < count % THREADS else 0) for i in range(THREADS)]
    threads = [threading.Thread(target=runs, args=(n,)) for n in shares]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT)
    if errors:
        raise errors[0]
    return time.perf_counter() - start


class Finals:
    """Counts each batch's tasks reaching a final status, from one WatchTasks stream (the
    Host pushes changes; polling it would cost the Host more CPU than the tasks do)."""

    def __init__(self, cluster: ProcessCluster) -> None:
        self.cluster = cluster
        self.counts: dict[int, int] = {}
        self.failed: list[task_pb2.Task] = []
        self.changed = threading.Condition()
        # Submitted once the watch is in place: a task ending before it was never counted.
        self.stream = cluster.tasks.WatchTasks(tpb.WatchTasksRequest(send_watching=True))
        next(self.stream)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        try:
            for update in self.stream:
                task = update.task
                if task.status not in FINAL:
                    continue
                with self.changed:
                    if task.status != task_pb2.TASK_STATUS_COMPLETED:
                        self.failed.append(task)
                    self.counts[task.batch_id] = self.counts.get(task.batch_id, 0) + 1
                    self.changed.notify_all()
        except grpc.RpcError:
            return

    def wait(self, array_id: int, count: int, deadline: float) -> None:
        with self.changed:
            while self.counts.get(array_id, 0) < count:
                if self.failed:
                    raise RuntimeError(f"a task ended other than completed: {self.failed[0]}")
                left = deadline - time.perf_counter()
                if left <= 0:
                    raise TimeoutError(f"array {array_id} not done within {TIMEOUT:.0f} s")
                self.changed.wait(min(left, 1.0))

    def close(self) -> None:
        self.stream.cancel()


def ours(cluster: ProcessCluster, finals: Finals, count: int, hostname: str) -> float:
    """The same tasks as one array on the Runner, until the Host has them all final."""
    request = tpb.SubmitTaskRequest(
        command=ARGV[0],
        arguments=ARGV[1:],
        cores=1,
        network=task_pb2.TASK_NETWORK_NONE,
        targets=[task_pb2.Target(hostname=hostname)],
        array=tpb.TaskArray(indices=range(count)),
    )
    start = time.perf_counter()
    array_id = cluster.tasks.SubmitTask(request, timeout=30).batch_id
    finals.wait(array_id, count, start + TIMEOUT)
    return time.perf_counter() - start


def cpu_seconds(procs: list[psutil.Process]) -> float:
    total = 0.0
    for proc in procs:
        try:
            times = proc.cpu_times()
        except psutil.Error:
            continue
        total += times.user + times.system
    return total


def docker_processes() -> list[psutil.Process]:
    """The daemon's side of a container's life: dockerd, containerd and their shims."""
    names = ("dockerd", "containerd", "containerd-shim", "containerd-shim-runc-v2", "runc")
    return [p for p in psutil.process_iter(["name"]) if p.info["name"] in names]


@dataclass
class Result:
    tasks: int
    cores: int
    baseline_seconds: list[float] = field(default_factory=list)
    our_seconds: list[float] = field(default_factory=list)
    # CPU seconds used over all rounds: Host, Runner, docker (ours), docker (baseline).
    cpu: dict[str, float] = field(default_factory=dict)


def run(tasks: int, rounds: int) -> Result:
    result = Result(tasks, os.cpu_count() or 1)
    with (
        tempfile.TemporaryDirectory() as tmp,
        running_cluster(Path(tmp), runner_count=1) as cluster,
    ):
        hostname = cluster.runner_names[0]
        finals = Finals(cluster)
        ours(cluster, finals, THREADS, hostname)  # also shows the watch is in place
        baseline(cluster, THREADS)
        host = [psutil.Process(cluster.host.pid)]  # type: ignore[union-attr]
        runner = [psutil.Process(p.pid) for p in cluster.runners.values()]
        used = dict.fromkeys(("Host", "Runner", "docker (ours)", "docker (baseline)"), 0.0)
        for _ in range(rounds):
            before = cpu_seconds(docker_processes())
            result.baseline_seconds.append(baseline(cluster, tasks))
            used["docker (baseline)"] += cpu_seconds(docker_processes()) - before
            before_ours = [cpu_seconds(host), cpu_seconds(runner), cpu_seconds(docker_processes())]
            result.our_seconds.append(ours(cluster, finals, tasks, hostname))
            after = [cpu_seconds(host), cpu_seconds(runner), cpu_seconds(docker_processes())]
            for key, old, new in zip(
                ("Host", "Runner", "docker (ours)"), before_ours, after, strict=True
            ):
                used[key] += new - old
        finals.close()
    result.cpu = used
    return result


def report(result: Result) -> None:
    rounds, tasks = len(result.our_seconds), result.tasks
    bare, mine = statistics.median(result.baseline_seconds), statistics.median(result.our_seconds)
    print(f"queued start: {tasks} x `{' '.join(ARGV)}`, 1 core each, one Runner on "
          f"{result.cores} cores; {rounds} rounds, interleaved, medians")  # fmt: skip
    print(f"  {THREADS} docker-py threads, docker run --rm   {bare:6.2f} s  "
          f"({tasks / bare:5.1f} tasks/s)")  # fmt: skip
    print(f"  HakuRiver array, submit -> all final   {mine:6.2f} s  "
          f"({tasks / mine:5.1f} tasks/s)")  # fmt: skip
    each = zip(result.baseline_seconds, result.our_seconds, strict=True)
    ratios = ", ".join(f"{b / m:.2f}" for b, m in each)
    print(f"  ratio {bare / mine:.2f}x of the docker-py threads (goal >= 1.0x); rounds {ratios}")
    per_task = ", ".join(f"{k} {v / (rounds * tasks) * 1000:.1f}" for k, v in result.cpu.items())
    print(f"  CPU per task (ms): {per_task}")


if __name__ == "__main__":
    report(run(TASKS, ROUNDS))
