"""hakurun run as a user would: refusals, dry runs, sequential and parallel runs, exit codes,
and use inside a task (span expansion itself: tests/unit/test_hakurun.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from hakuriver_common.proto.hakuriver.v1 import task_pb2
from tests.e2e.harness import ProcessCluster
from tests.unit.test_hakurun import BAD_SPANS

HAKURUN = [sys.executable, "-m", "hakuriver_cli.hakurun"]


def hakurun(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*HAKURUN, *args], capture_output=True, text=True, cwd=cwd, timeout=60)


@pytest.mark.parametrize("arg", BAD_SPANS)
def test_bad_spans_are_refused_by_the_cli(arg: str) -> None:
    result = hakurun("echo", arg)
    assert result.returncode == 2 and arg in result.stderr and result.stdout == ""


def test_dry_run_prints_the_product_rightmost_fastest() -> None:
    dry = hakurun("--dry-run", "python", "train.py", "--seed", "span:{1..2}", "span:[a b,c]")
    assert dry.stdout.splitlines() == [
        "python train.py --seed 1 'a b'",
        "python train.py --seed 1 c",
        "python train.py --seed 2 'a b'",
        "python train.py --seed 2 c",
    ]


def test_sequential_runs_in_order_and_reports_the_first_failure(tmp_path: Path) -> None:
    log = tmp_path / "log"
    script = f'echo "$0" >> {log}; [ "$0" != 2 ] || exit 3; [ "$0" != 3 ] || exit 4'
    result = hakurun("sh", "-c", script, "span:{1..4}")
    assert log.read_text().split() == ["1", "2", "3", "4"], "every combination runs"
    assert result.returncode == 3
    assert "2 of 4 failed" in result.stderr and "[4/4]" in result.stderr


def test_parallel_runs_concurrently(tmp_path: Path) -> None:
    # A barrier: each run marks itself, then waits (bounded) until all three are marked.
    # Run one at a time, the first would give up and fail.
    barrier = (
        'touch "$0"; i=0; while [ "$(ls | wc -l)" -lt 3 ] && [ $i -lt 200 ]; '
        'do sleep 0.05; i=$((i+1)); done; [ "$(ls | wc -l)" -ge 3 ]'
    )
    together = hakurun(
        "--parallel", "--jobs", "3", "sh", "-c", barrier, "span:[a,b,c]", cwd=tmp_path
    )
    assert together.returncode == 0, together.stderr
    for marker in tmp_path.iterdir():
        marker.unlink()
    one_at_a_time = hakurun("sh", "-c", barrier.replace("200", "4"), "span:[a,b,c]", cwd=tmp_path)
    assert one_at_a_time.returncode != 0


def test_missing_program_is_127() -> None:
    result = hakurun("/nonexistent/tool", "span:{1..2}")
    assert result.returncode == 127 and "2 of 2 failed" in result.stderr


def test_hakurun_inside_a_task(cluster: ProcessCluster) -> None:
    task = cluster.submit(
        [*HAKURUN, "echo", "lr", "span:[0.1,0.01]", "seed", "span:{1..2}"],
        container_name="NULL",
    )
    assert cluster.wait_final(task.task_id).status == task_pb2.TASK_STATUS_COMPLETED
    assert cluster.read_log(task.task_id).decode().splitlines() == [
        "lr 0.1 seed 1",
        "lr 0.1 seed 2",
        "lr 0.01 seed 1",
        "lr 0.01 seed 2",
    ]
