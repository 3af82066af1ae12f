"""What `hakuriver.task submit --array ... --wait` and `hakuriver.task wait` print of a job
array, driven in-process against a local Host."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from hakuriver_cli import direct, task
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
