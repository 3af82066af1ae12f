"""Runner agent idle footprint: a real Host and Runner (with Docker), no tasks.

After the Runner registers and settles, its RSS and CPU are measured over a window of
heartbeats. The baseline is a bare Python interpreter started the same way, measured in the
same run. Target: < 80 MB RSS, < 1% CPU. Asserts nothing.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from tests.e2e.harness import running_cluster

WINDOW = float(os.environ.get("HAKURIVER_BENCH_IDLE_WINDOW", "30"))
SETTLE = 10.0


def usage(proc: psutil.Process, seconds: float) -> tuple[float, int]:
    """(fraction of a core, RSS bytes including children) over ``seconds``."""
    family = [proc, *proc.children(recursive=True)]
    before = sum(sum(p.cpu_times()[:2]) for p in family)
    time.sleep(seconds)
    after = sum(sum(p.cpu_times()[:2]) for p in family)
    return (after - before) / seconds, sum(p.memory_info().rss for p in family)


def main() -> None:
    bare = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    time.sleep(1)
    bare_rss = psutil.Process(bare.pid).memory_info().rss
    bare.kill()
    bare.wait()
    with (
        tempfile.TemporaryDirectory() as tmp,
        running_cluster(Path(tmp), runner_count=1, heartbeat_interval=5) as cluster,
    ):
        runner = psutil.Process(cluster.runners[cluster.runner_names[0]].pid)
        time.sleep(SETTLE)
        cpu, rss = usage(runner, WINDOW)
    print(f"runner idle footprint over {WINDOW:g} s (heartbeat every 5 s):")
    print(
        f"  RSS {rss / 1e6:.0f} MB (target < 80 MB); "
        f"bare Python interpreter {bare_rss / 1e6:.0f} MB"
    )
    print(f"  CPU {cpu:.2%} of a core (target < 1%)")


if __name__ == "__main__":
    main()
