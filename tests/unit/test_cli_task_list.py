"""`hakuriver.task list` names each task's job array and index (Slurm's ARRAY_ID_INDEX)."""

from __future__ import annotations

import pytest

from hakuriver_cli.render import TASK_COLUMNS, print_task_detail, task_row
from hakuriver_common.proto.hakuriver.v1 import task_pb2


def test_a_listed_task_shows_its_array_and_index() -> None:
    column = TASK_COLUMNS.index("array[index]")
    element = task_pb2.Task(task_id=12, batch_id=10, array_index=0, command="job")
    assert task_row(element)[column] == "10[0]"  # index 0 is an index, not "none"
    plain = task_pb2.Task(task_id=13, batch_id=13, command="job")
    assert task_row(plain)[column] == "-"
    assert len(task_row(plain)) == len(TASK_COLUMNS)


def test_status_shows_how_many_gpus_a_task_asked_for(capsys: pytest.CaptureFixture[str]) -> None:
    print_task_detail(task_pb2.Task(task_id=14, command="train", gpu_count=2), [])
    [line] = [x for x in capsys.readouterr().out.splitlines() if x.startswith("gpu_count ")]
    assert line.split() == ["gpu_count", "2"]
