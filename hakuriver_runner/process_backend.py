"""Tasks run directly on the runner host (``--container NULL``), without Docker.

With systemd as PID 1 the command runs in a transient scope (``systemd-run --scope``) with
CPUQuota, MemoryMax and AllowedCPUs, so systemd enforces the limits. Otherwise it runs as a
supervised process group pinned to its CPU ids (``taskset``, or for a NUMA target
``numactl --physcpubind --membind``, which also binds its memory to the node); memory size
is then not enforced.

Output and the exit code go to files in a spool folder under the Runner's private
``state_dir`` (not ``local_temp_dir``: every container task of the node mounts that, and
could read or forge a host process's output, exit code and PID record), so a restarted
runner re-adopts a task whose process is still alive (checked by PID and start time) and
resumes following its output; one it cannot re-adopt ends with a clear error. The process
gets the Runner's environment without its secrets (``without_secrets``), and RUNNER_VAR
naming the Runner and its cluster: a process whose spool folder went (``runner.state_dir``
moved or wiped while it ran) is still found (``orphans``), to be stopped.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pwd
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

from hakuriver_common.config import Config
from hakuriver_common.credentials import without_secrets
from hakuriver_common.proto.hakuriver.v1 import runner_service_pb2 as rpb
from hakuriver_common.service import systemd_is_init
from hakuriver_common.task_variables import RUNNER_VAR, TASK_ID_VAR
from hakuriver_runner.backend import (
    Emit,
    ExitInfo,
    LogFollow,
    StartError,
    emit_past,
    id_list,
    task_variables,
)

log = logging.getLogger(__name__)

POLL_SECONDS = 0.02
# How long a pause or resume waits for the process to show it, and how often it looks.
SETTLE_SECONDS = 2.0
SETTLE_POLL_SECONDS = 0.002
# Under runner.state_dir: one folder per host-process task.
SPOOL_FOLDER = "tasks"
READ_CHUNK = 64 * 1024
# Runs the command, then records its exit code atomically next to its output.
WRAPPER = '"$@"; code=$?; echo $code > "$0.tmp" && mv "$0.tmp" "$0"; exit $code'


# Two starts this close are one: /proc counts starts in clock ticks (10 ms at 100 Hz).
SAME_START_SECONDS = 0.001


def started_since_boot(pid: int) -> float | None:
    """Seconds from boot to the start of process ``pid``; None when there is none.

    Unlike its start on the wall clock, this does not move when the clock is stepped (NTP),
    so a process recorded by an earlier Runner is told apart from a later one that got the
    same PID.
    """
    try:
        return psutil.Process(pid).create_time() - psutil.boot_time()
    except psutil.Error:
        return None


def _status(pid: int) -> str | None:
    """psutil's status of process ``pid`` (zombie, stopped, ...); None when there is none."""
    try:
        return str(psutil.Process(pid).status())
    except psutil.Error:
        return None


def _stopped(pid: int) -> bool:
    """Whether process ``pid``'s task is stopped (paused). Stopped while it was starting a
    command, the shell waits uninterruptibly for its vforked child, itself stopped before
    its exec: only the child shows it."""
    status = _status(pid)
    if status == psutil.STATUS_DISK_SLEEP:
        with contextlib.suppress(psutil.Error):
            return any(c.status() == psutil.STATUS_STOPPED for c in psutil.Process(pid).children())
    return status == psutil.STATUS_STOPPED


def _recorded_start(meta: dict[str, Any]) -> float:
    """The start in a spool record. Older Runners recorded /proc's clock ticks since boot
    (``start_time``): a Runner upgraded while host processes run still knows them."""
    if "started_since_boot" in meta:
        return float(meta["started_since_boot"])
    return int(meta.get("start_time") or 0) / os.sysconf("SC_CLK_TCK")


@dataclass
class HostProcess:
    task_id: int
    spool: Path
    pid: int
    started_since_boot: float
    started_at: datetime
    popen: subprocess.Popen[bytes] | None = None
    paused: bool = False

    def alive(self) -> bool:
        if self.popen is not None:
            return self.popen.poll() is None
        now = started_since_boot(self.pid)
        if now is None or abs(now - self.started_since_boot) >= SAME_START_SECONDS:
            return False
        if _status(self.pid) == psutil.STATUS_ZOMBIE:
            # It exited (its code is in the spool). This Runner started it but lost its
            # Popen (its handles were rebuilt when it registered again): reap it.
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self.pid, os.WNOHANG)
            return False
        return True

    def exit_code(self) -> int | None:
        if self.popen is not None:
            code = self.popen.wait()
            return 128 - code if code < 0 else code
        try:
            return int((self.spool / "exit_code").read_text())
        except (OSError, ValueError):
            return None


def _group_left(handle: HostProcess) -> bool:
    """Whether a process of the task's group is there: its leader (reaped by ``alive`` once
    it exited, so that a zombie does not count), or any other."""
    if handle.alive():
        return True
    try:
        os.killpg(handle.pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def started_detail() -> str:
    """A started host process's timeline entry: which of its limits hold on this node."""
    if systemd_is_init():
        return "process started in a systemd scope (its cores and memory enforced)"
    return (
        "process started, pinned to its CPUs; its memory size is not enforced (systemd is "
        "not PID 1 on this node)"
    )


class ProcessBackend:
    def __init__(self, config: Config, runner_name: str = "") -> None:
        self.config = config
        self.root = config.runner.state_dir.expanduser() / SPOOL_FOLDER
        # The cluster this Runner belongs to (set by the session), recorded with each task.
        self.cluster_id = ""
        self.runner_name = runner_name

    def _marker(self) -> str:
        """RUNNER_VAR's value in this Runner's processes."""
        return f"{self.runner_name}@{self.cluster_id}"

    def _spool(self, task_id: int) -> Path:
        return self.root / str(task_id)

    def _argv(self, dispatch: rpb.DispatchCommand, exit_file: Path) -> list[str]:
        command = [dispatch.command, *dispatch.arguments]
        if dispatch.HasField("numa_node_id"):
            numactl = shutil.which(self.config.paths.numactl_path)
            if numactl is None:
                raise StartError(
                    f"numactl not found ({self.config.paths.numactl_path!r}): needed to bind "
                    f"the task to NUMA node {dispatch.numa_node_id}"
                )
            binding = [f"--membind={dispatch.numa_node_id}"]
            if dispatch.cpus:
                binding.insert(0, "--physcpubind=" + id_list(dispatch.cpus))
            else:
                binding.insert(0, f"--cpunodebind={dispatch.numa_node_id}")
            command = [numactl, *binding, "--", *command]
        elif dispatch.cpus and not systemd_is_init():
            taskset = shutil.which("taskset")
            if taskset is None:
                raise StartError("taskset not found: needed to pin the task to its CPUs")
            command = [taskset, "--cpu-list", id_list(dispatch.cpus), *command]
        argv = ["/bin/sh", "-c", WRAPPER, str(exit_file), *command]
        if systemd_is_init():
            properties = [f"CPUQuota={dispatch.cores * 100}%"]
            if dispatch.memory_bytes:
                properties.append(f"MemoryMax={dispatch.memory_bytes}")
            if dispatch.cpus:
                properties.append("AllowedCPUs=" + id_list(dispatch.cpus))
            scope = [
                "systemd-run",
                "--scope",
                "--quiet",
                f"--unit=hakuriver-task-{dispatch.task_id}",
            ]
            argv = [*scope, *(f"--property={p}" for p in properties), "--", *argv]
        return argv

    def start(self, dispatch: rpb.DispatchCommand) -> HostProcess:
        existing = self.tasks().get(dispatch.task_id)
        if existing is not None:
            return existing
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        spool = self._spool(dispatch.task_id)
        spool.mkdir(exist_ok=True)
        argv = self._argv(dispatch, spool / "exit_code")
        workdir = self.config.paths.path("local_temp_dir")
        workdir.mkdir(parents=True, exist_ok=True)
        with (spool / "stdout").open("wb") as out, (spool / "stderr").open("wb") as err:
            try:
                popen = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=err,
                    env={
                        **without_secrets(dict(os.environ)),
                        # The home of the user it runs as, not the Runner's HOME (a systemd
                        # unit pins that to whoever wrote it: hakuriver.init service).
                        "HOME": pwd.getpwuid(os.geteuid()).pw_dir,
                        **dict(dispatch.env),
                        **task_variables(dispatch, dispatch.gpu_ids),
                        RUNNER_VAR: self._marker(),
                    },
                    cwd=workdir,
                    start_new_session=True,
                )
            except OSError as exc:
                shutil.rmtree(spool, ignore_errors=True)
                raise StartError(
                    f"cannot start {shlex.join(argv[-len(dispatch.arguments) - 1 :])}: {exc}"
                ) from None
        started = datetime.now(UTC)
        process = HostProcess(
            dispatch.task_id, spool, popen.pid, started_since_boot(popen.pid) or 0.0, started, popen
        )
        meta = {
            "pid": process.pid,
            "started_since_boot": process.started_since_boot,
            "started_at": started.isoformat(),
            "cluster": self.cluster_id,
        }
        (spool / "process.json").write_text(json.dumps(meta))
        return process

    def tasks(self) -> dict[int, HostProcess]:
        found: dict[int, HostProcess] = {}
        if not self.root.is_dir():
            return found
        for spool in self.root.iterdir():
            try:
                meta = json.loads((spool / "process.json").read_text())
                task_id = int(spool.name)
            except (OSError, ValueError):
                continue
            if not self.cluster_id or meta.get("cluster") != self.cluster_id:
                continue
            pid = int(meta["pid"])
            found[task_id] = HostProcess(
                task_id,
                spool,
                pid,
                _recorded_start(meta),
                datetime.fromisoformat(meta["started_at"]),
                # Paused before its handle was rebuilt: its processes are still stopped.
                paused=_stopped(pid),
            )
        return found

    def task_states(self) -> dict[int, str]:
        """Paused when the task's process is stopped (by the Runner or by a SIGSTOP from
        outside), as a Runner that restarts finds it."""
        return {task_id: self.state(handle)[0] for task_id, handle in self.tasks().items()}

    def orphans(self) -> list[HostProcess]:
        """This Runner's processes (RUNNER_VAR names it and its cluster) of tasks that have
        no spool folder: they cannot be followed nor re-adopted. Process-group leaders only
        (the wrapper each task runs in, and any process of a task that made a session of
        its own: tmux, a daemon); none before the Runner knows its cluster. A task with its
        folder is no orphan, whichever of its processes carries the marker, nor is one
        being started (its folder is made before its process, its record after)."""
        if not self.cluster_id:
            return []
        found: list[HostProcess] = []
        for process in psutil.process_iter():
            try:
                if os.getpgid(process.pid) != process.pid:
                    continue
                environment = process.environ()
                created = process.create_time()
            except (psutil.Error, OSError):  # gone meanwhile, a zombie, another user's
                continue
            if environment.get(RUNNER_VAR) != self._marker():
                continue
            named = environment.get(TASK_ID_VAR, "")
            task_id = int(named) if named.isdigit() else 0
            if task_id and not self._spool(task_id).exists():
                started = datetime.fromtimestamp(created, UTC)
                since_boot = created - psutil.boot_time()
                found.append(
                    HostProcess(task_id, self._spool(task_id), process.pid, since_boot, started)
                )
        return found

    def state(self, handle: HostProcess) -> tuple[str, datetime | None]:
        if not handle.alive():
            return "exited", handle.started_at
        return ("paused" if handle.paused else "running"), handle.started_at

    def follow(
        self,
        handle: HostProcess,
        skips: tuple[int, int],
        emits: tuple[Emit, Emit],
        follow: LogFollow,
    ) -> tuple[int, int]:
        def blocks() -> Iterator[tuple[int, bytes]]:
            with (
                (handle.spool / "stdout").open("rb") as out,
                (handle.spool / "stderr").open("rb") as err,
            ):
                files = (out, err)
                while True:
                    read = [(index, f.read(READ_CHUNK)) for index, f in enumerate(files)]
                    got = [(index, data) for index, data in read if data]
                    if got:
                        yield from got
                        continue
                    if not handle.alive():
                        for index, f in enumerate(files):
                            if rest := f.read():
                                yield index, rest
                        return
                    if follow.wait(POLL_SECONDS):
                        return

        return emit_past(blocks(), skips, emits, follow)

    def wait(self, handle: HostProcess) -> ExitInfo:
        while handle.alive():
            time.sleep(POLL_SECONDS)
        code = handle.exit_code()
        error = (
            ""
            if code is not None
            else "the process ended while the runner was down; exit code unknown"
        )
        return ExitInfo(code, False, handle.started_at, datetime.now(UTC), error)

    def _signal(self, handle: HostProcess, sig: int) -> None:
        if handle.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(handle.pid, sig)

    def stop(self, handle: HostProcess, grace: float) -> None:
        """SIGTERM to the task's process group, SIGKILL to what is left of it after
        ``grace``. The wrapper leading the group ends on SIGTERM, but a process of it that
        ignores SIGTERM runs on: the group is signalled until none of it is left (its id
        stays theirs while any of them runs), not only while its leader is."""
        if not handle.alive():
            return
        self._signal(handle, signal.SIGCONT)
        self._signal(handle, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while _group_left(handle) and time.monotonic() < deadline:
            time.sleep(POLL_SECONDS)
        if _group_left(handle):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(handle.pid, signal.SIGKILL)

    def pause(self, handle: HostProcess) -> None:
        """Answered once the process shows stopped, as Docker's pause (the freezer) is: a
        signal is delivered when the kernel gets to it, and PauseTask answered while the
        process still ran (seen in the e2e tier under load)."""
        self._signal(handle, signal.SIGSTOP)
        handle.paused = True
        self._settle(handle, stopped=True)

    def resume(self, handle: HostProcess) -> None:
        self._signal(handle, signal.SIGCONT)
        handle.paused = False
        self._settle(handle, stopped=False)

    @staticmethod
    def _settle(handle: HostProcess, stopped: bool) -> None:
        """Wait, up to SETTLE_SECONDS, for the task's process to show ``stopped`` (or not);
        one that ended meanwhile has nothing more to show."""
        deadline = time.monotonic() + SETTLE_SECONDS
        while handle.alive() and _stopped(handle.pid) != stopped:
            if time.monotonic() > deadline:
                log.warning(
                    "process %s: still %s after the signal",
                    handle.pid,
                    "running" if stopped else "stopped",
                )
                return
            time.sleep(SETTLE_POLL_SECONDS)

    def remove(self, task_id: int) -> None:
        shutil.rmtree(self._spool(task_id), ignore_errors=True)
