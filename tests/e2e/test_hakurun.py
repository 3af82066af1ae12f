"""hakurun run as a user would: refusals, dry runs, sequential and parallel runs, exit codes,
use inside a task, and a sweep submitted as one job array (--array) with each combination's
output checked (span expansion itself: tests/unit/test_hakurun.py)."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from hakuriver_cli.hakurun import array_script, expand
from hakuriver_common.proto.hakuriver.v1 import task_pb2, task_service_pb2 as tpb
from tests.e2e.harness import ProcessCluster
from tests.unit.test_hakurun import BAD_SPANS

HAKURUN = [sys.executable, "-m", "hakuriver_cli.hakurun"]


def hakurun(
    *args: str, cwd: Path | None = None, config: Path | None = None
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HAKURIVER_CONFIG": str(config)} if config else None
    return subprocess.run(
        [*HAKURUN, *args], capture_output=True, text=True, cwd=cwd, timeout=60, env=env
    )


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


def test_a_run_killed_by_a_signal_is_named_and_exits_as_a_shell_would() -> None:
    """128+N, as the shell (and a task's exit code) says; it said `exit -9` and exited 1."""
    result = hakurun("sh", "-c", 'kill -9 "$$"', "span:[a,b]")
    assert result.returncode == 137
    assert "hakurun: sh -c 'kill -9 \"$$\"' a: killed by SIGKILL" in result.stderr.splitlines()
    assert "2 of 2 failed" in result.stderr


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


# ----- --array: the sweep as one job array -------------------------------------------------

PRINT_ARGV = [sys.executable, "-c", "import json, sys; print(json.dumps(sys.argv[1:]))"]
SUBMITTED = re.compile(r"^submitted array (\d+): (\d+) tasks(, at most \d+ at once)?$")


def test_array_script_runs_each_combination_with_its_values_untouched(tmp_path: Path) -> None:
    # What each array task runs, run here with sh for every index: exactly expand()'s
    # command line, nothing in a value expanded by the shell, nothing run from a newline.
    words = [
        *PRINT_ARGV,
        "x\ntouch pwned",
        "span:[a b,it's,$HOME,`touch pwned`,*,-n]",
        "--seed",
        "span:{3..1}",
        "$(touch pwned)",
        "span:{-4..5..4}",  # computed by sh: -4, 0, 4
        "span:{2147483646..2147483648}",  # past what sh computes for sure: listed
    ]
    script = array_script(words)
    combinations = expand(words)
    assert len(combinations) == 162
    for index, expected in enumerate(combinations):
        ran = subprocess.run(
            ["sh", "-c", script, "hakurun"],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            timeout=30,
            env={**os.environ, "HAKURIVER_ARRAY_INDEX": str(index)},
        )
        assert ran.returncode == 0, ran.stderr
        assert json.loads(ran.stdout) == expected[len(PRINT_ARGV) :], index
    assert not (tmp_path / "pwned").exists()


def test_array_dry_run_numbers_the_combinations() -> None:
    dry = hakurun("--array", "--dry-run", "train", "span:[a,b]", "--seed", "span:{1..2}")
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.splitlines() == [
        "0: train a --seed 1",
        "1: train a --seed 2",
        "2: train b --seed 1",
        "3: train b --seed 2",
    ]


# Within 1 GiB of address space, set by sh rather than a preexec_fn: forking this process
# (which has gRPC loaded) runs gRPC's fork handlers in the child, and they may write to its
# stderr before the exec.
SMALL_MEMORY = ["sh", "-c", 'ulimit -v 1048576 && exec "$@"', "sh"]


@pytest.mark.parametrize("dry_run", [[], ["--dry-run"]])
def test_an_array_of_a_huge_span_is_refused_without_building_it(dry_run: list[str]) -> None:
    # Within 1 GiB of memory: its combinations were once all made before being counted.
    result = subprocess.run(
        [*SMALL_MEMORY, *HAKURUN, "--array", *dry_run, "echo", "span:{1..100000000000000000000}"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "HAKURIVER_CONFIG": "/nonexistent/config.toml"},
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr == (
        "hakurun: over 10^18 combinations; a job array takes at most 100,000\n"
    )
    assert result.stdout == ""


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--max-running", "2"], "--max-running takes a positive number up to 2,147,483,647"),
        (["--array", "--max-running", "-1"], "--max-running takes a positive number"),
        (["--array", "--max-running", "0"], "--max-running takes a positive number"),
        # Was refused only by the submission, as a cap in an --array spec never typed.
        (["--array", "--max-running", "2147483648"], "--max-running takes a positive number"),
        (["--parallel", "--jobs", "0"], "--jobs must be positive"),
        # Was ignored: the combinations ran one after another.
        (["--jobs", "4"], "--jobs applies only with --parallel"),
        (["--array", "--jobs", "4"], "an --array caps its tasks with --max-running"),
        (["--cores", "2"], "--cores applies only with --array"),
        (["--wait"], "--wait applies only with --array"),
        (["--array", "--parallel"], "--parallel runs combinations here"),
        (["--array"], "span:x: use span:"),
    ],
)
def test_array_options_that_do_not_fit_are_refused(args: list[str], says: str) -> None:
    result = hakurun(*args, "echo", "span:x" if says.startswith("span:x") else "span:[a,b]")
    assert result.returncode == 2 and says in result.stderr, result.stderr
    assert result.stdout == ""


def _array_of(result: subprocess.CompletedProcess[str]) -> tuple[int, list[str]]:
    """The array's id from hakurun --array's output, and the output's lines."""
    lines = result.stdout.splitlines()
    found = SUBMITTED.match(lines[0]) if lines else None
    assert found, result.stdout + result.stderr
    return int(found[1]), lines


def _outputs(cluster: ProcessCluster, array_id: int) -> dict[int, str]:
    """Each array index's standard output."""
    listed = cluster.tasks.ListTasks(tpb.ListTasksRequest(batch_id=array_id), timeout=10)
    return {t.array_index: cluster.read_log(t.task_id).decode() for t in listed.tasks}


def test_a_sweep_runs_as_one_job_array(cluster: ProcessCluster) -> None:
    sweep = ["echo", "lr", "span:[0.1,0.01]", "seed", "span:{1..3}", "of $HAKURIVER_ARRAY_ID"]
    dry = hakurun("--array", "--dry-run", *sweep)
    result = hakurun(
        "--array", "--max-running", "2", "--wait", "--cores", "1", "--env", "SWEEP=yes",
        "--", *sweep, config=cluster.config_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    array_id, lines = _array_of(result)
    assert lines == [
        f"submitted array {array_id}: 6 tasks, at most 2 at once",
        f"array {array_id}: 6 tasks, at most 2 at once: 6 completed",
    ]
    # Index i ran the i-th combination of --dry-run (the Host filled in the array's id).
    expected: dict[int, str] = {}
    for line in dry.stdout.splitlines():
        index, command = line.split(": ", 1)
        echoed = " ".join(shlex.split(command)[1:]).replace("$HAKURIVER_ARRAY_ID", str(array_id))
        expected[int(index)] = echoed + "\n"
    assert _outputs(cluster, array_id) == expected
    assert expected[4] == f"lr 0.01 seed 2 of {array_id}\n"
    shown = subprocess.run(
        [*ProcessCluster.cli_argv("task"), "stdout", f"{array_id}_4"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "HAKURIVER_CONFIG": str(cluster.config_path)},
    )
    assert shown.stdout == expected[4], shown.stderr
    # The submit options went with it; the command is named in the task list.
    task = cluster.tasks.ListTasks(tpb.ListTasksRequest(batch_id=array_id, limit=1)).tasks[0]
    assert (task.required_cores, task.env["SWEEP"], task.array_max_running) == (1, "yes", 2)
    assert task.command == "sh" and task.arguments[1].startswith("# hakurun sweep: echo lr ")


def test_an_array_sweep_with_a_failing_combination_exits_1(cluster: ProcessCluster) -> None:
    result = hakurun(
        "--array", "--wait", "--json", "sh", "-c", 'echo "$0"; test "$0" != b', "span:[a,b,c]",
        config=cluster.config_path,
    )  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr
    shown = json.loads(result.stdout)
    assert shown["created"] == 3
    assert shown["batch"]["counts"] == [
        {"status": "completed", "count": 2},
        {"status": "failed", "count": 1},
    ]
    array_id = int(shown["batch_id"])
    assert _outputs(cluster, array_id) == {0: "a\n", 1: "b\n", 2: "c\n"}
    failed = cluster.tasks.ListTasks(
        tpb.ListTasksRequest(batch_id=array_id, statuses=[task_pb2.TASK_STATUS_FAILED])
    ).tasks
    assert [(t.array_index, t.exit_code) for t in failed] == [(1, 1)]
