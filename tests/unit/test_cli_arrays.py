"""What `hakuriver.task submit --array ... --wait` and `hakuriver.task wait` print of a job
array, driven in-process against a local Host."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from hakuriver_cli import direct, task
from hakuriver_common.arrays import ARRAY_INDEX_VAR
from hakuriver_common.proto.hakuriver.v1 import runner_service_pb2 as rpb, task_service_pb2 as tpb
from tests.fake_runner import Answer, exit_with
from tests.unit.cli_threads import exit_code
from tests.unit.local_cluster import LocalCluster


async def _submitted(local_cluster: LocalCluster, tmp_path: Path, *argv: str) -> int:
    """``hakuriver.task submit --wait ARGV -- job``'s exit code."""
    config = str(local_cluster.cli_config(tmp_path / "client.toml"))
    line = ["submit", "--config", config, "--wait", *argv, "--", "job"]
    return await asyncio.to_thread(exit_code, direct.run, task.app, "hakuriver.task", line)


@pytest.mark.parametrize(
    ("spec", "cap"), [("1-3%10", ""), ("1-3%3", ""), ("1-3%2", ", at most 2 at once")]
)
async def test_an_arrays_cap_is_told_only_when_it_holds_tasks_back(
    local_cluster: LocalCluster,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    spec: str,
    cap: str,
) -> None:
    """`--array 1-3%10` said `at most 10 at once` of 3 tasks: a cap that holds none back."""
    await local_cluster.add_runner("a")
    assert await _submitted(local_cluster, tmp_path, "--array", spec) == 0
    submitted, ended = capsys.readouterr().out.splitlines()
    array_id = submitted.split()[2].rstrip(":")
    assert submitted == f"submitted array {array_id}: 3 tasks{cap}"
    assert ended == f"array {array_id}: 3 tasks{cap}: 3 completed"


def _failing(*indices: int) -> Callable[[rpb.DispatchCommand], Answer]:
    """A Runner's answer: the array tasks of ``indices`` exit 1, the others 0."""
    return lambda d: exit_with(1 if int(d.env[ARRAY_INDEX_VAR]) in indices else 0)


async def test_submit_wait_names_the_indices_that_did_not_complete(
    local_cluster: LocalCluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """It printed only the counts (`8 completed, 2 failed`): not which to run again."""
    await local_cluster.add_runner("a", answer=_failing(3, 7))
    assert await _submitted(local_cluster, tmp_path, "--array", "0-9") == 1
    _, ended, which = capsys.readouterr().out.splitlines()
    assert ended.endswith(": 10 tasks: 8 completed, 2 failed")
    assert which == "not completed: indices 3, 7"


async def test_wait_names_the_last_20_that_did_not_complete_and_how_to_list_the_rest(
    local_cluster: LocalCluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    await local_cluster.add_runner("a", cores=64, answer=_failing(*range(0, 50, 2)))
    reply = await local_cluster.tasks.SubmitTask(
        tpb.SubmitTaskRequest(command="job", array=tpb.TaskArray(indices=range(50))), timeout=5
    )
    config = str(local_cluster.cli_config(tmp_path / "client.toml"))
    argv = ["wait", str(reply.batch_id), "--config", config]
    assert await asyncio.to_thread(exit_code, direct.run, task.app, "hakuriver.task", argv) == 1
    _, which = capsys.readouterr().out.splitlines()
    indices = ", ".join(str(i) for i in range(10, 50, 2))
    listing = f"hakuriver.task list --batch {reply.batch_id}"
    assert which == f"not completed: indices {indices} and 5 more ({listing})"

    json_argv = [*argv, "--json"]
    assert await asyncio.to_thread(exit_code, direct.run, task.app, "t", json_argv) == 1
    shown = json.loads(capsys.readouterr().out)
    assert shown["not_completed"] == list(range(10, 50, 2))
    assert shown["batch"]["batch_id"] == str(reply.batch_id)
