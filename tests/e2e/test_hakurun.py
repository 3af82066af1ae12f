"""hakurun: span expansion, sequential and parallel runs, exit codes, and use inside a task."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from hakuriver_cli.hakurun import SpanError, expand, expand_arg
from hakuriver_common.proto.hakuriver.v1 import task_pb2
from tests.e2e.harness import ProcessCluster

HAKURUN = [sys.executable, "-m", "hakuriver_cli.hakurun"]


def hakurun(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*HAKURUN, *args], capture_output=True, text=True, cwd=cwd, timeout=60)


@pytest.mark.parametrize(
    ("arg", "values"),
    [
        ("span:{1..4}", ["1", "2", "3", "4"]),
        ("span:{3..1}", ["3", "2", "1"]),
        ("span:{-1..1}", ["-1", "0", "1"]),
        ("span:{0..10..5}", ["0", "5", "10"]),
        ("span:[a,b, c]", ["a", "b", "c"]),
        ("span:[0.1]", ["0.1"]),
        ("plain", ["plain"]),
        ("--lr=span:[1,2]", ["--lr=span:[1,2]"]),
    ],
)
def test_span_values(arg: str, values: list[str]) -> None:
    assert expand_arg(arg) == values


@pytest.mark.parametrize(
    "arg", ["span:{1..}", "span:{1..5..0}", "span:{1..5..-1}", "span:[]", "span:[a,,b]", "span:x"]
)
def test_bad_spans_are_refused(arg: str) -> None:
    with pytest.raises(SpanError):
        expand_arg(arg)
    result = hakurun("echo", arg)
    assert result.returncode == 2 and arg in result.stderr and result.stdout == ""


def test_cartesian_product_rightmost_fastest() -> None:
    assert expand(["run", "span:{1..2}", "span:[x,y]"]) == [
        ["run", "1", "x"],
        ["run", "1", "y"],
        ["run", "2", "x"],
        ["run", "2", "y"],
    ]
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
