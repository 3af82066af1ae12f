"""The task state machine, exhaustively."""

from __future__ import annotations

import itertools

import pytest

from hakuriver_host.task_machine import (
    ALLOWED,
    FINAL_STATUSES,
    KILLABLE,
    IllegalTransition,
    TaskStatus,
    exit_status,
    transition,
)

S = TaskStatus
EXPECTED_EDGES = {
    (S.PENDING, S.ASSIGNING), (S.PENDING, S.KILLED), (S.PENDING, S.FAILED),
    (S.ASSIGNING, S.RUNNING), (S.ASSIGNING, S.KILLED), (S.ASSIGNING, S.LOST),
    (S.ASSIGNING, S.COMPLETED), (S.ASSIGNING, S.FAILED), (S.ASSIGNING, S.KILLED_OOM),
    (S.RUNNING, S.PAUSED), (S.RUNNING, S.KILLED), (S.RUNNING, S.LOST),
    (S.RUNNING, S.COMPLETED), (S.RUNNING, S.FAILED), (S.RUNNING, S.KILLED_OOM),
    (S.PAUSED, S.RUNNING), (S.PAUSED, S.KILLED), (S.PAUSED, S.LOST),
    (S.PAUSED, S.COMPLETED), (S.PAUSED, S.FAILED), (S.PAUSED, S.KILLED_OOM),
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
    assert {S.PENDING, S.ASSIGNING, S.RUNNING, S.PAUSED} == KILLABLE
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
