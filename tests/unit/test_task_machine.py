"""The task state machine, exhaustively: its edges, and what every Runner report means."""

from __future__ import annotations

import itertools

import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import given, strategies as st

from hakuriver_common.proto.hakuriver.v1 import runner_service_pb2 as rpb
from hakuriver_common.statuses import FINAL_STATUSES, TaskStatus
from hakuriver_host.task_machine import (
    ALLOWED,
    KILLABLE,
    Effect,
    IllegalTransition,
    TaskFacts,
    exit_status,
    on_report,
    transition,
)

S = TaskStatus
EXPECTED_EDGES = {
    (S.PENDING, S.ASSIGNING), (S.PENDING, S.KILLED),
    (S.ASSIGNING, S.RUNNING), (S.ASSIGNING, S.KILLED), (S.ASSIGNING, S.LOST),
    (S.ASSIGNING, S.COMPLETED), (S.ASSIGNING, S.FAILED), (S.ASSIGNING, S.KILLED_OOM),
    (S.RUNNING, S.PAUSED), (S.RUNNING, S.KILLED), (S.RUNNING, S.LOST),
    (S.RUNNING, S.COMPLETED), (S.RUNNING, S.FAILED), (S.RUNNING, S.KILLED_OOM),
    (S.PAUSED, S.RUNNING), (S.PAUSED, S.KILLED), (S.PAUSED, S.LOST),
    (S.PAUSED, S.COMPLETED), (S.PAUSED, S.FAILED), (S.PAUSED, S.KILLED_OOM),
    (S.RUNNING, S.UNKNOWN), (S.PAUSED, S.UNKNOWN),
    (S.UNKNOWN, S.RUNNING), (S.UNKNOWN, S.PAUSED), (S.UNKNOWN, S.KILLED), (S.UNKNOWN, S.LOST),
    (S.UNKNOWN, S.COMPLETED), (S.UNKNOWN, S.FAILED), (S.UNKNOWN, S.KILLED_OOM),
}  # fmt: skip


@pytest.mark.parametrize(("current", "wanted"), list(itertools.product(S, S)))
def test_every_pair_is_allowed_exactly_when_listed(current: S, wanted: S) -> None:
    if (current, wanted) in EXPECTED_EDGES:
        assert transition(current, wanted) is wanted
    else:
        with pytest.raises(IllegalTransition):
            transition(current, wanted)


def test_final_statuses_have_no_way_out() -> None:
    assert {s for s in S if not ALLOWED[s]} == FINAL_STATUSES
    assert {S.COMPLETED, S.FAILED, S.KILLED, S.KILLED_OOM, S.LOST} == FINAL_STATUSES


def test_kill_applies_to_active_statuses_only() -> None:
    assert {S.PENDING, S.ASSIGNING, S.RUNNING, S.PAUSED, S.UNKNOWN} == KILLABLE
    for status in KILLABLE:
        assert S.KILLED in ALLOWED[status]


@pytest.mark.parametrize(
    ("exit_code", "oom", "kill", "expected"),
    [
        (0, False, False, S.COMPLETED),
        (1, False, False, S.FAILED),
        (None, False, False, S.FAILED),
        (137, True, False, S.KILLED_OOM),
        (137, False, True, S.KILLED),
        (0, False, True, S.KILLED),
        (137, True, True, S.KILLED),
    ],
)
def test_exit_status(exit_code: int | None, oom: bool, kill: bool, expected: S) -> None:
    assert exit_status(exit_code, oom, kill) is expected


R = rpb.TaskStateReport
STATES = [
    rpb.RUNNER_TASK_STATE_RUNNING,
    rpb.RUNNER_TASK_STATE_PAUSED,
    rpb.RUNNER_TASK_STATE_EXITED,
    rpb.RUNNER_TASK_STATE_START_FAILED,
    rpb.RUNNER_TASK_STATE_PREPARING,
    rpb.RUNNER_TASK_STATE_UNSPECIFIED,
]
FINISHED = {rpb.RUNNER_TASK_STATE_EXITED, rpb.RUNNER_TASK_STATE_START_FAILED}


def _stamp(seconds: int) -> Timestamp:
    return Timestamp(seconds=seconds)


@pytest.mark.parametrize(
    ("status", "report", "new", "detail", "effects"),
    [
        (S.ASSIGNING, R(state=rpb.RUNNER_TASK_STATE_RUNNING), S.RUNNING, "container started",
         {Effect.STARTED}),
        (S.ASSIGNING, R(state=rpb.RUNNER_TASK_STATE_RUNNING, ssh_port=2222), S.RUNNING,
         "sshd on port 2222", {Effect.STARTED}),
        (S.PAUSED, R(state=rpb.RUNNER_TASK_STATE_RUNNING), S.RUNNING, "resumed", set()),
        (S.RUNNING, R(state=rpb.RUNNER_TASK_STATE_RUNNING), None, "", set()),
        (S.RUNNING, R(state=rpb.RUNNER_TASK_STATE_PAUSED), S.PAUSED, "paused", set()),
        (S.PAUSED, R(state=rpb.RUNNER_TASK_STATE_PAUSED), None, "", set()),
        (S.RUNNING, R(state=rpb.RUNNER_TASK_STATE_PAUSED, detail="paused outside HakuRiver"),
         S.PAUSED, "paused outside HakuRiver", set()),
        (S.PAUSED, R(state=rpb.RUNNER_TASK_STATE_RUNNING, detail="resumed outside HakuRiver"),
         S.RUNNING, "resumed outside HakuRiver", set()),
        (S.ASSIGNING, R(state=rpb.RUNNER_TASK_STATE_PREPARING, detail="loading env"), None,
         "loading env", {Effect.NOTE_DETAIL}),
        (S.RUNNING, R(state=rpb.RUNNER_TASK_STATE_PREPARING, detail="late"), None, "", set()),
        (S.RUNNING, R(state=rpb.RUNNER_TASK_STATE_EXITED, exit_code=0), S.COMPLETED,
         "exited with code 0", {Effect.RELEASE}),
        (S.ASSIGNING, R(state=rpb.RUNNER_TASK_STATE_EXITED, exit_code=3), S.FAILED,
         "exited with code 3", {Effect.RELEASE}),
        (S.PAUSED, R(state=rpb.RUNNER_TASK_STATE_EXITED, exit_code=137, oom_killed=True),
         S.KILLED_OOM, "exited with code 137", {Effect.RELEASE}),
        (S.RUNNING, R(state=rpb.RUNNER_TASK_STATE_EXITED), S.FAILED, "exited with code None",
         {Effect.RELEASE}),
        (S.ASSIGNING, R(state=rpb.RUNNER_TASK_STATE_START_FAILED, error_message="no image"),
         S.FAILED, "could not start", {Effect.RELEASE}),
        (S.RUNNING, R(state=rpb.RUNNER_TASK_STATE_UNSPECIFIED), None, "", set()),
        (S.UNKNOWN, R(state=rpb.RUNNER_TASK_STATE_RUNNING), S.RUNNING,
         "runner back: still running", set()),
        (S.UNKNOWN, R(state=rpb.RUNNER_TASK_STATE_PAUSED), S.PAUSED,
         "runner back: still paused", set()),
        (S.UNKNOWN, R(state=rpb.RUNNER_TASK_STATE_EXITED, exit_code=0), S.COMPLETED,
         "exited with code 0", {Effect.RELEASE}),
    ],
)  # fmt: skip
def test_each_report_means_one_outcome(
    status: S, report: rpb.TaskStateReport, new: S | None, detail: str, effects: set[Effect]
) -> None:
    outcome = on_report(TaskFacts(status, memory_bytes=10**9), report)
    assert outcome.status is new
    assert outcome.detail == detail
    assert outcome.effects == effects


def test_exit_report_carries_its_fields() -> None:
    report = R(state=rpb.RUNNER_TASK_STATE_EXITED, exit_code=137, oom_killed=True,
               finished_at=_stamp(1_800_000_000))  # fmt: skip
    fields = on_report(TaskFacts(S.RUNNING, memory_bytes=512), report).fields
    assert fields["exit_code"] == 137
    assert fields["error_message"] == "killed by the kernel: memory limit of 512 bytes exceeded"
    assert fields["completed_at"].timestamp() == 1_800_000_000
    killed = on_report(TaskFacts(S.RUNNING, kill_requested=True), report)
    assert killed.status is S.KILLED


def test_a_task_that_exited_0_after_a_process_of_it_was_killed_for_memory_says_so() -> None:
    """Docker's out-of-memory flag is the container's: the task's own process may have
    lived on. Still killed_oom (as Slurm's OUT_OF_MEMORY), but not "killed" itself."""
    report = R(state=rpb.RUNNER_TASK_STATE_EXITED, exit_code=0, oom_killed=True)
    outcome = on_report(TaskFacts(S.RUNNING, memory_bytes=512), report)
    assert outcome.status is S.KILLED_OOM
    assert outcome.fields["error_message"] == (
        "a process of the task was killed by the kernel (memory limit of 512 bytes exceeded); "
        "the task exited 0"
    )


@pytest.mark.parametrize(
    ("exit_code", "oom", "kill", "status", "error"),
    [
        (0, False, False, S.FAILED, "exited 0, but its output could not all be stored: full"),
        (3, False, False, S.FAILED, "its output could not all be stored: full"),
        (137, False, True, S.KILLED, "its output could not all be stored: full"),
        (137, True, False, S.KILLED_OOM, "killed by the kernel: memory limit of 512 bytes "
         "exceeded; its output could not all be stored: full"),
    ],
)  # fmt: skip
def test_a_task_that_lost_output_says_so_whatever_its_end(
    exit_code: int, oom: bool, kill: bool, status: S, error: str
) -> None:
    report = R(state=rpb.RUNNER_TASK_STATE_EXITED, exit_code=exit_code, oom_killed=oom)
    facts = TaskFacts(S.RUNNING, kill_requested=kill, memory_bytes=512, output_error="full")
    outcome = on_report(facts, report)
    assert outcome.status is status
    assert outcome.fields["error_message"] == error


def test_running_report_keeps_start_time_and_port() -> None:
    report = R(state=rpb.RUNNER_TASK_STATE_RUNNING, started_at=_stamp(1_700_000_000))
    fields = on_report(TaskFacts(S.ASSIGNING, ssh_port=2200), report).fields
    assert fields["started_at"].timestamp() == 1_700_000_000
    assert fields["ssh_port"] == 2200


@pytest.mark.parametrize("state", STATES)
def test_reports_about_tasks_not_active_here_only_release(state: int) -> None:
    for facts in (None, *(TaskFacts(s) for s in FINAL_STATUSES)):
        outcome = on_report(facts, R(task_id=1, state=state))  # type: ignore[arg-type]
        assert outcome.status is None
        assert outcome.effects == ({Effect.RELEASE} if state in FINISHED else set())


reports = st.builds(
    R,
    state=st.sampled_from(STATES),
    exit_code=st.one_of(st.none(), st.integers(-1, 255)),
    oom_killed=st.booleans(),
    ssh_port=st.integers(0, 65535),
)


@given(
    start=st.sampled_from(list(S)),
    kill_requested=st.booleans(),
    sequence=st.lists(reports, max_size=12),
)
def test_any_report_sequence_follows_the_machine(
    start: S, kill_requested: bool, sequence: list[rpb.TaskStateReport]
) -> None:
    """Whatever a Runner sends, in any order: only allowed edges are taken, a final status
    is never left, every end report is answered with a release, and a task the Host asked
    to kill ends as killed."""
    status = start
    for report in sequence:
        outcome = on_report(TaskFacts(status, kill_requested=kill_requested), report)
        if report.state in FINISHED:
            assert Effect.RELEASE in outcome.effects
        if outcome.status is None:
            continue
        assert outcome.status in ALLOWED[status]
        assert status not in FINAL_STATUSES
        if kill_requested and outcome.status in FINAL_STATUSES:
            assert outcome.status in (S.KILLED, S.FAILED)
        status = outcome.status
