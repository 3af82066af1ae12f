"""Job arrays through the command line, against a real Host and Runners with real containers.

``hakuriver.task submit --array``: the one-line summary and the exit code of ``--wait``, each
task's index in its environment and in its arguments and mount paths (no shell needed), the
``%N`` cap holding with containers that take time, ``ARRAY_ID_INDEX`` wherever a task id is
taken, killing, pausing and resuming a whole array or one element, the ``--json`` shapes, a
malformed spec refused before anything is sent, and another user's array answering exactly
as a missing one. The API-level behaviour (fake Runners): tests/unit/test_arrays.py.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from datetime import datetime
from pathlib import Path
from typing import Any

import grpc
import pytest

from hakuriver_common.proto.hakuriver.v1 import task_service_pb2 as tpb
from hakuriver_common.statuses import TaskStatus
from tests.e2e.harness import ProcessCluster, wait_for

pytestmark = pytest.mark.docker

PROTO_WORDS = re.compile(r"TASK_STATUS_|TASK_KIND_|NODE_STATUS_")
SUBMITTED = re.compile(r"^submitted array (\d+): (\d+) tasks(, at most (\d+) at once)?$")
# Statuses in which a task holds resources: what an array's cap counts.
HOLDING = {"assigning", "running", "paused", "unknown"}
LOOP = "while true; do echo tick; sleep 0.1; done"  # output as long as it runs


def cli(
    cluster: ProcessCluster, tool: str, *args: str, token: str = "", timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """A CLI tool against ``cluster`` as a user runs it: as the admin, or with ``token``."""
    env = {k: v for k, v in os.environ.items() if k != "HAKURIVER_TOKEN"}
    env |= {"HAKURIVER_CONFIG": str(cluster.config_path), "COLUMNS": "200"}
    if token:
        env["HAKURIVER_TOKEN"] = token
    return subprocess.run(
        [*ProcessCluster.cli_argv(tool), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def ok(result: subprocess.CompletedProcess[str], code: int = 0) -> str:
    assert result.returncode == code, result.stdout + result.stderr
    return result.stdout


def as_json(result: subprocess.CompletedProcess[str], code: int = 0) -> Any:
    out = ok(result, code)
    assert not PROTO_WORDS.search(out), out
    return json.loads(out)


def one_error_line(result: subprocess.CompletedProcess[str], code: int = 1) -> str:
    """The only stderr line of a refused command (no traceback), nothing on stdout."""
    assert result.returncode == code, result.stdout + result.stderr
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith("error: "), line
    return line


def submit(cluster: ProcessCluster, spec: str, *argv: str, token: str = "") -> int:
    """``submit --array spec -- argv`` without waiting; the array's id from its one line."""
    out = ok(cli(cluster, "task", "submit", "--array", spec, "--", *argv, token=token))
    [line] = out.splitlines()
    found = SUBMITTED.match(line)
    assert found, line
    return int(found[1])


def counts(cluster: ProcessCluster, array_id: int) -> dict[str, int]:
    """The array's tasks by status, through the API (fast enough to poll)."""
    batch = cluster.tasks.GetBatch(tpb.GetBatchRequest(batch_id=array_id), timeout=10).batch
    return {TaskStatus.from_pb(c.status).value: c.count for c in batch.counts}


def wait_counts(
    cluster: ProcessCluster, array_id: int, check: Callable[[dict[str, int]], bool], what: str
) -> dict[str, int]:
    def reached() -> dict[str, int] | None:
        now = counts(cluster, array_id)
        return now if check(now) else None

    return wait_for(reached, timeout=30, what=f"array {array_id}: {what}")


def tasks_of(cluster: ProcessCluster, array_id: int, token: str = "") -> list[dict[str, Any]]:
    """The array's tasks as ``task list --batch ID --json`` shows them, by index."""
    listed = as_json(cli(cluster, "task", "list", "--batch", str(array_id), "--json", token=token))
    return sorted(listed, key=lambda t: t.get("array_index", 0))


@contextmanager
def cleanup(cluster: ProcessCluster, *array_ids: int) -> Iterator[None]:
    """Kill what is left of the arrays afterwards, so the module's cluster is free again."""
    try:
        yield
    finally:
        for array_id in array_ids:
            with suppress(grpc.RpcError):  # a failure above says more than this one
                cluster.tasks.KillBatch(tpb.KillBatchRequest(batch_id=array_id), timeout=30)


def most_at_once(tasks: list[dict[str, Any]]) -> int:
    """The most tasks that were running at one moment, from their started/completed times
    (a task holds its resources from before it starts until after it ends, so this is at
    most what its array's cap allowed)."""
    moments: list[tuple[datetime, int]] = []
    for task in tasks:
        if "started_at" in task:
            moments.append((datetime.fromisoformat(task["started_at"]), 1))
            moments.append((datetime.fromisoformat(task["completed_at"]), -1))
    most = now = 0
    for _, step in sorted(moments):  # at equal times an end (-1) sorts before a start
        now += step
        most = max(most, now)
    return most


# ----- submit --array, --wait and what each task sees ---------------------------------


def test_wait_prints_the_summary_and_each_task_has_its_index_in_its_environment(
    cluster: ProcessCluster,
) -> None:
    # No variable in the command: the values come from the environment alone.
    result = cli(
        cluster, "task", "submit", "--array", "2,5,7", "--wait", "--",
        "sh", "-c", "env | grep ^HAKURIVER_ARRAY_ | sort",
    )  # fmt: skip
    first, last = ok(result).splitlines()
    found = SUBMITTED.match(first)
    assert found and found[2] == "3" and found[3] is None, first
    array_id = int(found[1])
    assert last == f"array {array_id}: 3 tasks: 3 completed"
    for index in (2, 5, 7):
        out = ok(cli(cluster, "task", "stdout", f"{array_id}_{index}"))
        assert out == f"HAKURIVER_ARRAY_ID={array_id}\nHAKURIVER_ARRAY_INDEX={index}\n"
    assert ok(cli(cluster, "task", "stderr", f"{array_id}_7")) == ""
    # wait: a whole array, and one element of it.
    assert ok(cli(cluster, "task", "wait", str(array_id))) == last + "\n"
    element = tasks_of(cluster, array_id)[1]
    assert element["array_index"] == 5
    waited = ok(cli(cluster, "task", "wait", f"{array_id}_5"))
    assert waited == f"task {element['task_id']}: completed, exit code 0\n"
    # An index the array does not have is one line, like any task that is not there.
    line = one_error_line(cli(cluster, "task", "stdout", f"{array_id}_3"))
    assert line == f"error: array {array_id} has no task with index 3 (NOT_FOUND)"
    # Not an array at all: a plain batch, or no such id.
    line = one_error_line(cli(cluster, "task", "stdout", f"{array_id + 10**9}_3"))
    assert line == f"error: no job array {array_id + 10**9} (NOT_FOUND)"
    out = ok(cli(cluster, "task", "submit", "--target", cluster.runner_names[0],
                 "--target", cluster.runner_names[0], "--", "true"))  # fmt: skip
    found = re.search(r"^batch (\d+)$", out, re.MULTILINE)
    assert found, out
    line = one_error_line(cli(cluster, "client", "status", f"{found[1]}_1"))
    assert line.startswith(f"error: {found[1]} is a batch of 2 tasks, not a job array"), line


def test_wait_exits_1_when_one_index_fails(cluster: ProcessCluster) -> None:
    result = cli(
        cluster, "task", "submit", "--array", "1-4", "--wait", "--",
        "sh", "-c", "test $HAKURIVER_ARRAY_INDEX != 3",
    )  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr
    first, last, which = result.stdout.splitlines()
    found = SUBMITTED.match(first)
    assert found, first
    array_id = found[1]
    assert last == f"array {array_id}: 4 tasks: 3 completed, 1 failed"
    assert which == "not completed: indices 3"
    failed = as_json(
        cli(cluster, "task", "list", "--batch", array_id, "--status", "failed", "--json")
    )
    assert [(t["array_index"], t["exit_code"]) for t in failed] == [(3, 1)]
    waited = cli(cluster, "task", "wait", array_id)
    assert waited.returncode == 1 and waited.stdout == f"{last}\n{which}\n"


def test_the_index_replaces_the_variables_in_arguments_without_a_shell(
    cluster: ProcessCluster,
) -> None:
    # echo is the program itself (no sh -c): only the Host's replacement can put the
    # numbers there. Whole names only: $HAKURIVER_ARRAY_IDX is left as it is.
    result = cli(
        cluster, "task", "submit", "--array", "0-30:10", "--wait", "--",
        "echo", "index=$HAKURIVER_ARRAY_INDEX", "${HAKURIVER_ARRAY_ID}/${HAKURIVER_ARRAY_INDEX}",
        "$HAKURIVER_ARRAY_IDX",
    )  # fmt: skip
    first, last = ok(result).splitlines()
    found = SUBMITTED.match(first)
    assert found and found[2] == "4", first
    array_id = int(found[1])
    assert last == f"array {array_id}: 4 tasks: 4 completed"
    for index in (0, 10, 20, 30):
        out = ok(cli(cluster, "task", "stdout", f"{array_id}_{index}"))
        assert out == f"index={index} {array_id}/{index} $HAKURIVER_ARRAY_IDX\n"


def test_the_index_replaces_the_variables_in_mount_paths(
    cluster: ProcessCluster, tmp_path: Path
) -> None:
    for index in (0, 1, 2):
        (tmp_path / f"in{index}").mkdir()
        (tmp_path / f"in{index}" / "name").write_text(f"folder {index}\n")
    result = cli(
        cluster, "task", "submit", "--array", "0-2", "--wait",
        "--mount", f"{tmp_path}/in$HAKURIVER_ARRAY_INDEX:/data/$HAKURIVER_ARRAY_INDEX:ro",
        "--", "cat", "/data/$HAKURIVER_ARRAY_INDEX/name",
    )  # fmt: skip
    first, _ = ok(result).splitlines()
    found = SUBMITTED.match(first)
    assert found, first
    for index in (0, 1, 2):
        out = ok(cli(cluster, "task", "stdout", f"{found[1]}_{index}"))
        assert out == f"folder {index}\n"


# ----- the cap --------------------------------------------------------------------------


def test_the_cap_holds_with_real_containers(cluster: ProcessCluster) -> None:
    # Two Runners give four free cores: only the cap keeps the array to two at once.
    array_id = submit(cluster, "0-4%2", "sleep", "1")
    with cleanup(cluster, array_id):
        seen: list[dict[str, int]] = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            batch = as_json(cli(cluster, "client", "status", str(array_id), "--json"))["batch"]
            assert (batch["size"], batch["max_running"], batch["array"]) == (5, 2, True)
            now = {c["status"]: c["count"] for c in batch["counts"]}
            seen.append(now)
            if now.get("completed") == 5:
                break
        else:
            raise AssertionError(f"array {array_id} did not complete: {seen}")
        # Two hold resources nearly all the time (the next is placed as one ends), never more.
        holding = [sum(n for status, n in now.items() if status in HOLDING) for now in seen]
        assert max(holding) == 2, seen
        # The tasks' own start and end times: never more than two running at once.
        tasks = tasks_of(cluster, array_id)
        assert [t["array_index"] for t in tasks] == [0, 1, 2, 3, 4]
        assert most_at_once(tasks) <= 2, tasks
        # Lowest indices first: 2, 3 and 4 each waited for one of the first two to end.
        first_end = min(datetime.fromisoformat(t["completed_at"]) for t in tasks[:2])
        assert all(datetime.fromisoformat(t["started_at"]) > first_end for t in tasks[2:]), tasks


def test_the_cap_holds_across_a_host_restart(fresh_cluster: ProcessCluster) -> None:
    cluster = fresh_cluster
    array_id = submit(cluster, "0-2%1", "sleep", "1.5")
    with cleanup(cluster, array_id):
        wait_counts(cluster, array_id, lambda c: c.get("running") == 1, "one running")
        cluster.kill_host(signal.SIGKILL)
        cluster.start_host()
        final = wait_counts(cluster, array_id, lambda c: c.get("completed") == 3, "completed")
        assert final == {"completed": 3}
        tasks = tasks_of(cluster, array_id)
        assert most_at_once(tasks) == 1, tasks


# ----- kill, pause, resume --------------------------------------------------------------


def _container_running(cluster: ProcessCluster, task_ids: set[str]) -> list[str]:
    running = cluster.docker.containers.list(filters={"label": "hakuriver.task_id"})
    return [c.name for c in running if c.labels.get("hakuriver.task_id") in task_ids]


def test_every_container_of_a_finished_array_is_removed(cluster: ProcessCluster) -> None:
    """The Host releases a task once its end is stored, several in one message when their
    ends were stored together (ReleaseBatch; whether they were here depends on timing, the
    batching itself is tests/unit/test_runner_link.py's): the Runner removes every
    container either way."""
    array_id = submit(cluster, "0-11", "true")
    with cleanup(cluster, array_id):
        wait_counts(cluster, array_id, lambda c: c.get("completed") == 12, "all completed")
        ids = {t["task_id"] for t in tasks_of(cluster, array_id)}

        def left() -> list[str]:
            found = cluster.docker.containers.list(
                all=True, ignore_removed=True, filters={"label": "hakuriver.task_id"}
            )
            return [c.name for c in found if c.labels.get("hakuriver.task_id") in ids]

        wait_for(lambda: not left(), what="the array's containers to be removed")


def test_kill_a_whole_array_pending_ones_never_start(cluster: ProcessCluster) -> None:
    array_id = submit(cluster, "0-5%2", "sleep", "30")
    with cleanup(cluster, array_id):
        wait_counts(cluster, array_id, lambda c: c.get("running") == 2, "two running")
        result = cli(cluster, "client", "kill", str(array_id))
        assert ok(result).splitlines() == [
            "killed 6 tasks",
            f"array {array_id}: 6 tasks, at most 2 at once: 6 killed",
        ]
        time.sleep(1)  # a pending task started on the freed cores would show by now
        tasks = tasks_of(cluster, array_id)
        assert {t["status"] for t in tasks} == {"killed"}
        started = [t["array_index"] for t in tasks if "started_at" in t]
        assert started == [0, 1], tasks
        assert not [t for t in tasks[2:] if t.get("assigned_node")], tasks
        events = as_json(cli(cluster, "client", "status", f"{array_id}_5", "--json"))["events"]
        assert [e["status"] for e in events] == ["pending", "killed"]
        ids = {t["task_id"] for t in tasks}
        wait_for(lambda: not _container_running(cluster, ids), what="containers to stop")


def test_an_array_whose_every_task_ended_is_refused_as_one_ended_task_is(
    cluster: ProcessCluster,
) -> None:
    # It printed "killed 0 tasks" (paused, resumed) and exited 0: a script could not tell
    # it from a kill that did something, while one ended task is refused with exit 1.
    array_id = submit(cluster, "0-1", "true")
    ok(cli(cluster, "task", "wait", str(array_id)))
    task_id = tasks_of(cluster, array_id)[0]["task_id"]
    one = one_error_line(cli(cluster, "client", "kill", f"{array_id}_0"))
    assert one.startswith(f"error: task {task_id} is completed: only ") and one.endswith(
        " can be killed (FAILED_PRECONDITION)"
    )
    for argv, done in (
        (["kill", str(array_id)], "killed"),
        (["kill", str(array_id), "--json"], "killed"),
        (["command", str(array_id), "pause"], "paused"),
        (["command", str(array_id), "resume"], "resumed"),
    ):
        assert one_error_line(cli(cluster, "client", *argv)) == (
            f"error: array {array_id}: every task has already ended, none can be {done} "
            "(FAILED_PRECONDITION)"
        )


def test_kill_one_element(cluster: ProcessCluster) -> None:
    array_id = submit(cluster, "0-2", "sleep", "30")
    with cleanup(cluster, array_id):
        wait_counts(cluster, array_id, lambda c: c.get("running") == 3, "three running")
        tasks = tasks_of(cluster, array_id)
        result = cli(cluster, "client", "kill", f"{array_id}_1")
        assert ok(result) == f"task {tasks[1]['task_id']}: killed\n"
        assert counts(cluster, array_id) == {"running": 2, "killed": 1}
        detail = as_json(cli(cluster, "client", "status", f"{array_id}_1", "--json"))
        assert (detail["task"]["status"], detail["task"]["array_index"]) == ("killed", 1)
        whole = cli(cluster, "task", "stdout", str(array_id))
        assert (whole.returncode, whole.stderr) == (
            1,
            f"error: {array_id} is a job array: name one of its tasks as {array_id}_INDEX "
            f"(hakuriver.task list --batch {array_id})\n",
        )
        shown = ok(cli(cluster, "client", "status", f"{array_id}_1")).splitlines()
        assert [line.split() for line in shown if line.startswith("array_index")] == [
            ["array_index", "1"]
        ]
        wait_for(
            lambda: not _container_running(cluster, {tasks[1]["task_id"]}),
            what="the killed element's container to stop",
        )
        assert len(_container_running(cluster, {t["task_id"] for t in tasks})) == 2
        rest = ok(cli(cluster, "client", "kill", str(array_id)))
        assert rest.splitlines() == ["killed 2 tasks", f"array {array_id}: 3 tasks: 3 killed"]


def _stdout(cluster: ProcessCluster, ref: str) -> str:
    return ok(cli(cluster, "task", "stdout", ref))


def test_pause_and_resume_a_whole_array(cluster: ProcessCluster) -> None:
    array_id = submit(cluster, "0-2%2", "sh", "-c", LOOP)
    with cleanup(cluster, array_id):
        wait_counts(cluster, array_id, lambda c: c.get("running") == 2, "two running")
        paused = cli(cluster, "client", "command", str(array_id), "pause")
        assert ok(paused).splitlines() == [
            "paused 2 tasks",
            f"array {array_id}: 3 tasks, at most 2 at once: 1 pending, 2 paused "
            "(held: its pending tasks wait until it is resumed)",
        ]

        # A running task writes every 0.1 s: its output stays the same for a second only
        # when it is frozen (what it wrote before the pause may still be on its way).
        def unchanged_for_a_second() -> str | None:
            before = _stdout(cluster, f"{array_id}_0")
            time.sleep(1)
            return before if _stdout(cluster, f"{array_id}_0") == before else None

        frozen = wait_for(unchanged_for_a_second, timeout=15, what="the paused task to stop")
        assert frozen.startswith("tick\n")
        # The array is held: the third one stays pending (the paused hold their cores).
        assert counts(cluster, array_id) == {"pending": 1, "paused": 2}
        resumed = as_json(cli(cluster, "client", "command", str(array_id), "resume", "--json"))
        assert resumed["affected"] == 2
        assert {c["status"]: c["count"] for c in resumed["batch"]["counts"]} == {
            "pending": 1,
            "running": 2,
        }
        wait_for(
            lambda: len(_stdout(cluster, f"{array_id}_0")) > len(frozen),
            what="the resumed task to write again",
        )
        # Resuming again finds nothing paused.
        again = as_json(cli(cluster, "client", "command", str(array_id), "resume", "--json"))
        assert again["affected"] == 0


# ----- --json shapes --------------------------------------------------------------------


def test_json_shapes(cluster: ProcessCluster) -> None:
    submitted = as_json(
        cli(cluster, "task", "submit", "--json", "--array", "0-2%1", "--", "sleep", "30")
    )
    assert set(submitted) == {"batch_id", "created", "tasks"}
    array_id = submitted["batch_id"]
    assert isinstance(array_id, str) and submitted["created"] == 3
    with cleanup(cluster, int(array_id)):
        tasks = submitted["tasks"]
        assert [t["array_index"] for t in tasks] == [0, 1, 2]  # index 0 is shown too
        assert {t["batch_id"] for t in tasks} == {array_id}
        assert {t["array_max_running"] for t in tasks} == {1}
        assert [t["env"]["HAKURIVER_ARRAY_INDEX"] for t in tasks] == ["0", "1", "2"]
        # Held back by the cap (%1): no place in the queue (a zero is not written), a reason.
        assert tasks[1]["status"] == "pending" and "queue_position" not in tasks[1]
        assert tasks[1]["status_detail"].startswith("its array's cap: 1 of its tasks hold")

        status = as_json(cli(cluster, "client", "status", array_id, "--json"))
        assert set(status) == {"batch"}
        batch = status["batch"]
        assert set(batch) == {"batch_id", "size", "counts", "array", "max_running", "owner"}
        assert (batch["batch_id"], batch["size"], batch["owner"]) == (array_id, 3, "admin")
        assert all(set(c) == {"status", "count"} for c in batch["counts"])

        listed = as_json(cli(cluster, "task", "list", "--batch", array_id, "--json"))
        assert sorted(t["array_index"] for t in listed) == [0, 1, 2]

        one = as_json(cli(cluster, "client", "kill", f"{array_id}_2", "--json"))
        assert (one["status"], one["array_index"]) == ("killed", 2)  # a task, as for a task id

        killed = as_json(cli(cluster, "client", "kill", array_id, "--json"))
        assert set(killed) == {"batch", "affected"} and killed["affected"] == 2
        assert killed["batch"]["counts"] == [{"status": "killed", "count": 3}]

        waited = as_json(cli(cluster, "task", "wait", array_id, "--json"), code=1)
        assert waited == {"batch": killed["batch"], "not_completed": [0, 1, 2]}

    done = as_json(
        cli(cluster, "task", "submit", "--json", "--wait", "--array", "4,9", "--", "true")
    )
    assert set(done) == {"batch_id", "created", "tasks", "batch", "not_completed"}
    assert done["batch"]["counts"] == [{"status": "completed", "count": 2}]
    assert done["not_completed"] == []
    # The tasks as they ended, not as they were submitted.
    assert [(t["array_index"], t["status"]) for t in done["tasks"]] == [
        (4, "completed"),
        (9, "completed"),
    ]
    assert "max_running" not in done["batch"]  # zero values are left out


# ----- refusals -------------------------------------------------------------------------


def _newest_task(cluster: ProcessCluster) -> int:
    tasks = cluster.tasks.ListTasks(tpb.ListTasksRequest(limit=1), timeout=10).tasks
    return tasks[0].task_id if tasks else 0


@pytest.mark.parametrize(
    ("spec", "says"),
    [
        ("5-1", "'5-1' must go upwards by at least 1"),
        ("1-3%0", "expected a positive number after '%'"),
        ("1,2,1", "an index is given twice"),
        ("1-x", "'1-x' is not N, N-M or N-M:STEP"),
        ("1-3%2147483648", "the cap 2147483648 is above 2,147,483,647"),  # int32's most
        ("", "'' is not N, N-M or N-M:STEP"),  # not one plain task
        ("1-3%\u00b2", "expected a positive number after '%'"),  # a digit to isdigit() only
    ],
)
def test_a_bad_spec_is_one_line_exit_2_and_nothing_is_submitted(
    cluster: ProcessCluster, spec: str, says: str
) -> None:
    before = _newest_task(cluster)
    line = one_error_line(cli(cluster, "task", "submit", "--array", spec, "--", "true"), code=2)
    assert line.startswith(f"error: --array {spec!r}: ") and says in line, line
    assert _newest_task(cluster) == before


@pytest.mark.parametrize("index", ["99999999999", "\u00b2", "x", "", "9" * 5000])
def test_a_malformed_array_index_is_one_line_exit_2(cluster: ProcessCluster, index: str) -> None:
    # Beyond int32, a digit only to str.isdigit() and more digits than int() converts
    # were tracebacks.
    line = one_error_line(cli(cluster, "client", "status", f"12345_{index}"), code=2)
    assert line.startswith(f"error: '12345_{index}': "), line


# ----- another user's array -------------------------------------------------------------


def _anonymous(line: str, *ids: int) -> str:
    for number in ids:
        line = line.replace(str(number), "ID")
    return line


def test_a_user_cannot_see_or_touch_another_users_array(cluster: ProcessCluster) -> None:
    alice = cluster.add_user("arr-alice")
    bob = cluster.add_user("arr-bob")
    array_id = submit(cluster, "0-1", "sleep", "30", token=alice)
    with cleanup(cluster, array_id):
        wait_counts(cluster, array_id, lambda c: c.get("running") == 2, "two running")
        first_task = tasks_of(cluster, array_id, alice)[0]["task_id"]
        missing = array_id + 1_000_003  # no task or batch has it
        attempts = [
            ("client", "status", "{}"),
            ("client", "kill", "{}"),
            ("client", "command", "{}", "pause"),
            ("task", "wait", "{}"),
            ("client", "kill", "{}_1"),
            ("client", "command", "{}_0", "resume"),
            ("task", "stdout", "{}_0"),
        ]
        # Each with alice's array and with an id nobody has; and one of alice's tasks by
        # its own id, which must be as missing as one nobody has.
        pairs = [
            (
                [tool, *(w.format(array_id) for w in words)],
                [tool, *(w.format(missing) for w in words)],
            )
            for tool, *words in attempts
        ]
        pairs.append((["client", "kill", first_task], ["client", "kill", str(missing)]))

        def refused(argv: list[str]) -> str:
            return one_error_line(cli(cluster, *argv, token=bob))

        with ThreadPoolExecutor(4) as pool:  # a CLI call spends most of its time starting
            lines = list(pool.map(refused, [argv for pair in pairs for argv in pair]))
        for (argv, _), theirs, nothing in zip(pairs, lines[::2], lines[1::2], strict=True):
            hidden = int(first_task) if argv[-1] == first_task else array_id
            assert _anonymous(theirs, hidden) == _anonymous(nothing, missing), (argv, theirs)
            assert "not found" in theirs or "no job array" in theirs, theirs
        # Bob's list of the array is empty; alice's array carries on untouched.
        assert tasks_of(cluster, array_id, bob) == []
        assert counts(cluster, array_id) == {"running": 2}
        # Alice sees it as hers and controls it.
        mine = as_json(cli(cluster, "client", "status", str(array_id), "--json", token=alice))
        assert mine["batch"]["owner"] == "arr-alice"
        killed = ok(cli(cluster, "client", "kill", str(array_id), token=alice))
        assert killed.splitlines()[0] == "killed 2 tasks"
