"""The outcome of a fault: every task final within a bound, in a status it may have, run
once, its output byte-exact, and the cluster's resources released afterwards.

A scenario ends with ``settle(...)``; the ``Outcome`` it returns is one row of the table
``make chaos`` prints, with ``problems`` naming every broken guarantee (empty: all held).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import grpc

from hakuriver_common.proto.hakuriver.v1 import (
    log_service_pb2 as lpb,
    node_service_pb2 as npb,
    task_pb2,
    task_service_pb2 as tpb,
)
from hakuriver_common.statuses import FINAL_TASK_STATUSES
from tests.chaos.stream import StreamTask, runs_of
from tests.e2e.harness import ProcessCluster

STATUS_NAME: dict[int, str] = {
    int(v): k.removeprefix("TASK_STATUS_").lower() for k, v in task_pb2.TaskStatus.items()
}


@dataclass
class Outcome:
    fault: str
    tasks: int = 0
    completed: int = 0
    failed: int = 0
    lost: int = 0
    ran_twice: int = 0
    byte_exact: int = 0
    checked_output: int = 0
    released: bool = False
    duration: float = 0.0
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def row(self) -> list[str]:
        return [
            self.fault,
            str(self.tasks),
            str(self.completed),
            str(self.failed),
            str(self.lost),
            str(self.ran_twice),
            f"{self.byte_exact}/{self.checked_output}",
            "yes" if self.released else "NO",
            f"{self.duration:.1f}s",
        ]

    def report(self) -> str:
        lines = [f"{self.fault}: {'ok' if self.ok else 'BROKEN'}"]
        lines += [f"  problem: {p}" for p in self.problems]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


HEADERS = [
    "fault",
    "tasks",
    "completed",
    "failed",
    "lost",
    "ran twice",
    "byte-exact",
    "resources released",
    "duration",
]


def table(outcomes: list[Outcome]) -> str:
    rows = [HEADERS, *(o.row() for o in outcomes)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(HEADERS))]
    out = []
    for n, row in enumerate(rows):
        out.append(" | ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)))
        if n == 0:
            out.append("-+-".join("-" * w for w in widths))
    return "\n".join(out)


def events(cluster: ProcessCluster, task_id: int) -> list[int]:
    """The statuses a task went through, oldest first."""
    reply = cluster.tasks.GetTask(tpb.GetTaskRequest(task_id=task_id), timeout=10)
    return [e.status for e in reply.events]


def read_stdout(cluster: ProcessCluster, task_id: int) -> bytes:
    request = lpb.ReadLogRequest(task_id=task_id, stream=task_pb2.LOG_STREAM_STDOUT)
    return b"".join(chunk.data for chunk in cluster.logs.ReadLog(request, timeout=20))


def list_all_tasks(cluster: ProcessCluster) -> list[task_pb2.Task]:
    """Every task of the cluster (paged, bounded to 100 pages)."""
    found: list[task_pb2.Task] = []
    before = 0
    for _ in range(100):
        reply = cluster.tasks.ListTasks(
            tpb.ListTasksRequest(limit=100, before_task_id=before), timeout=10
        )
        found.extend(reply.tasks)
        if not reply.next_before_task_id:
            break
        before = reply.next_before_task_id
    return found


def wait_final(cluster: ProcessCluster, tasks: list[StreamTask], bound: float) -> list[str]:
    """Poll until every submitted task is final or ``bound`` seconds pass; returns the
    problems (tasks still not final, naming their status)."""
    deadline = time.monotonic() + bound
    pending = [t for t in tasks if t.task_id is not None]
    while pending and time.monotonic() < deadline:
        still = []
        for task in pending:
            assert task.task_id is not None
            try:
                current = cluster.get(task.task_id)
            except grpc.RpcError:
                still.append(task)
                continue
            if current.status in FINAL_TASK_STATUSES:
                task.final = current
            else:
                still.append(task)
        pending = still
        if pending:
            time.sleep(0.2)
    problems = []
    for task in pending:
        assert task.task_id is not None
        status = STATUS_NAME.get(cluster.get(task.task_id).status, "?")
        problems.append(f"task {task.task_id} stuck: still {status} after {bound:.0f}s")
    return problems


def resources_released(cluster: ProcessCluster, task_ids: list[int], bound: float) -> list[str]:
    """Within ``bound`` seconds every node's free cores and memory equal its totals, no task
    is active on it, and no container of these tasks is left."""
    deadline = time.monotonic() + bound
    problems: list[str] = []
    while True:
        problems = []
        for node in cluster.nodes.ListNodes(npb.ListNodesRequest(), timeout=10).nodes:
            if node.hostname not in cluster.runner_names:
                continue
            if (
                node.available_cores != node.total_cores
                or node.available_memory_bytes != node.total_memory_bytes
                or node.active_tasks
            ):
                problems.append(
                    f"node {node.hostname}: {node.available_cores}/{node.total_cores} cores, "
                    f"{node.available_memory_bytes}/{node.total_memory_bytes} bytes free, "
                    f"{node.active_tasks} active tasks"
                )
        wanted = {str(i) for i in task_ids}
        left = [
            c.labels.get("hakuriver.task_id")
            for c in cluster.docker.containers.list(
                all=True, ignore_removed=True, filters={"label": "hakuriver.task_id"}
            )
            if c.labels.get("hakuriver.task_id") in wanted
        ]
        if left:
            problems.append(f"containers left for finished tasks: {sorted(left)}")
        if not problems or time.monotonic() > deadline:
            return problems
        time.sleep(0.3)


def settle(
    cluster: ProcessCluster,
    outcome: Outcome,
    tasks: list[StreamTask],
    *,
    bound: float,
    release_bound: float = 15,
    started: float,
) -> Outcome:
    """Wait for every task, then check each guarantee; fills and returns ``outcome``."""
    outcome.problems.extend(wait_final(cluster, tasks, bound))
    answered = [t for t in tasks if t.task_id is not None]
    outcome.tasks = len(answered)
    for task in answered:
        assert task.task_id is not None
        final = task.final
        if final is None:
            continue
        name = STATUS_NAME.get(final.status, str(final.status))
        outcome.completed += final.status == task_pb2.TASK_STATUS_COMPLETED
        outcome.failed += final.status == task_pb2.TASK_STATUS_FAILED
        outcome.lost += final.status == task_pb2.TASK_STATUS_LOST
        if final.status not in task.allowed:
            allowed = ", ".join(sorted(STATUS_NAME[s] for s in task.allowed))
            outcome.problems.append(
                f"task {task.task_id} ended {name} (allowed: {allowed}; "
                f"exit {final.exit_code if final.HasField('exit_code') else '-'}, "
                f"error {final.error_message!r}){task.note and ' ' + task.note}"
            )
        elif final.status != task_pb2.TASK_STATUS_COMPLETED and not final.error_message:
            # Stream tasks exit 0 on their own: anything else is the fault's doing and must
            # say why.
            code = final.exit_code if final.HasField("exit_code") else "-"
            outcome.problems.append(
                f"task {task.task_id} ended {name} (exit {code}) with no error_message"
            )
        runs = runs_of(cluster, task)
        if len(runs) > 1:
            outcome.ran_twice += 1
            outcome.problems.append(f"task {task.task_id} ran {len(runs)} times ({runs})")
        if final.status == task_pb2.TASK_STATUS_COMPLETED and len(runs) != 1:
            outcome.problems.append(f"task {task.task_id} completed but ran {len(runs)} times")
        out = read_stdout(cluster, task.task_id)
        outcome.checked_output += 1
        exact = (
            out == task.expected
            if final.status == task_pb2.TASK_STATUS_COMPLETED
            else task.expected.startswith(out)
        )
        if exact:
            outcome.byte_exact += 1
        else:
            outcome.problems.append(_diff(task, out, name))
    ids = [t.task_id for t in answered if t.task_id is not None]
    released = resources_released(cluster, ids, release_bound)
    outcome.released = not released
    outcome.problems.extend(released)
    outcome.duration = time.monotonic() - started
    return outcome


def _diff(task: StreamTask, out: bytes, status: str) -> str:
    expected = task.expected
    at = next(
        (i for i, (a, b) in enumerate(zip(out, expected, strict=False)) if a != b),
        min(len(out), len(expected)),
    )
    line = expected[:at].count(b"\n") + 1
    return (
        f"task {task.task_id} ({status}) output not byte-exact: {len(out)} bytes stored, "
        f"{len(expected)} expected, first difference at byte {at} (line {line}): "
        f"stored {out[at : at + 40]!r} expected {expected[at : at + 40]!r}"
    )
