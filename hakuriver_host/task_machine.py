"""The task state machine: which status changes are allowed, and what a Runner's report means.

Pure: no I/O, no clock but the report's own times. ``transition`` guards every status change
in the Host; ``on_report`` turns a Runner's TaskStateReport into the new status, the fields
to store and the effects the coordinator must carry out. See docs/tasks.md for the diagram.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from hakuriver_common.proto.hakuriver.v1 import runner_service_pb2 as rpb
from hakuriver_common.statuses import FINAL_STATUSES, TaskStatus

# Statuses in which a task holds resources on a node.
PLACED_STATUSES = frozenset(
    {TaskStatus.ASSIGNING, TaskStatus.RUNNING, TaskStatus.PAUSED, TaskStatus.UNKNOWN}
)
KILLABLE = frozenset({TaskStatus.PENDING, *PLACED_STATUSES})
# Statuses that become UNKNOWN while their Runner is away. An assigning task stays
# assigning: it is dispatched again if its Runner returns without it.
GOES_UNKNOWN = frozenset({TaskStatus.RUNNING, TaskStatus.PAUSED})

_EXITS = frozenset({TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.KILLED_OOM})
_ENDS = frozenset({TaskStatus.KILLED, TaskStatus.LOST, *_EXITS})

ALLOWED: dict[TaskStatus, frozenset[TaskStatus]] = {
    TaskStatus.PENDING: frozenset({TaskStatus.ASSIGNING, TaskStatus.KILLED}),
    # A fast task can exit before its runner's "running" report is processed.
    TaskStatus.ASSIGNING: frozenset({TaskStatus.RUNNING, *_ENDS}),
    TaskStatus.RUNNING: frozenset({TaskStatus.PAUSED, TaskStatus.UNKNOWN, *_ENDS}),
    TaskStatus.PAUSED: frozenset({TaskStatus.RUNNING, TaskStatus.UNKNOWN, *_ENDS}),
    # Its Runner returned with it (running or paused, or it ended meanwhile), or not.
    TaskStatus.UNKNOWN: frozenset({TaskStatus.RUNNING, TaskStatus.PAUSED, *_ENDS}),
    **{final: frozenset() for final in FINAL_STATUSES},
}

_FINISHED_REPORTS = frozenset({rpb.RUNNER_TASK_STATE_EXITED, rpb.RUNNER_TASK_STATE_START_FAILED})


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


class Effect(enum.Enum):
    """What the coordinator must do besides storing the outcome."""

    # Tell the Runner the Host has the final state: it may remove the container.
    RELEASE = "release"
    # The task started: observe submit->running and dispatch latency.
    STARTED = "started"
    # Record the report's detail as an event without a status change.
    NOTE_DETAIL = "note_detail"


@dataclass(frozen=True)
class TaskFacts:
    """What the machine needs to know of a task to interpret a report about it."""

    status: TaskStatus
    kill_requested: bool = False
    # Who asked for the kill: its timeline entry names them ("" for a kill from before).
    killed_by: str = ""
    memory_bytes: int = 0
    ssh_port: int = 0
    # Why some of its output could not be stored ("" if all was): it cannot be completed.
    output_error: str = ""
    # When the Host took it (its clock): a start or an end a Runner reports before it is
    # no time of the Host's clock (the Runner's is behind).
    submitted_at: datetime | None = None


@dataclass(frozen=True)
class Outcome:
    """The result of a report: a new status (None: unchanged), its event detail, the task
    fields to store, and the effects to carry out."""

    status: TaskStatus | None = None
    detail: str = ""
    fields: Mapping[str, Any] = field(default_factory=dict)
    effects: frozenset[Effect] = frozenset()


def _time(
    facts: TaskFacts, report: rpb.TaskStateReport, name: Literal["started_at", "finished_at"]
) -> datetime | None:
    """A report's time; None when absent, outside what a datetime holds or before the task
    was submitted (a Runner's clock is not trusted to be sane: the Host then keeps its own
    time, where an end 40 days early had retention forget a task that just ended)."""
    if not report.HasField(name):
        return None
    try:
        at = getattr(report, name).ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError):
        return None
    submitted = facts.submitted_at
    if submitted is not None and at < submitted.replace(tzinfo=submitted.tzinfo or UTC):
        return None
    return at


def _running(facts: TaskFacts, report: rpb.TaskStateReport) -> Outcome:
    if facts.status is TaskStatus.UNKNOWN:
        port = {"ssh_port": report.ssh_port or facts.ssh_port}
        return Outcome(TaskStatus.RUNNING, "runner back: still running", port)
    if facts.status is TaskStatus.ASSIGNING:
        # A host process says how it was started (its limits); a container, nothing.
        ready = report.detail or "container started"
        if report.ssh_port:
            ready = f"sshd on port {report.ssh_port}"
        fields: dict[str, Any] = {"ssh_port": report.ssh_port or facts.ssh_port}
        started = _time(facts, report, "started_at")
        if started is not None:
            fields["started_at"] = started
        return Outcome(TaskStatus.RUNNING, ready, fields, frozenset({Effect.STARTED}))
    if facts.status is TaskStatus.PAUSED:  # asked, or resumed outside HakuRiver (the detail)
        return Outcome(TaskStatus.RUNNING, report.detail or "resumed")
    return Outcome()


def _exited(facts: TaskFacts, report: rpb.TaskStateReport) -> Outcome:
    exit_code = report.exit_code if report.HasField("exit_code") else None
    final = exit_status(exit_code, report.oom_killed, facts.kill_requested)
    error = report.error_message
    if final is TaskStatus.KILLED_OOM and not error:
        limit = f"memory limit of {facts.memory_bytes} bytes exceeded"
        # Docker's flag is the container's: a child killed while the task itself went on
        # (and exited 0) counts too, as in Slurm's OUT_OF_MEMORY.
        error = (
            f"a process of the task was killed by the kernel ({limit}); the task exited 0"
            if exit_code == 0
            else f"killed by the kernel: {limit}"
        )
    if final is TaskStatus.COMPLETED and facts.output_error:
        final = TaskStatus.FAILED
        error = f"exited 0, but its output could not all be stored: {facts.output_error}"
    elif facts.output_error:
        lost = f"its output could not all be stored: {facts.output_error}"
        error = f"{error}; {lost}" if error else lost
    fields: dict[str, Any] = {"exit_code": exit_code, "error_message": error}
    finished = _time(facts, report, "finished_at")
    if finished is not None:
        fields["completed_at"] = finished
    detail = f"exited with code {exit_code}"
    if final is TaskStatus.KILLED and facts.killed_by:
        detail = f"killed by {facts.killed_by}: {detail}"
    return Outcome(final, detail, fields)


def _interpret(facts: TaskFacts, report: rpb.TaskStateReport) -> Outcome:
    state = report.state
    if state == rpb.RUNNER_TASK_STATE_RUNNING:
        return _running(facts, report)
    if state == rpb.RUNNER_TASK_STATE_PREPARING and facts.status is TaskStatus.ASSIGNING:
        return Outcome(None, report.detail, effects=frozenset({Effect.NOTE_DETAIL}))
    if state == rpb.RUNNER_TASK_STATE_PAUSED and facts.status is TaskStatus.RUNNING:
        return Outcome(TaskStatus.PAUSED, report.detail or "paused")
    if state == rpb.RUNNER_TASK_STATE_PAUSED and facts.status is TaskStatus.UNKNOWN:
        return Outcome(TaskStatus.PAUSED, "runner back: still paused")
    if state == rpb.RUNNER_TASK_STATE_EXITED:
        return _exited(facts, report)
    if state == rpb.RUNNER_TASK_STATE_START_FAILED:
        return Outcome(
            TaskStatus.FAILED, "could not start", {"error_message": report.error_message}
        )
    return Outcome()


def on_report(facts: TaskFacts | None, report: rpb.TaskStateReport) -> Outcome:
    """What a Runner's report about a task means.

    ``facts`` is None when the task is not (or no longer) this Runner's active task: a
    report of its end is then only answered with a release, so the Runner cleans up.
    A report that would be an illegal transition (e.g. "running" after "exited") changes
    nothing.
    """
    finished = report.state in _FINISHED_REPORTS
    release = frozenset({Effect.RELEASE}) if finished else frozenset()
    if facts is None or facts.status in FINAL_STATUSES:
        return Outcome(effects=release)
    outcome = _interpret(facts, report)
    if outcome.status is not None and outcome.status not in ALLOWED[facts.status]:
        return Outcome(effects=release)
    return Outcome(outcome.status, outcome.detail, outcome.fields, outcome.effects | release)
