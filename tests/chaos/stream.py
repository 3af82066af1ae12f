"""A stream of verifiable tasks.

Each task has a key of its own. It appends its task id to ``/shared/chaos/KEY.runs`` when it
starts (``/shared`` is the cluster's ``shared_dir/shared_data``), so the test counts how
often it ran, then prints numbered lines with short sleeps, so its whole stdout is known in
advance and is compared byte for byte with what the Host stored.
"""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from hakuriver_common.proto.hakuriver.v1 import task_pb2
from tests.e2e.harness import ProcessCluster

COMPLETED = task_pb2.TASK_STATUS_COMPLETED
RUNS_DIR = "chaos"


@dataclass
class StreamTask:
    key: str
    argv: list[str]
    expected: bytes
    # None until the Host answered the submit (or forever, if it never did).
    task_id: int | None = None
    submit_error: str = ""
    submitted_at: float = 0.0
    # Final statuses this task may end in (scenarios widen it for tasks a fault hit).
    allowed: set[int] = field(default_factory=lambda: {COMPLETED})
    # A status other than completed must come with an error_message.
    final: task_pb2.Task | None = None
    note: str = ""


def numbered_task(lines: int, sleep: float, width: int = 0) -> StreamTask:
    """A task printing ``lines`` numbered lines, ``sleep`` seconds apart (``width`` pads
    each line to about that many bytes, for volume)."""
    key = "k" + uuid.uuid4().hex[:10]
    pad = "x" * max(0, width - len(key) - 14)
    usleep = int(sleep * 1_000_000)
    pause = f"usleep {usleep}; " if usleep else ""
    script = (
        f"mkdir -p /shared/{RUNS_DIR}; echo $HAKURIVER_TASK_ID >> /shared/{RUNS_DIR}/{key}.runs; "
        f"i=1; while [ $i -le {lines} ]; do "
        f'printf "%s %06d %s\\n" {key} $i "{pad}"; {pause}i=$((i+1)); done'
    )
    expected = b"".join(f"{key} {i:06d} {pad}\n".encode() for i in range(1, lines + 1))
    return StreamTask(key=key, argv=["sh", "-c", script], expected=expected)


def runs_of(cluster: ProcessCluster, task: StreamTask) -> list[str]:
    """The task ids that started this task's script (one per run)."""
    path = cluster.shared_dir / "shared_data" / RUNS_DIR / f"{task.key}.runs"
    return path.read_text().split() if path.exists() else []


class TaskStream:
    """Submits tasks to a cluster, now or spread over time in a background thread."""

    def __init__(
        self,
        cluster: ProcessCluster,
        lines: int,
        sleep: float,
        memory: str = "32M",
        submit_timeout: float = 10,
    ) -> None:
        self.cluster = cluster
        self.lines = lines
        self.sleep = sleep
        self.memory = memory
        self.submit_timeout = submit_timeout
        self.tasks: list[StreamTask] = []
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def submit(self, task: StreamTask | None = None) -> StreamTask:
        """Submit one task (a numbered one unless given); a failed submit is recorded."""
        task = task or numbered_task(self.lines, self.sleep)
        with self._lock:
            self.tasks.append(task)
        task.submitted_at = time.monotonic()
        try:
            task.task_id = self.cluster.submit(task.argv, cores=1, memory=self.memory).task_id
        except grpc.RpcError as exc:
            task.submit_error = f"{exc.code().name}: {exc.details()}"
        return task

    def submit_many(self, count: int) -> list[StreamTask]:
        return [self.submit() for _ in range(count)]

    def submit_in_background(self, count: int, every: float) -> threading.Thread:
        """Submit ``count`` tasks, one every ``every`` seconds, in a thread (bounded: it
        ends after ``count`` submits whatever they answer)."""

        def run() -> None:
            for _ in range(count):
                self.submit()
                time.sleep(every)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        self._threads.append(thread)
        return thread

    def join(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
            assert not thread.is_alive(), "the task stream's submitter did not finish"

    def answered(self) -> list[StreamTask]:
        return [t for t in self.tasks if t.task_id is not None]


def output_path(cluster: ProcessCluster, task_id: int) -> Path:
    return cluster.shared_dir / "task_outputs" / f"{task_id}.out"
