"""Host-process tasks (ProcessBackend) as a Runner sees them, its own processes for real:
their HOME, and how a Runner whose handles were rebuilt (it registered again after a Host
restart) still sees them end or stay paused."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import time
from pathlib import Path

import pytest

from hakuriver_common.config import Config
from hakuriver_common.proto.hakuriver.v1 import runner_service_pb2 as rpb
from hakuriver_runner.process_backend import ProcessBackend


def test_a_host_process_gets_its_users_home_not_the_runners(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Runner's systemd unit pins HOME to the home of whoever wrote it (so its config's
    ~/ paths hold): its tasks get the home of the user they run as."""
    monkeypatch.setenv("HOME", str(tmp_path / "installer"))
    backend = ProcessBackend(
        Config(runner={"state_dir": tmp_path}, paths={"local_temp_dir": tmp_path / "work"})  # type: ignore[arg-type]
    )
    backend.cluster_id = "00c0ffee00c0ffee"
    dispatch = rpb.DispatchCommand(task_id=7, command="/bin/sh", arguments=["-c", 'echo "$HOME"'])
    task = backend.start(dispatch)
    assert task.popen is not None and task.popen.wait(10) == 0
    printed = (backend.root / "7" / "stdout").read_text().strip()
    assert printed == pwd.getpwuid(os.geteuid()).pw_dir != str(tmp_path / "installer")


def _backend(tmp_path: Path) -> ProcessBackend:
    backend = ProcessBackend(
        Config(runner={"state_dir": tmp_path}, paths={"local_temp_dir": tmp_path / "work"})  # type: ignore[arg-type]
    )
    backend.cluster_id = "00c0ffee00c0ffee"
    return backend


def test_a_process_that_ends_after_its_handle_was_rebuilt_is_seen_to_end(
    tmp_path: Path,
) -> None:
    """Rebuilt from its spool, the handle has no Popen: the process, this Runner's child,
    stays a zombie until reaped, and was taken for alive (its task ran for ever)."""
    backend = _backend(tmp_path)
    dispatch = rpb.DispatchCommand(task_id=8, command="/bin/sh", arguments=["-c", "exit 3"])
    backend.start(dispatch)
    rebuilt = backend.tasks()[8]
    assert rebuilt.popen is None
    deadline = time.monotonic() + 10
    while rebuilt.alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert backend.state(rebuilt)[0] == "exited"
    assert rebuilt.exit_code() == 3


def test_a_paused_process_is_still_paused_after_its_handle_was_rebuilt(tmp_path: Path) -> None:
    """Paused at once, several of them: one caught as its shell starts the command shows the
    shell waiting uninterruptibly on its stopped vforked child, not stopped itself (it was
    taken for running, about one pause in four)."""
    backend = _backend(tmp_path)
    ids = range(10, 20)
    tasks = [
        backend.start(rpb.DispatchCommand(task_id=i, command="sleep", arguments=["30"]))
        for i in ids
    ]
    try:
        for task in tasks:
            backend.pause(task)
        time.sleep(0.3)  # for every stop to land
        assert {i: backend.state(backend.tasks()[i])[0] for i in ids} == dict.fromkeys(
            ids, "paused"
        )
        for task in tasks:
            backend.resume(task)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(
            backend.state(backend.tasks()[i])[0] != "running" for i in ids
        ):
            time.sleep(0.05)
        assert {i: backend.state(backend.tasks()[i])[0] for i in ids} == dict.fromkeys(
            ids, "running"
        )
    finally:
        for task in tasks:
            backend.stop(task, 1)


def test_a_process_whose_spool_went_is_found_by_its_runner_only(tmp_path: Path) -> None:
    """A host process whose spool folder went (runner.state_dir moved or wiped while it
    ran) is an orphan to its own Runner, found by the name and cluster it carries; another
    Runner's, or another cluster's, is not, and one its spool records is no orphan."""
    backend = _backend(tmp_path)
    backend.runner_name = "node-a"
    started = [
        backend.start(rpb.DispatchCommand(task_id=i, command="sleep", arguments=["30"]))
        for i in (21, 22)
    ]
    try:
        shutil.rmtree(backend.root / "21")
        assert [(o.task_id, o.pid) for o in backend.orphans()] == [(21, started[0].pid)]
        for name, cluster in (("node-b", backend.cluster_id), ("node-a", "0123456789abcdef")):
            other = _backend(tmp_path / "other")
            other.runner_name, other.cluster_id = name, cluster
            assert other.orphans() == []
        [orphan] = backend.orphans()
        backend.stop(orphan, 0)
        assert started[0].popen is not None
        started[0].popen.wait(10)  # it ended (TimeoutExpired if not)
        assert backend.orphans() == []
        assert started[1].alive()
    finally:
        for task in started:
            backend.stop(task, 0)


def test_a_process_of_a_task_in_a_session_of_its_own_is_no_orphan(tmp_path: Path) -> None:
    """A task's process that made a session of its own (setsid: tmux, a daemon) leads its
    process group and carries the task's marker, yet is not the process its spool records:
    it was taken for an orphan and stopped at each registration of its Runner (a Host
    restart), its task still running."""
    backend = _backend(tmp_path)
    backend.runner_name = "node-a"
    pid_file = tmp_path / "child.pid"
    script = f"setsid sleep 30 & echo $! > {pid_file}; wait"
    task = backend.start(
        rpb.DispatchCommand(task_id=31, command="/bin/sh", arguments=["-c", script])
    )
    child = 0
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            text = pid_file.read_text().strip() if pid_file.exists() else ""
            if text and os.getpgid(int(text)) == int(text):  # its session is made
                child = int(text)
                break
            time.sleep(0.05)
        assert child, "the task's child made no session of its own"
        assert backend.orphans() == []
    finally:
        backend.stop(task, 0)
        if child:
            os.killpg(child, signal.SIGKILL)


def test_a_host_process_sees_only_its_gpus_and_none_without(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A host process without GPUs had no CUDA_VISIBLE_DEVICES (or the Runner's, or its own
    submission's): unset, CUDA shows it every GPU of the node, other tasks' included. Empty
    is CUDA's "none"; with GPUs it names exactly the task's."""
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    backend = _backend(tmp_path)
    show = ["-c", 'echo "${CUDA_VISIBLE_DEVICES-unset}"']
    dispatches = [
        rpb.DispatchCommand(task_id=41, command="/bin/sh", arguments=show),
        rpb.DispatchCommand(
            task_id=42, command="/bin/sh", arguments=show, env={"CUDA_VISIBLE_DEVICES": "0"}
        ),
        rpb.DispatchCommand(task_id=43, command="/bin/sh", arguments=show, gpu_ids=[1, 3]),
    ]
    for dispatch in dispatches:
        task = backend.start(dispatch)
        assert task.popen is not None and task.popen.wait(10) == 0
    seen = [(backend.root / str(d.task_id) / "stdout").read_text() for d in dispatches]
    assert seen == ["\n", "\n", "1,3\n"]
