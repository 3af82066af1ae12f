"""The task state machine: every status change in the Host goes through ``transition``.

Pure: no I/O. See docs/tasks.md for the diagram.
"""

from __future__ import annotations

from enum import StrEnum


class TaskStatus(StrEnum):
    PENDING = "pending"
    ASSIGNING = "assigning"
    RUNNING = "running"
    PAUSED = "paused"
    COMPLETED = "completed"
    FAILED = "failed"
    KILLED = "killed"
    KILLED_OOM = "killed_oom"
    LOST = "lost"

    @property
    def is_final(self) -> bool:
        return self in FINAL_STATUSES


FINAL_STATUSES = frozenset(
    {
        TaskStatus.COMPLETED,
        TaskStatus.FAILED,
        TaskStatus.KILLED,
        TaskStatus.KILLED_OOM,
        TaskStatus.LOST,
    }
)

# Statuses in which a task holds resources on a node.
PLACED_STATUSES = frozenset({TaskStatus.ASSIGNING, TaskStatus.RUNNING, TaskStatus.PAUSED})

_EXITS = frozenset({TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.KILLED_OOM})

ALLOWED: dict[TaskStatus, frozenset[TaskStatus]] = {
    TaskStatus.PENDING: frozenset({TaskStatus.ASSIGNING, TaskStatus.KILLED, TaskStatus.FAILED}),
    # A fast task can exit before its runner's "running" report is processed.
    TaskStatus.ASSIGNING: frozenset(
        {TaskStatus.RUNNING, TaskStatus.KILLED, TaskStatus.LOST, *_EXITS}
    ),
    TaskStatus.RUNNING: frozenset({TaskStatus.PAUSED, TaskStatus.KILLED, TaskStatus.LOST, *_EXITS}),
    TaskStatus.PAUSED: frozenset({TaskStatus.RUNNING, TaskStatus.KILLED, TaskStatus.LOST, *_EXITS}),
    TaskStatus.COMPLETED: frozenset(),
    TaskStatus.FAILED: frozenset(),
    TaskStatus.KILLED: frozenset(),
    TaskStatus.KILLED_OOM: frozenset(),
    TaskStatus.LOST: frozenset(),
}

KILLABLE = frozenset(
    {TaskStatus.PENDING, TaskStatus.ASSIGNING, TaskStatus.RUNNING, TaskStatus.PAUSED}
)


class IllegalTransition(Exception):
    """A status change the state machine does not allow."""

    def __init__(self, current: TaskStatus, wanted: TaskStatus) -> None:
        super().__init__(f"task cannot go from {current} to {wanted}")
        self.current = current
        self.wanted = wanted


def transition(current: TaskStatus, wanted: TaskStatus) -> TaskStatus:
    """Return ``wanted`` if the machine allows it from ``current``, else raise."""
    if wanted not in ALLOWED[current]:
        raise IllegalTransition(current, wanted)
    return wanted


def exit_status(exit_code: int | None, oom_killed: bool, kill_requested: bool) -> TaskStatus:
    """Final status of a task whose container exited."""
    if kill_requested:
        return TaskStatus.KILLED
    if oom_killed:
        return TaskStatus.KILLED_OOM
    return TaskStatus.COMPLETED if exit_code == 0 else TaskStatus.FAILED
