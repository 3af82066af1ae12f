"""Command tasks end to end: real Host, real Runners, real containers."""

from __future__ import annotations

import json
import threading
import time

import pytest

from hakuriver_common.proto.hakuriver.v1 import (
    log_service_pb2 as lpb,
    task_pb2,
    task_service_pb2 as tpb,
)
from tests.e2e.harness import ProcessCluster, wait_for

pytestmark = pytest.mark.docker


def test_task_runs_in_container_and_output_lands_in_shared_dir(cluster: ProcessCluster) -> None:
    task = cluster.submit(["sh", "-c", "echo hello from $HAKURIVER_TASK_ID; echo warn >&2"])
    final = cluster.wait_final(task.task_id)
    assert final.status == task_pb2.TASK_STATUS_COMPLETED
    assert final.exit_code == 0
    assert final.assigned_node in cluster.runner_names
    expected = f"hello from {task.task_id}\n".encode()
    out = cluster.shared_dir / "task_outputs" / f"{task.task_id}.out"
    err = cluster.shared_dir / "task_errors" / f"{task.task_id}.err"
    assert final.stdout_path == str(out)
    assert out.read_bytes() == expected
    assert err.read_bytes() == b"warn\n"
    assert cluster.read_log(task.task_id) == expected
    assert cluster.read_log(task.task_id, task_pb2.LOG_STREAM_STDERR) == b"warn\n"


def test_nonzero_exit_is_failed_with_exit_code(cluster: ProcessCluster) -> None:
    task = cluster.submit(["sh", "-c", "exit 7"])
    final = cluster.wait_final(task.task_id)
    assert final.status == task_pb2.TASK_STATUS_FAILED
    assert final.exit_code == 7


def test_status_timeline_follows_the_state_machine(cluster: ProcessCluster) -> None:
    task = cluster.submit(["true"])
    cluster.wait_final(task.task_id)
    reply = cluster.tasks.GetTask(tpb.GetTaskRequest(task_id=task.task_id), timeout=5)
    assert [e.status for e in reply.events] == [
        task_pb2.TASK_STATUS_PENDING,
        task_pb2.TASK_STATUS_ASSIGNING,
        task_pb2.TASK_STATUS_RUNNING,
        task_pb2.TASK_STATUS_COMPLETED,
    ]
    assert reply.task.HasField("started_at") and reply.task.HasField("completed_at")


def test_a_quick_task_never_starts_after_it_completed(cluster: ProcessCluster) -> None:
    """The start is stamped by the Runner and the exit by the daemon: a command that ends
    before the start's answer comes back still has started_at <= completed_at."""
    finals = [cluster.wait_final(cluster.submit(["true"]).task_id) for _ in range(8)]
    for final in finals:
        started = final.started_at.ToNanoseconds()
        completed = final.completed_at.ToNanoseconds()
        assert 0 < started <= completed, final


def test_memory_limit_exceeded_is_killed_oom(cluster: ProcessCluster) -> None:
    # Holding 64 MB in a shell variable under a 16 MB limit.
    script = 'x=$(head -c 64000000 /dev/zero | tr "\\0" a); echo survived'
    task = cluster.submit(["sh", "-c", script], memory="16M")
    final = cluster.wait_final(task.task_id)
    assert final.status == task_pb2.TASK_STATUS_KILLED_OOM, final
    assert "memory" in final.error_message


def test_container_gets_limits_env_mounts_and_labels(cluster: ProcessCluster, tmp_path) -> None:
    host_dir = tmp_path / "data"
    host_dir.mkdir()
    (host_dir / "input.txt").write_text("from the host\n")
    (cluster.shared_dir / "shared_data").mkdir(parents=True, exist_ok=True)
    (cluster.shared_dir / "shared_data" / "common.txt").write_text("shared\n")
    task = cluster.submit(
        ["sh", "-c", "cat /data/input.txt /shared/common.txt; echo $GREETING; sleep 30"],
        cores=2,
        memory="256M",
        env={"GREETING": "hi"},
        mounts=[task_pb2.Mount(host_path=str(host_dir), container_path="/data")],
    )
    cluster.wait_status(task.task_id, {task_pb2.TASK_STATUS_RUNNING})
    containers = cluster.docker.containers.list(
        filters={"label": f"hakuriver.task_id={task.task_id}"}
    )
    assert len(containers) == 1
    attrs = containers[0].attrs
    assert attrs["HostConfig"]["NanoCpus"] == 2_000_000_000
    assert attrs["HostConfig"]["Memory"] == 256_000_000
    assert attrs["Config"]["Labels"]["hakuriver.runner"] in cluster.runner_names
    assert attrs["Config"]["Image"] == "hakuriver/hakuriver-base:base"
    assert attrs["HostConfig"]["Privileged"] is False
    binds = {m["Destination"]: m["Source"] for m in attrs["Mounts"]}
    assert binds["/shared"] == str(cluster.shared_dir / "shared_data")
    assert binds["/local_temp"] == str(cluster.root / "local_temp")
    assert binds["/data"] == str(host_dir)
    wait_for(
        lambda: cluster.read_log(task.task_id) == b"from the host\nshared\nhi\n",
        what="output of the mounted files",
    )
    cluster.tasks.KillTask(tpb.KillTaskRequest(task_id=task.task_id), timeout=30)


def test_a_task_paused_and_resumed_outside_hakuriver_shows_so(cluster: ProcessCluster) -> None:
    """``docker pause`` of a task's container (an admin on the node): the task showed
    ``running`` though frozen. The Runner sees it at its next check, the task is ``paused``
    saying so, and ``running`` again after ``docker unpause``; HakuRiver resumes it too."""
    task = cluster.submit(["sleep", "300"])
    cluster.wait_status(task.task_id, {task_pb2.TASK_STATUS_RUNNING})
    [container] = cluster.docker.containers.list(
        filters={"label": f"hakuriver.task_id={task.task_id}"}
    )
    container.pause()
    cluster.wait_status(task.task_id, {task_pb2.TASK_STATUS_PAUSED})
    assert _last_event(cluster, task.task_id) == ("paused", "paused outside HakuRiver")

    container.unpause()
    cluster.wait_status(task.task_id, {task_pb2.TASK_STATUS_RUNNING})
    assert _last_event(cluster, task.task_id) == ("running", "resumed outside HakuRiver")

    container.pause()
    cluster.wait_status(task.task_id, {task_pb2.TASK_STATUS_PAUSED})
    back = cluster.tasks.ResumeTask(tpb.ResumeTaskRequest(task_id=task.task_id), timeout=20).task
    assert back.status == task_pb2.TASK_STATUS_RUNNING
    container.reload()
    assert container.status == "running"
    cluster.tasks.KillTask(tpb.KillTaskRequest(task_id=task.task_id), timeout=30)


def _last_event(cluster: ProcessCluster, task_id: int) -> tuple[str, str]:
    """The task's status and its latest event's detail, as ``hakuriver.client status``
    shows them."""
    shown = json.loads(cluster.cli("client", "status", str(task_id), "--json").stdout)
    return shown["task"]["status"], shown["events"][-1]["detail"]


def test_kill_pause_and_resume(cluster: ProcessCluster) -> None:
    task = cluster.submit(["sh", "-c", "while true; do echo tick; sleep 0.2; done"])
    cluster.wait_status(task.task_id, {task_pb2.TASK_STATUS_RUNNING})
    paused = cluster.tasks.PauseTask(tpb.PauseTaskRequest(task_id=task.task_id), timeout=20).task
    assert paused.status == task_pb2.TASK_STATUS_PAUSED
    [container] = cluster.docker.containers.list(
        filters={"label": f"hakuriver.task_id={task.task_id}"}
    )
    container.reload()
    assert container.status == "paused"
    resumed = cluster.tasks.ResumeTask(tpb.ResumeTaskRequest(task_id=task.task_id), timeout=20).task
    assert resumed.status == task_pb2.TASK_STATUS_RUNNING
    container.reload()
    assert container.status == "running"
    killed = cluster.tasks.KillTask(tpb.KillTaskRequest(task_id=task.task_id), timeout=30).task
    assert killed.status == task_pb2.TASK_STATUS_KILLED
    assert b"tick\n" in cluster.read_log(task.task_id)
    wait_for(
        lambda: (
            not cluster.docker.containers.list(
                all=True,
                ignore_removed=True,
                filters={"label": f"hakuriver.task_id={task.task_id}"},
            )
        ),
        what="the killed task's container to be removed",
    )


def test_follow_streams_lines_while_task_runs(cluster: ProcessCluster) -> None:
    marker = cluster.root / f"go-{time.time_ns()}"
    (cluster.shared_dir / "shared_data").mkdir(parents=True, exist_ok=True)
    # The task prints a first line, then waits for the test to release it.
    script = f"echo first; while [ ! -e /shared/{marker.name} ]; do sleep 0.05; done; echo second"
    task = cluster.submit(["sh", "-c", script])
    request = lpb.ReadLogRequest(
        task_id=task.task_id, stream=task_pb2.LOG_STREAM_STDOUT, follow=True
    )
    received: list[bytes] = []
    first_seen = threading.Event()

    def follow() -> None:
        for chunk in cluster.logs.ReadLog(request, timeout=60):
            received.append(chunk.data)
            if b"first" in b"".join(received):
                first_seen.set()

    reader = threading.Thread(target=follow)
    reader.start()
    assert first_seen.wait(30), "first line never arrived"
    # The line arrived while the task is still running.
    assert cluster.get(task.task_id).status == task_pb2.TASK_STATUS_RUNNING
    (cluster.shared_dir / "shared_data" / marker.name).touch()
    reader.join(60)
    assert not reader.is_alive(), "follow did not end when the task finished"
    assert b"".join(received) == b"first\nsecond\n"


def test_cli_submit_wait_stdout_status_and_list(cluster: ProcessCluster) -> None:
    result = cluster.cli(
        "task", "submit", "--wait", "--json", "--env", "WHO=cli", "--", "sh", "-c", "echo hi $WHO"
    )
    assert result.returncode == 0, result.stderr
    body = json.loads(result.stdout)
    [task] = body["tasks"]
    assert task["status"] == "completed"
    task_id = task["task_id"]

    out = cluster.cli("task", "stdout", task_id)
    assert out.returncode == 0 and out.stdout == "hi cli\n"

    status = cluster.cli("client", "status", task_id)
    assert status.returncode == 0
    assert "completed" in status.stdout and "timeline:" in status.stdout

    listed = cluster.cli("task", "list", "--json", "--status", "completed")
    assert task_id in [t["task_id"] for t in json.loads(listed.stdout)]

    failing = cluster.cli("task", "submit", "--wait", "--", "sh", "-c", "exit 4")
    assert failing.returncode == 1
    assert "failed, exit code 4" in failing.stdout


def test_cli_follow_prints_until_the_task_ends(cluster: ProcessCluster) -> None:
    task = cluster.submit(["sh", "-c", "for i in 1 2 3; do echo line $i; sleep 0.2; done"])
    result = cluster.cli("task", "stdout", str(task.task_id), "--follow")
    assert result.returncode == 0
    assert result.stdout == "line 1\nline 2\nline 3\n"


def test_repeated_targets_make_a_batch(cluster: ProcessCluster) -> None:
    args = []
    for name in cluster.runner_names:
        args += ["--target", name]
    result = cluster.cli("task", "submit", "--json", *args, "--", "hostname")
    assert result.returncode == 0, result.stderr
    body = json.loads(result.stdout)
    assert len(body["tasks"]) == 2
    assert {t["batch_id"] for t in body["tasks"]} == {body["batch_id"]}
    for task in body["tasks"]:
        final = cluster.wait_final(int(task["task_id"]))
        assert final.status == task_pb2.TASK_STATUS_COMPLETED
        assert final.assigned_node == task["target_hostname"]
    listed = cluster.tasks.ListTasks(
        tpb.ListTasksRequest(batch_id=int(body["batch_id"])), timeout=5
    )
    assert len(listed.tasks) == 2


def test_nodes_and_health_commands(cluster: ProcessCluster) -> None:
    nodes = cluster.cli("client", "nodes", "--json")
    assert nodes.returncode == 0
    by_name = {n["hostname"]: n for n in json.loads(nodes.stdout)}
    for name in cluster.runner_names:
        assert by_name[name]["status"] == "online"
        assert by_name[name]["total_cores"] >= 1
        assert "hakuriver-base" in by_name[name]["environments"]
    health = cluster.cli("client", "health", cluster.runner_names[0], "--json")
    [entry] = json.loads(health.stdout)
    assert entry["hostname"] == cluster.runner_names[0]
    assert int(entry["current"]["memory_total_bytes"]) > 0
    table = cluster.cli("client", "nodes")
    assert table.returncode == 0 and cluster.runner_names[0] in table.stdout


def test_runner_without_a_usable_environment_fails_the_task_clearly(
    cluster: ProcessCluster,
) -> None:
    # The tarball makes the environment known to the Host, but it is empty: no Runner can
    # load it, and none has the image.
    tar_dir = cluster.shared_dir / "hakuriver-containers"
    tar_dir.mkdir(parents=True, exist_ok=True)
    tarball = tar_dir / "ghost-1700000000.tar"
    tarball.write_bytes(b"")
    task = cluster.submit(["true"], container_name="ghost")
    final = cluster.wait_final(task.task_id)
    tarball.unlink()
    assert final.status == task_pb2.TASK_STATUS_FAILED
    assert f"environment 'ghost': cannot load {tarball}" in final.error_message
    assert not final.HasField("exit_code")


def test_privileged_task(cluster: ProcessCluster) -> None:
    """--privileged reaches Docker.

    Sandboxes without full capabilities refuse privileged containers ("unable to apply
    caps"); there the task must fail with Docker's reason, which only a privileged request
    produces (the same task unprivileged runs fine).
    """
    task = cluster.submit(["sh", "-c", "sleep 30"], privileged=True)
    reached = cluster.wait_status(
        task.task_id, {task_pb2.TASK_STATUS_RUNNING, task_pb2.TASK_STATUS_FAILED}
    )
    assert reached.privileged
    if reached.status == task_pb2.TASK_STATUS_FAILED:
        assert "apply caps" in reached.error_message, reached.error_message
        return
    [container] = cluster.docker.containers.list(
        filters={"label": f"hakuriver.task_id={task.task_id}"}
    )
    assert container.attrs["HostConfig"]["Privileged"] is True
    cluster.tasks.KillTask(tpb.KillTaskRequest(task_id=task.task_id), timeout=30)
