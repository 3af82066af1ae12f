"""Idle footprint of the Host and a Runner, before and after a thousand tasks.

design.md's target: each under 80 MB RSS and 1% of a core when idle, and flat, also after
1,000 tasks. A real Host and one Runner (with Docker): each is measured idle (RSS, CPU over
a window of heartbeats) once it has settled, the Host restarted on its database after its
first start (which migrated it and made the default environment), as most starts are; then
``tasks`` tasks (``true``, one job array, the default environment) run to their end, and
both are measured idle again, so what the tasks left behind shows as the difference. The
baseline is a bare Python interpreter started the same way, measured in the same run.
Asserts nothing.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from hakuriver_common.proto.hakuriver.v1 import task_pb2, task_service_pb2 as tpb
from tests.e2e.harness import (
    ProcessCluster,
    default_environment_made,
    own_default_environment,
    running_cluster,
    wait_for,
)

TASKS = int(os.environ.get("HAKURIVER_BENCH_FOOTPRINT_TASKS", "1000"))
WINDOW = float(os.environ.get("HAKURIVER_BENCH_IDLE_WINDOW", "30"))
SETTLE = float(os.environ.get("HAKURIVER_BENCH_IDLE_SETTLE", "10"))
FINAL = {task_pb2.TASK_STATUS_COMPLETED, task_pb2.TASK_STATUS_FAILED}


@dataclass
class Idle:
    """One process's idle figures: a fraction of a core and RSS bytes (with children)."""

    cpu: float
    rss: int


@dataclass
class Footprint:
    bare_rss: int
    before: dict[str, Idle] = field(default_factory=dict)
    after: dict[str, Idle] = field(default_factory=dict)
    tasks: int = 0
    completed: int = 0
    tasks_seconds: float = 0.0


def usage(procs: dict[str, psutil.Process], seconds: float) -> dict[str, Idle]:
    """Each process's share of a core over the same ``seconds``, and its RSS then."""
    families = {name: [p, *p.children(recursive=True)] for name, p in procs.items()}

    def cpu(family: list[psutil.Process]) -> float:
        return sum(sum(p.cpu_times()[:2]) for p in family)

    before = {name: cpu(family) for name, family in families.items()}
    time.sleep(seconds)
    return {
        name: Idle((cpu(family) - before[name]) / seconds, sum(p.memory_info().rss for p in family))
        for name, family in families.items()
    }


def bare_interpreter_rss() -> int:
    bare = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        time.sleep(1)
        return int(psutil.Process(bare.pid).memory_info().rss)
    finally:
        bare.kill()
        bare.wait()


def run_tasks(cluster: ProcessCluster, count: int, timeout: float) -> tuple[int, float]:
    """``count`` tasks of ``true`` as one job array, until all are final: how many
    completed, and the seconds it took."""
    request = tpb.SubmitTaskRequest(command="true", array=tpb.TaskArray(indices=range(count)))
    start = time.perf_counter()
    batch = cluster.tasks.SubmitTask(request, timeout=60).batch_id
    deadline = start + timeout
    while time.perf_counter() < deadline:
        summary = cluster.tasks.GetBatch(tpb.GetBatchRequest(batch_id=batch), timeout=30).batch
        counts = {c.status: c.count for c in summary.counts}
        if sum(counts.get(s, 0) for s in FINAL) == count:
            return counts.get(task_pb2.TASK_STATUS_COMPLETED, 0), time.perf_counter() - start
        time.sleep(1)
    raise TimeoutError(f"{count} tasks not all final within {timeout:g} s")


def run(tasks: int = TASKS, window: float = WINDOW, settle: float = SETTLE) -> Footprint:
    """The Host is measured as it usually runs: restarted on its database, its default
    environment made (at its first start, from the test image)."""
    result = Footprint(bare_interpreter_rss(), tasks=tasks)
    with (
        tempfile.TemporaryDirectory() as tmp,
        own_default_environment() as extra,
        running_cluster(
            Path(tmp), runner_count=1, heartbeat_interval=5, extra_config=extra
        ) as cluster,
    ):
        default_environment_made(cluster)
        cluster.kill_host(signal.SIGTERM)
        cluster.start_host()
        runner = cluster.runner_names[0]
        wait_for(lambda: cluster.node_online(runner), what=f"runner {runner} back online")
        assert cluster.host is not None
        procs = {
            "Host": psutil.Process(cluster.host.pid),
            "Runner": psutil.Process(cluster.runners[cluster.runner_names[0]].pid),
        }
        time.sleep(settle)
        result.before = usage(procs, window)
        result.completed, result.tasks_seconds = run_tasks(cluster, tasks, 60 + tasks)
        time.sleep(settle)
        result.after = usage(procs, window)
    return result


def report(result: Footprint, window: float = WINDOW) -> None:
    print(
        f"idle footprint over {window:g} s (heartbeat every 5 s), before and after "
        f"{result.tasks} tasks (target: < 80 MB RSS and < 1% of a core each, flat); "
        f"a bare Python interpreter: {result.bare_rss / 1e6:.0f} MB RSS"
    )
    for name, before in result.before.items():
        after = result.after[name]
        print(
            f"  {name:<6}  before: RSS {before.rss / 1e6:5.0f} MB, CPU {before.cpu:6.2%}   "
            f"after: RSS {after.rss / 1e6:5.0f} MB ({(after.rss - before.rss) / 1e6:+.0f}), "
            f"CPU {after.cpu:6.2%}"
        )
    print(
        f"  the {result.tasks} tasks: {result.completed} completed in {result.tasks_seconds:.0f} s"
    )


def main() -> None:
    report(run())


if __name__ == "__main__":
    main()
