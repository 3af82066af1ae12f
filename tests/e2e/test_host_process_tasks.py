"""--container NULL: commands run directly on the runner host, supervised and re-adoptable."""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from pathlib import Path

import pytest

from hakuriver_common.proto.hakuriver.v1 import task_pb2, task_service_pb2 as tpb
from hakuriver_common.service import systemd_is_init
from tests.e2e.harness import ProcessCluster, wait_for

pytestmark = pytest.mark.docker
RUNNING = {task_pb2.TASK_STATUS_RUNNING}
SHOW_BINDING = "grep -E '^(Cpus|Mems)_allowed_list' /proc/self/status"


def _spool(cluster: ProcessCluster, task_id: int) -> Path:
    name = cluster.runner_names[0]
    return cluster.runner_state_dir(name) / "tasks" / str(task_id)


def _pid(cluster: ProcessCluster, task_id: int) -> int:
    path = _spool(cluster, task_id) / "process.json"
    wait_for(path.exists, what="the task's process record")
    return int(json.loads(path.read_text())["pid"])


def _proc_state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"


def _stopped(pid: int) -> bool:
    """Stopped, or (stopped as the shell starts a command) waiting uninterruptibly for its
    vforked child, stopped before its exec: the Runner counts both as paused."""
    if _proc_state(pid) == "T":
        return True
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return _proc_state(pid) == "D" and any(_proc_state(int(c)) == "T" for c in children)


def test_null_task_runs_on_the_host_pinned_to_its_cpus(cluster: ProcessCluster) -> None:
    task = cluster.submit(
        ["sh", "-c", f"echo task $HAKURIVER_TASK_ID; {SHOW_BINDING}; echo oops >&2; exit 3"],
        container_name="NULL",
        env={"GREETING": "hi"},
    )
    final = cluster.wait_final(task.task_id)
    assert final.status == task_pb2.TASK_STATUS_FAILED and final.exit_code == 3
    out = cluster.read_log(task.task_id).decode()
    assert f"task {task.task_id}\n" in out
    [cpu] = final.assigned_cpus
    assert f"Cpus_allowed_list:\t{cpu}\n" in out
    assert cluster.read_log(task.task_id, task_pb2.LOG_STREAM_STDERR) == b"oops\n"
    wait_for(lambda: not _spool(cluster, task.task_id).exists(), what="spool cleanup on release")


@pytest.mark.skipif(shutil.which("numactl") is None, reason="numactl not installed")
def test_null_task_on_a_numa_node_is_bound_with_numactl(cluster: ProcessCluster) -> None:
    target = task_pb2.Target(hostname=cluster.runner_names[0], numa_node_id=0)
    task = cluster.submit(["sh", "-c", SHOW_BINDING], container_name="NULL", targets=[target])
    final = cluster.wait_final(task.task_id)
    assert final.status == task_pb2.TASK_STATUS_COMPLETED, final.error_message
    assert "Mems_allowed_list:\t0\n" in cluster.read_log(task.task_id).decode()


def test_null_task_pause_resume_and_kill_signal_the_process_group(cluster: ProcessCluster) -> None:
    task = cluster.submit(
        ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 0.1; done"], container_name="NULL"
    )
    cluster.wait_status(task.task_id, RUNNING)
    pid = _pid(cluster, task.task_id)
    cluster.tasks.PauseTask(tpb.PauseTaskRequest(task_id=task.task_id), timeout=20)
    assert _stopped(pid)
    cluster.tasks.ResumeTask(tpb.ResumeTaskRequest(task_id=task.task_id), timeout=20)
    assert _proc_state(pid) in ("S", "R")
    killed = cluster.tasks.KillTask(tpb.KillTaskRequest(task_id=task.task_id), timeout=30).task
    assert killed.status == task_pb2.TASK_STATUS_KILLED
    wait_for(lambda: _proc_state(pid) in ("gone", "Z"), what="the process to end")


def test_kill_ends_the_processes_of_a_null_task_that_ignore_sigterm(
    cluster: ProcessCluster,
) -> None:
    """The wrapper leading the task's process group ends on SIGTERM; a process of it that
    ignores SIGTERM is killed after the grace all the same, as in a container."""
    task = cluster.submit(
        ["sh", "-c", "trap '' TERM; echo $$; while true; do sleep 0.1; done"],
        container_name="NULL",
    )
    cluster.wait_status(task.task_id, RUNNING)
    shell = int(wait_for(lambda: cluster.read_log(task.task_id).strip(), what="the shell's pid"))
    killed = cluster.tasks.KillTask(tpb.KillTaskRequest(task_id=task.task_id), timeout=30).task
    assert killed.status == task_pb2.TASK_STATUS_KILLED
    wait_for(lambda: _proc_state(shell) in ("gone", "Z"), what="the shell ignoring SIGTERM to end")


def test_a_null_task_stopped_and_continued_outside_hakuriver_shows_so(
    cluster: ProcessCluster,
) -> None:
    """SIGSTOP to a host process's group from outside (an operator on the node) shows the
    task ``paused``, and SIGCONT ``running`` again, as ``docker pause`` of a container."""
    task = cluster.submit(["sleep", "300"], container_name="NULL")
    cluster.wait_status(task.task_id, RUNNING)
    pid = _pid(cluster, task.task_id)
    os.killpg(pid, signal.SIGSTOP)
    cluster.wait_status(task.task_id, {task_pb2.TASK_STATUS_PAUSED})
    os.killpg(pid, signal.SIGCONT)
    cluster.wait_status(task.task_id, RUNNING)
    cluster.tasks.KillTask(tpb.KillTaskRequest(task_id=task.task_id), timeout=30)


def test_mount_and_privileged_do_not_apply_to_null_tasks(cluster: ProcessCluster) -> None:
    result = cluster.cli("task", "submit", "--container", "NULL", "--privileged", "--", "true")
    assert result.returncode == 1
    assert "--mount and --privileged do not apply" in result.stderr


def test_runner_restart_readopts_a_running_host_process(fresh_cluster: ProcessCluster) -> None:
    cluster = fresh_cluster
    gate = cluster.root / "gate"
    script = f"echo before; while [ ! -e {gate} ]; do sleep 0.05; done; echo after; exit 5"
    task = cluster.submit(["sh", "-c", script], container_name="NULL")
    wait_for(lambda: cluster.read_log(task.task_id) == b"before\n", what="output before the crash")
    pid = _pid(cluster, task.task_id)
    cluster.kill_runner()
    assert _proc_state(pid) in ("S", "R"), "the process must outlive its runner"
    gate.touch()
    cluster.start_runner()
    final = cluster.wait_final(task.task_id)
    assert final.status == task_pb2.TASK_STATUS_FAILED and final.exit_code == 5
    assert cluster.read_log(task.task_id) == b"before\nafter\n"


def test_runner_that_cannot_readopt_reports_the_task_lost(fresh_cluster: ProcessCluster) -> None:
    # Its process ran on, untracked, after the task was lost (QA): the Runner stops it.
    cluster = fresh_cluster
    task = cluster.submit(["sleep", "600"], container_name="NULL")
    cluster.wait_status(task.task_id, RUNNING)
    pid = _pid(cluster, task.task_id)
    cluster.kill_runner()
    shutil.rmtree(_spool(cluster, task.task_id))  # the runner's local record is gone
    try:
        cluster.start_runner()
        final = cluster.wait_final(task.task_id)
        assert final.status == task_pb2.TASK_STATUS_LOST
        assert "could not be re-adopted" in final.error_message
        wait_for(lambda: _proc_state(pid) in ("gone", "Z"), what="the process stopped")
        runner_log = (cluster.root / f"runner-{cluster.runner_names[0]}.log").read_text()
        assert f"task {task.task_id}: its process {pid} runs without its spool folder" in runner_log
    finally:
        if _proc_state(pid) not in ("gone", "Z"):
            os.killpg(pid, signal.SIGKILL)
        time.sleep(0.1)


def test_a_start_the_runner_did_not_foresee_failing_fails_the_task(
    cluster: ProcessCluster,
) -> None:
    """A start that fails in a way the backend does not turn into a start error of its own
    (here: the task's working folder is a file) still ends the task, saying what failed,
    rather than leaving it assigning."""
    workdir = cluster.root / "local_temp"
    kept = cluster.root / "local_temp.kept"
    existed = workdir.exists()
    if existed:
        workdir.rename(kept)
    workdir.write_text("not a folder")
    try:
        task = cluster.submit(["true"], container_name="NULL")
        final = cluster.wait_final(task.task_id)
    finally:
        workdir.unlink()
        if existed:
            kept.rename(workdir)
    assert final.status == task_pb2.TASK_STATUS_FAILED
    assert final.error_message.startswith("the runner could not start it: ")
    assert "File exists" in final.error_message
    again = cluster.submit(["true"], container_name="NULL")
    assert cluster.wait_final(again.task_id).status == task_pb2.TASK_STATUS_COMPLETED


def test_a_host_process_says_in_its_timeline_which_limits_hold(cluster: ProcessCluster) -> None:
    """Without systemd as PID 1 a host process's memory size is not enforced (tasks.md);
    the task said nothing of it: its timeline read "container started", as a container's."""
    task = cluster.submit(["true"], container_name="NULL", memory="100M")
    cluster.wait_final(task.task_id)
    answer = cluster.tasks.GetTask(tpb.GetTaskRequest(task_id=task.task_id), timeout=10)
    [started] = [e.detail for e in answer.events if e.status == task_pb2.TASK_STATUS_RUNNING]
    if systemd_is_init():
        assert started == "process started in a systemd scope (its cores and memory enforced)"
    else:
        assert started == (
            "process started, pinned to its CPUs; its memory size is not enforced (systemd "
            "is not PID 1 on this node)"
        )
