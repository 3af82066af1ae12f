"""Crash safety: SIGKILL the Host or a Runner mid-task; nothing is lost."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from hakuriver_common.proto.hakuriver.v1 import (
    node_pb2,
    node_service_pb2 as npb,
    task_pb2,
    task_service_pb2 as tpb,
)
from tests.e2e.harness import SSHD_ENV, ProcessCluster, running_cluster, wait_for

SSH_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE1KjKdQFMK2E8kVmbb3r2Dk5c6bwSvpZ0ZyYy2sQkVx"

pytestmark = pytest.mark.docker


def _gated_task(cluster: ProcessCluster, gate: str) -> task_pb2.Task:
    """A task that prints, waits for /shared/<gate>, prints more and exits 7."""
    (cluster.shared_dir / "shared_data").mkdir(parents=True, exist_ok=True)
    script = (
        "for i in 1 2 3; do echo before $i; done; echo err-before >&2; "
        f"while [ ! -e /shared/{gate} ]; do sleep 0.05; done; "
        "for i in 1 2 3; do echo after $i; done; echo err-after >&2; exit 7"
    )
    task = cluster.submit(["sh", "-c", script])
    wait_for(
        lambda: cluster.read_log(task.task_id).count(b"before") == 3,
        what="output before the crash",
    )
    return task


def _open_gate(cluster: ProcessCluster, gate: str) -> None:
    (cluster.shared_dir / "shared_data" / gate).touch()


def _container(cluster: ProcessCluster, task_id: int):  # type: ignore[no-untyped-def]
    found = cluster.docker.containers.list(
        all=True, ignore_removed=True, filters={"label": f"hakuriver.task_id={task_id}"}
    )
    return found[0] if found else None


EXPECTED_OUT = b"before 1\nbefore 2\nbefore 3\nafter 1\nafter 2\nafter 3\n"
EXPECTED_ERR = b"err-before\nerr-after\n"


def _assert_complete(cluster: ProcessCluster, task_id: int) -> None:
    final = cluster.wait_final(task_id)
    assert final.status == task_pb2.TASK_STATUS_FAILED
    assert final.exit_code == 7
    assert cluster.read_log(task_id) == EXPECTED_OUT
    assert cluster.read_log(task_id, task_pb2.LOG_STREAM_STDERR) == EXPECTED_ERR
    out_file = cluster.shared_dir / "task_outputs" / f"{task_id}.out"
    assert out_file.read_bytes() == EXPECTED_OUT
    wait_for(lambda: _container(cluster, task_id) is None, what="container removal after release")


def test_host_sigkill_while_task_runs(fresh_cluster: ProcessCluster) -> None:
    cluster = fresh_cluster
    task = _gated_task(cluster, "host-gate")
    cluster.kill_host()
    # The task finishes and writes more output while the Host is down.
    _open_gate(cluster, "host-gate")
    container = _container(cluster, task.task_id)
    wait_for(lambda: (container.reload(), container.status == "exited")[1], what="task exit")
    cluster.start_host()
    _assert_complete(cluster, task.task_id)


def test_host_sigkill_then_task_finishes_after_restart(fresh_cluster: ProcessCluster) -> None:
    cluster = fresh_cluster
    task = _gated_task(cluster, "host-gate-2")
    cluster.kill_host()
    cluster.start_host()
    name = cluster.runner_names[0]
    wait_for(lambda: cluster.node_online(name), what="runner reconnect")
    assert cluster.get(task.task_id).status == task_pb2.TASK_STATUS_RUNNING
    _open_gate(cluster, "host-gate-2")
    _assert_complete(cluster, task.task_id)
    # The Runner says in one line that the stream was cut (it logged the call's error
    # whole: five lines with gRPC's debug string).
    runner_log = (cluster.root / f"runner-{name}.log").read_text()
    said = [
        line
        for line in runner_log.splitlines()
        if f"stream to host 127.0.0.1:{cluster.host_port} cut" in line
    ]
    assert said and all(line.endswith("(UNAVAILABLE)") for line in said), runner_log
    assert "debug_error_string" not in runner_log


def _outlives_its_runner(cluster: ProcessCluster, task_id: int, what: str) -> None:
    container = _container(cluster, task_id)
    container.reload()
    assert container.status == "running", f"the {what} must outlive its runner"


def _survives_and_is_readopted(
    cluster: ProcessCluster, gate: str, stop: Callable[[ProcessCluster], None]
) -> None:
    """A gated task goes on through ``stop`` of its Runner, and the restarted Runner adopts
    it: it completes with all its output."""
    task = _gated_task(cluster, gate)
    stop(cluster)
    _outlives_its_runner(cluster, task.task_id, "container")
    _open_gate(cluster, gate)
    cluster.start_runner()
    _assert_complete(cluster, task.task_id)


def test_a_submission_sent_again_after_a_host_sigkill_gets_the_stored_tasks(
    fresh_cluster: ProcessCluster,
) -> None:
    """SubmitTask's request_id is committed with the tasks it created: a Host killed (SIGKILL)
    once they were stored answers the retry, sent after its restart, with them, and creates
    none (without the id, the retry was a second array, and a second task)."""
    cluster = fresh_cluster
    array = tpb.SubmitTaskRequest(
        command="true", array=tpb.TaskArray(indices=[0, 1, 2]), request_id="e2e-sigkill"
    )
    first = cluster.tasks.SubmitTask(array, timeout=10)
    submit = ["submit", "--request-id", "e2e-sigkill-cli", "--", "true"]
    said = cluster.cli("task", *submit)
    assert said.returncode == 0, said.stderr
    cluster.kill_host()
    cluster.start_host()
    again = cluster.tasks.SubmitTask(array, timeout=10)
    assert again.batch_id == first.batch_id
    assert [t.task_id for t in again.tasks] == [t.task_id for t in first.tasks]
    said_again = cluster.cli("task", *submit)
    assert said_again.returncode == 0, said_again.stderr
    task_id = said.stdout.split()[2]
    assert said_again.stdout.split()[:3] == ["submitted", "task", task_id]
    listed = cluster.tasks.ListTasks(tpb.ListTasksRequest(limit=100), timeout=10).tasks
    assert sorted(t.task_id for t in listed) == sorted(
        [int(task_id), *(t.task_id for t in first.tasks)]
    )


def test_runner_sigkill_container_survives_and_is_readopted(fresh_cluster: ProcessCluster) -> None:
    _survives_and_is_readopted(fresh_cluster, "runner-gate", ProcessCluster.kill_runner)


def test_output_that_is_not_utf8_is_kept_byte_for_byte_across_a_runner_restart(
    fresh_cluster: ProcessCluster,
) -> None:
    """The restarted Runner reads the output back from the container's log, skipping what
    the Host has. Docker's json-file log held each byte that is not UTF-8 as U+FFFD (3
    bytes): the output stored after the restart was shifted by the difference (bytes
    repeated), and what came from the log was not what the task wrote."""
    cluster = fresh_cluster
    (cluster.shared_dir / "shared_data").mkdir(parents=True, exist_ok=True)
    script = (
        "printf 'before \\377\\376abc\\n'; "
        "while [ ! -e /shared/bytes-gate ]; do sleep 0.05; done; "
        "printf 'after \\377 end\\n'; exit 7"
    )
    task = cluster.submit(["sh", "-c", script])
    wait_for(lambda: b"abc" in cluster.read_log(task.task_id), what="output before the kill")
    cluster.kill_runner()
    _outlives_its_runner(cluster, task.task_id, "container")
    _open_gate(cluster, "bytes-gate")
    cluster.start_runner()
    assert cluster.wait_final(task.task_id).exit_code == 7
    written = b"before \xff\xfeabc\nafter \xff end\n"
    assert cluster.read_log(task.task_id) == written
    assert (cluster.shared_dir / "task_outputs" / f"{task.task_id}.out").read_bytes() == written


def _stop_runner_at_once(cluster: ProcessCluster) -> None:
    runner = cluster.runners[cluster.runner_names[0]]
    runner.send_signal(signal.SIGTERM)
    try:
        code = runner.wait(15)
    except subprocess.TimeoutExpired:
        runner.kill()
        runner.wait()
        pytest.fail("the Runner did not exit within 15 s of SIGTERM")
    assert code == 0, cluster.log(f"runner-{cluster.runner_names[0]}.log")


def test_a_runner_stopped_while_a_task_runs_exits_and_readopts_it(
    fresh_cluster: ProcessCluster,
) -> None:
    """SIGTERM stops a Runner at once, though pool threads wait for the running task's exit
    and follow its output for as long as it lives. The task goes on and is adopted again."""
    _survives_and_is_readopted(fresh_cluster, "stop-gate", _stop_runner_at_once)


def test_a_runner_stopped_while_a_vps_runs_exits(
    sshd_image: str, fresh_cluster: ProcessCluster
) -> None:
    """As above with a VPS: the Runner hung in the interpreter's exit, joining a pool thread
    blocked in Docker's wait for the VPS, until systemd's SIGKILL."""
    cluster = fresh_cluster
    vps = cluster.tasks.SubmitTask(
        tpb.SubmitTaskRequest(
            kind=task_pb2.TASK_KIND_VPS,
            container_name=SSHD_ENV,
            ssh_public_key=SSH_KEY,
        ),
        timeout=30,
    ).tasks[0]
    cluster.wait_status(vps.task_id, {task_pb2.TASK_STATUS_RUNNING}, timeout=60)
    _stop_runner_at_once(cluster)
    _outlives_its_runner(cluster, vps.task_id, "VPS")


def test_silent_runner_goes_offline_and_its_tasks_are_lost_past_the_limit(
    docker_ready: None, tmp_path: Path
) -> None:
    with running_cluster(
        tmp_path,
        heartbeat_interval=0.5,
        heartbeat_timeout_factor=4,
        extra_sections={"timing": "lost_after_seconds = 5"},
    ) as cluster:
        name = cluster.runner_names[0]
        task = cluster.submit(["sleep", "600"])
        cluster.wait_status(task.task_id, {task_pb2.TASK_STATUS_RUNNING})
        cluster.kill_runner()
        cluster.wait_status(task.task_id, {task_pb2.TASK_STATUS_UNKNOWN})
        final = cluster.wait_final(task.task_id, timeout=20)
        assert final.status == task_pb2.TASK_STATUS_LOST
        assert "away for more than 5s" in final.error_message
        nodes = cluster.nodes.ListNodes(npb.ListNodesRequest(), timeout=5).nodes
        assert [n.status for n in nodes if n.hostname == name] == [node_pb2.NODE_STATUS_OFFLINE]
        # When the runner returns, the Host tells it to discard the lost task's container.
        cluster.start_runner()
        wait_for(
            lambda: _container(cluster, task.task_id) is None, what="discard of lost container"
        )
        assert cluster.get(task.task_id).status == task_pb2.TASK_STATUS_LOST
