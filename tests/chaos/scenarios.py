"""The fault scenarios. Each starts its own cluster (a real Host, Runners and containers),
runs a stream of numbered tasks through one fault and returns an ``Outcome``.

Every scenario has the same shape: a long task that spans the fault (so a task is certainly
running while it strikes), a few tasks submitted before it, more submitted while it lasts
(a background stream), the recovery, more tasks after it; then ``settle`` checks that every
task reached a final state it may have within a bound, ran once, has byte-exact output (a
task a fault ended keeps a byte-exact prefix) and that the node's cores and memory are free
again with no container left.

``Scale`` says how big: ``SHORT`` for the normal suite (tests/e2e/test_chaos.py, a few
tasks, heartbeats every 0.5 s), ``FULL`` for ``make chaos`` (more tasks and the real 5 s and
60 s cuts against a 30 s grace period).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc

from hakuriver_common.docker_errors import daemon_address
from hakuriver_common.proto.hakuriver.v1 import (
    node_pb2,
    node_service_pb2 as npb,
    task_pb2,
    task_service_pb2 as tpb,
)
from tests.chaos.checks import STATUS_NAME, Outcome, events, list_all_tasks, read_stdout, settle
from tests.chaos.proxy import Mode, chaos_proxy
from tests.chaos.stream import COMPLETED, StreamTask, TaskStream, numbered_task
from tests.chaos.system import Tmpfs, restart_dockerd
from tests.e2e.harness import ProcessCluster

FAILED = task_pb2.TASK_STATUS_FAILED
LOST = task_pb2.TASK_STATUS_LOST
UNKNOWN = task_pb2.TASK_STATUS_UNKNOWN
RUNNING = task_pb2.TASK_STATUS_RUNNING


@dataclass(frozen=True)
class Scale:
    name: str
    lines: int  # lines per stream task
    sleep: float  # seconds between its lines
    before: int  # tasks submitted before the fault
    during: int  # tasks submitted while it lasts
    after: int  # tasks submitted after the recovery
    heartbeat: float  # timing.heartbeat_interval
    factor_within: float  # heartbeat_timeout_factor where a fault stays within the grace
    factor_beyond: float  # heartbeat_timeout_factor where a fault outlasts the grace
    short_cut: float  # the "5 s" cut: within the grace period
    long_cut: float  # the "60 s" cut: beyond the grace period
    away: float  # how long the Runner is away (frozen or dead): beyond the grace period
    burst: int  # submits in flight when the Host is killed
    bound: float  # seconds after recovery for every task to be final
    big_output: int  # bytes the storage-full task prints

    def grace(self, factor: float) -> float:
        return self.heartbeat * factor


SHORT = Scale(
    name="short",
    lines=10,
    sleep=0.1,
    before=2,
    during=2,
    after=2,
    heartbeat=0.5,
    factor_within=20,  # grace 10 s: the 5 s cut stays within it
    factor_beyond=4,  # grace 2 s: the scaled-down "60 s" cut (6 s) outlasts it 3x
    short_cut=5,
    long_cut=6,
    away=6,
    burst=12,
    bound=60,
    big_output=3 * 1024 * 1024,
)

FULL = Scale(
    name="full",
    lines=40,
    sleep=0.1,
    before=6,
    during=8,
    after=6,
    heartbeat=1.0,
    factor_within=30,  # grace 30 s, as in production (heartbeat 5 s x 6)
    factor_beyond=30,
    short_cut=5,
    long_cut=60,
    away=45,
    burst=60,
    bound=240,
    big_output=4 * 1024 * 1024,
)

LOST_AFTER = 3600  # timing.lost_after_seconds: far beyond every fault here


# ----- helpers ----------------------------------------------------------------------------


@contextmanager
def chaos_cluster(
    root: Path,
    scale: Scale,
    factor: float,
    *,
    runners: int = 1,
    runner_env: dict[str, str] | None = None,
    runner_names: list[str] | None = None,
) -> Iterator[ProcessCluster]:
    """A started cluster with ``runners`` Runners (named ``runner_names`` if given), each
    started with ``runner_env``."""
    root.mkdir(parents=True, exist_ok=True)
    cluster = ProcessCluster(
        root,
        runner_count=0,
        heartbeat_interval=scale.heartbeat,
        heartbeat_timeout_factor=factor,
        extra_sections={"timing": f"lost_after_seconds = {LOST_AFTER}"},
    )
    try:
        cluster.start()
        names = runner_names or [f"r{cluster.tag}-{i}" for i in range(runners)]
        for name in names:
            cluster.start_runner(name, env=runner_env)
        yield cluster
    finally:
        cluster.stop()


def wait_lines(cluster: ProcessCluster, task: StreamTask, lines: int, timeout: float = 30) -> None:
    """Until the Host holds at least ``lines`` lines of the task's output."""
    assert task.task_id is not None, task.submit_error
    deadline = time.monotonic() + timeout
    while read_stdout(cluster, task.task_id).count(b"\n") < lines:
        if time.monotonic() > deadline:
            status = STATUS_NAME[cluster.get(task.task_id).status]
            raise AssertionError(f"task {task.task_id} ({status}) printed < {lines} lines")
        time.sleep(0.1)


def long_task(stream: TaskStream, scale: Scale, spans: float) -> StreamTask:
    """A task that keeps printing for ``spans`` seconds plus a margin, started and printing
    before this returns."""
    task = stream.submit(numbered_task(int((spans + 3) / scale.sleep), scale.sleep))
    wait_lines(stream.cluster, task, 3)
    return task


def node_of(cluster: ProcessCluster, name: str) -> node_pb2.Node:
    for node in cluster.nodes.ListNodes(npb.ListNodesRequest(), timeout=5).nodes:
        if node.hostname == name:
            return node
    return node_pb2.Node(hostname=name)


def node_status(cluster: ProcessCluster, name: str) -> int:
    return node_of(cluster, name).status


def log_lines(cluster: ProcessCluster, name: str, pattern: str, limit: int = 12) -> list[str]:
    path = cluster.root / name
    if not path.exists():
        return []
    regex = re.compile(pattern)
    found = [line for line in path.read_text(errors="replace").splitlines() if regex.search(line)]
    return found[-limit:]


def attach_logs(cluster: ProcessCluster, outcome: Outcome, tasks: list[StreamTask]) -> None:
    """On a broken guarantee, the log lines about the tasks and the warnings of each
    process, for the report."""
    if outcome.ok:
        return
    ids = "|".join(str(t.task_id) for t in tasks if t.task_id is not None) or "-"
    noise = r"hakuriver\.audit|first start|default environment"
    pattern = rf"^(?!.*({noise})).*({ids}|WARNING|ERROR|Traceback)"
    for name in ["host.log", *(f"runner-{r}.log" for r in cluster.runner_names)]:
        for line in log_lines(cluster, name, pattern, limit=15):
            outcome.notes.append(f"{name}: {line[:300]}")


def snapshot(cluster: ProcessCluster, tasks: list[StreamTask]) -> str:
    """The tasks' statuses now, for the report (what the fault hit)."""
    found = []
    for task in tasks:
        if task.task_id is not None:
            with contextlib.suppress(grpc.RpcError):
                found.append(f"{task.task_id}:{STATUS_NAME[cluster.get(task.task_id).status]}")
    return " ".join(found)


def all_allowed(tasks: list[StreamTask], *statuses: int, note: str = "") -> None:
    for task in tasks:
        task.allowed = {COMPLETED, *statuses}
        task.note = note


def unknown_seen(cluster: ProcessCluster, task: StreamTask) -> bool:
    assert task.task_id is not None
    return UNKNOWN in events(cluster, task.task_id)


# ----- (a) Runner SIGKILL and restart -----------------------------------------------------


def runner_sigkill(root: Path, scale: Scale) -> Outcome:
    """The Runner is SIGKILLed and restarted at once: its containers keep running, the new
    Runner re-adopts them; every task completes once with all of its output."""
    outcome = Outcome("runner SIGKILL + restart")
    with chaos_cluster(root, scale, scale.factor_within, runners=1) as cluster:
        stream = TaskStream(cluster, scale.lines, scale.sleep)
        started = time.monotonic()
        long = long_task(stream, scale, 2)
        stream.submit_many(scale.before)
        at_fault = snapshot(cluster, stream.tasks)
        cluster.kill_runner()
        outcome.notes.append(f"at the kill: {at_fault}")
        stream.submit_in_background(scale.during, every=0.2)
        time.sleep(0.5)
        cluster.start_runner(cluster.runner_names[0])
        stream.join()
        stream.submit_many(scale.after)
        settle(cluster, outcome, stream.tasks, bound=scale.bound, started=started)
        if UNKNOWN in events(cluster, long.task_id or 0):
            outcome.notes.append("the long task went unknown (restart slower than the grace?)")
        attach_logs(cluster, outcome, stream.tasks)
    return outcome


# ----- (b) Runner away longer than the grace period ---------------------------------------


def runner_away(root: Path, scale: Scale, how: str) -> Outcome:
    """The Runner is away longer than the grace period, ``how`` = "sigstop" (frozen, its
    connection open) or "sigkill" (dead, restarted later). Its running task shows
    ``unknown`` meanwhile and resumes ``running`` when the Runner is back with the container
    still alive; it completes byte-exact; nothing is lost."""
    away = scale.away
    grace = scale.grace(scale.factor_beyond)
    outcome = Outcome(f"runner away {away:.0f}s > grace {grace:.0f}s ({how})")
    with chaos_cluster(root, scale, scale.factor_beyond, runners=1) as cluster:
        name = cluster.runner_names[0]
        stream = TaskStream(cluster, scale.lines, scale.sleep)
        started = time.monotonic()
        long = long_task(stream, scale, away + 2)
        stream.submit_many(scale.before)
        proc = cluster.runners[name]
        outcome.notes.append(f"when it went away: {snapshot(cluster, stream.tasks)}")
        if how == "sigstop":
            os.kill(proc.pid, signal.SIGSTOP)
        else:
            cluster.kill_runner(name)
        went_away = time.monotonic()
        try:
            stream.submit_in_background(scale.during, every=away / max(1, scale.during + 1))
            deadline = went_away + grace + 3 * scale.heartbeat + 5
            while cluster.get(long.task_id or 0).status != UNKNOWN:
                if time.monotonic() > min(deadline, went_away + away):
                    outcome.problems.append(
                        f"task {long.task_id} never showed unknown while its runner was away "
                        f"(status {STATUS_NAME[cluster.get(long.task_id or 0).status]})"
                    )
                    break
                time.sleep(0.1)
            if (left := went_away + away - time.monotonic()) > 0:
                time.sleep(left)
        finally:
            if how == "sigstop":
                os.kill(proc.pid, signal.SIGCONT)
        if how == "sigkill":
            cluster.start_runner(name)
        back = time.monotonic()
        stream.join()
        # Back with the container alive: running again (or already completed).
        while cluster.get(long.task_id or 0).status == UNKNOWN:
            if time.monotonic() > back + 15:
                outcome.problems.append(f"task {long.task_id} still unknown 15s after return")
                break
            time.sleep(0.1)
        stream.submit_many(scale.after)
        settle(cluster, outcome, stream.tasks, bound=scale.bound, started=started)
        history = [STATUS_NAME[s] for s in events(cluster, long.task_id or 0)]
        outcome.notes.append(f"long task {long.task_id}: {' -> '.join(history)}")
        attach_logs(cluster, outcome, stream.tasks)
    return outcome


# ----- (c) Host SIGKILL during a burst of submits -----------------------------------------


def host_sigkill_burst(root: Path, scale: Scale) -> Outcome:
    """The Host is SIGKILLed while submits are in flight, then restarted. Every submit it
    answered is a task that completes; one it did not answer either never became a task or
    is one task that completes (its client just got no answer): never two."""
    outcome = Outcome("Host SIGKILL in a submit burst")
    with chaos_cluster(root, scale, scale.factor_within, runners=1) as cluster:
        stream = TaskStream(cluster, scale.lines, scale.sleep, submit_timeout=5)
        started = time.monotonic()
        long = long_task(stream, scale, 3)
        burst = [numbered_task(scale.lines, scale.sleep) for _ in range(scale.burst)]
        with ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(stream.submit, task) for task in burst]
            deadline = time.monotonic() + 20
            while sum(t.task_id is not None for t in burst) < scale.burst // 3:
                assert time.monotonic() < deadline, "the burst's submits were not answered"
                time.sleep(0.005)
            cluster.kill_host()
            for future in futures:
                future.result(30)
        cluster.start_host()
        unanswered = [t for t in burst if t.task_id is None]
        by_key: dict[str, list[int]] = {}
        for found in list_all_tasks(cluster):
            for task in unanswered:
                if any(task.key in arg for arg in found.arguments):
                    by_key.setdefault(task.key, []).append(found.task_id)
        created_anyway = 0
        for task in unanswered:
            ids = by_key.get(task.key, [])
            if len(ids) > 1:
                outcome.problems.append(f"one unanswered submit became {len(ids)} tasks: {ids}")
            if ids:
                task.task_id = ids[0]
                created_anyway += 1
        outcome.notes.append(
            f"burst of {scale.burst}: {scale.burst - len(unanswered)} answered, "
            f"{len(unanswered)} unanswered ({created_anyway} of them exist anyway); "
            f"long task {long.task_id} ran through the kill"
        )
        stream.submit_many(scale.after)
        settle(cluster, outcome, stream.tasks, bound=scale.bound, started=started)
        attach_logs(cluster, outcome, stream.tasks)
    return outcome


# ----- (d) the Docker daemon away: restarted, or cut off from the Runner ------------------


def dockerd_restart(root: Path, scale: Scale) -> Outcome:
    """The Docker daemon restarts (without live-restore its containers are stopped): see
    ``_docker_gone``. Stops every container on the daemon, not only the suite's; returns only
    once dockerd is healthy."""
    return _docker_gone(root, scale, "dockerd restart", lambda cluster: restart_dockerd())


def docker_away(root: Path, scale: Scale) -> Outcome:
    """What a restart of the Docker daemon does to one Runner, the shared daemon left alone:
    the Runner reaches it through a proxy (``DOCKER_HOST``), which drops every connection
    (its waits and output streams reset, new ones refused) while the Runner's containers are
    stopped as a restart without live-restore stops them (SIGTERM, SIGKILL after 10 s), and
    passes again after a few heartbeats. See ``_docker_gone``."""
    address = daemon_address()
    if not address.startswith("unix://"):
        raise AssertionError(f"DOCKER_HOST {address}: the proxy forwards to a unix socket only")
    with chaos_proxy("", 0, target_socket=address.removeprefix("unix://")) as proxy:

        def cut_off(cluster: ProcessCluster) -> float:
            began = time.monotonic()
            proxy.set_mode("drop")
            mine = cluster.docker.containers.list(
                filters={"label": f"hakuriver.runner={cluster.runner_names[0]}"}
            )
            with ThreadPoolExecutor(max(1, len(mine))) as pool:
                list(pool.map(lambda c: c.stop(timeout=DOCKER_STOP_SECONDS), mine))
            time.sleep(
                max(0.0, began + DOCKER_AWAY_HEARTBEATS * scale.heartbeat - time.monotonic())
            )
            proxy.set_mode("pass")
            return time.monotonic() - began

        env = {"DOCKER_HOST": f"tcp://127.0.0.1:{proxy.port}"}
        return _docker_gone(root, scale, "Docker away", cut_off, runner_env=env)


# How Docker stops a container when the daemon stops (its default stop timeout); for how many
# heartbeats at least the daemon is away from the Runner (a restart takes a few seconds).
DOCKER_STOP_SECONDS = 10
DOCKER_AWAY_HEARTBEATS = 6


def _docker_gone(
    root: Path,
    scale: Scale,
    name: str,
    fault: Callable[[ProcessCluster], float],
    runner_env: dict[str, str] | None = None,
) -> Outcome:
    """The Docker daemon goes away from the Runner and comes back, its containers stopped
    meanwhile (``fault``, returning once the daemon answers again, with the seconds it was
    away): the tasks it stopped end failed or lost with a reason within a few heartbeats of
    the daemon's return, their output a byte-exact prefix, never run again; a kill of one
    answers at once; tasks after it run normally; the Runner stays up."""
    outcome = Outcome(name)
    with chaos_cluster(root, scale, scale.factor_within, runner_env=runner_env) as cluster:
        stream = TaskStream(cluster, scale.lines, scale.sleep)
        started = time.monotonic()
        long = long_task(stream, scale, 20)
        victim = long_task(stream, scale, 20)
        stream.submit_many(scale.before)
        hit = list(stream.tasks)
        all_allowed(hit, FAILED, LOST, note="(running or queued when Docker went away)")
        for task in (long, victim):
            task.allowed = {FAILED, LOST}
        outcome.notes.append(f"when Docker went away: {snapshot(cluster, stream.tasks)}")
        fault_started = time.monotonic()
        away = fault(cluster)
        healthy = time.monotonic()
        outcome.notes.append(f"Docker away {away:.1f}s")
        # A kill of a task whose container vanished answers at once.
        kill_started = time.monotonic()
        try:
            cluster.tasks.KillTask(tpb.KillTaskRequest(task_id=victim.task_id or 0), timeout=30)
            answer = "killed"
        except grpc.RpcError as exc:
            answer = exc.code().name
        kill_took = time.monotonic() - kill_started
        outcome.notes.append(f"kill of task {victim.task_id} after Docker came back: {answer}, "
                             f"{kill_took:.1f}s")  # fmt: skip
        if kill_took > 3:
            outcome.problems.append(f"kill of task {victim.task_id} took {kill_took:.1f}s")
        victim.allowed = {FAILED, LOST, task_pb2.TASK_STATUS_KILLED}
        # Noticed within about one heartbeat of Docker being back (slack for the 2 cores).
        notice_bound = 2 * scale.heartbeat + 5
        while cluster.get(long.task_id or 0).status not in {FAILED, LOST}:
            if time.monotonic() > healthy + notice_bound:
                current = cluster.get(long.task_id or 0)
                outcome.problems.append(
                    f"task {long.task_id} still {STATUS_NAME[current.status]} "
                    f"{notice_bound:.0f}s after Docker was back "
                    f"({time.monotonic() - fault_started:.0f}s after it went away)"
                )
                break
            time.sleep(0.1)
        else:
            outcome.notes.append(
                f"task {long.task_id} ended {time.monotonic() - healthy:.1f}s after Docker "
                f"was back: {cluster.get(long.task_id or 0).error_message!r}"
            )
        stream.submit_in_background(scale.during, every=0.2)
        stream.join()
        stream.submit_many(scale.after)
        settle(cluster, outcome, stream.tasks, bound=scale.bound, started=started)
        if cluster.runners[cluster.runner_names[0]].poll() is not None:
            outcome.problems.append("the Runner exited while Docker was away")
        attach_logs(cluster, outcome, stream.tasks)
    return outcome


# ----- (e) output storage full ------------------------------------------------------------

STORAGE_WORDS = re.compile(r"storage|space|ENOSPC|full", re.IGNORECASE)


class NodeWatch:
    """Polls a node every 0.1 s from a thread while the storage is full: when it was seen
    anything but online, and the output problems it showed."""

    def __init__(self, cluster: ProcessCluster, name: str) -> None:
        self.offline_seen: list[float] = []
        self.problems_seen: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, args=(cluster, name), daemon=True)
        self._thread.start()

    def _watch(self, cluster: ProcessCluster, name: str) -> None:
        while not self._stop.wait(0.1):
            with contextlib.suppress(grpc.RpcError):
                node = node_of(cluster, name)
                if node.status != node_pb2.NODE_STATUS_ONLINE:
                    self.offline_seen.append(time.monotonic())
                if node.output_problem:
                    self.problems_seen.append(node.output_problem)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


def storage_full(root: Path, scale: Scale) -> Outcome:
    """The Host's output folder (``shared_dir/task_outputs``) is a 2 MiB tmpfs. A task
    printing more than fits ends failed with an error about storage, its partial output
    kept byte-exact; the Runner stays connected; the node shows the condition while it
    lasts; tasks after space returns (the tmpfs grown) run normally and clear it."""
    outcome = Outcome("output storage full (2 MiB tmpfs)")
    outputs = root / "shared" / "task_outputs"
    tmpfs = Tmpfs(outputs, "2m")
    try:
        with chaos_cluster(root, scale, scale.factor_within, runners=1) as cluster:
            name = cluster.runner_names[0]
            stream = TaskStream(cluster, scale.lines, scale.sleep)
            started = time.monotonic()
            for task in stream.submit_many(scale.before):
                cluster.wait_final(task.task_id or 0)
            line = 200
            big = stream.submit(numbered_task(scale.big_output // line, 0, width=line - 1))
            big.allowed = {FAILED}
            watch = NodeWatch(cluster, name)
            during = stream.submit_many(scale.during)
            all_allowed(during, FAILED, note="(ran while the storage was full)")
            final = cluster.wait_final(big.task_id or 0, timeout=scale.bound)
            for task in during:
                task.final = cluster.wait_final(task.task_id or 0, timeout=scale.bound)
            watch.stop()
            kept = len(read_stdout(cluster, big.task_id or 0))
            outcome.notes.append(
                f"big task {big.task_id}: {STATUS_NAME[final.status]}, "
                f"{final.error_message!r}, {kept} of {len(big.expected)} bytes kept; "
                f"{tmpfs.free_bytes()} bytes free"
            )
            outcome.problems += _while_full(cluster, name, big.task_id or 0, final, kept, watch)
            tmpfs.resize("64m")
            stream.submit_many(scale.after)
            settle(cluster, outcome, stream.tasks, bound=scale.bound, started=started)
            left = node_of(cluster, name).output_problem
            if left:
                outcome.problems.append(f"node {name} still shows, with space back: {left!r}")
            attach_logs(cluster, outcome, stream.tasks)
    finally:
        tmpfs.unmount()
    return outcome


def _while_full(
    cluster: ProcessCluster,
    name: str,
    task_id: int,
    final: task_pb2.Task,
    kept: int,
    watch: NodeWatch,
) -> list[str]:
    """What broke while the storage was full."""
    problems = []
    if final.status == FAILED and not STORAGE_WORDS.search(final.error_message):
        problems.append(
            f"task {task_id} failed without saying storage is the cause: {final.error_message!r}"
        )
    if kept == 0:
        problems.append(f"task {task_id} kept none of its output")
    if watch.offline_seen:
        problems.append(f"runner {name} went offline while storage was full")
    if not any(STORAGE_WORDS.search(problem) for problem in watch.problems_seen):
        problems.append(f"node {name} never showed its output could not be stored")
    reconnects = log_lines(cluster, f"runner-{name}.log", "reconnecting|stream loop|stream to host")
    if reconnects:
        problems.append(f"the Runner's stream broke: {reconnects[-3:]}")
    return problems


# ----- (f) the stream between Runner and Host cut -----------------------------------------


def stream_cut(root: Path, scale: Scale, seconds: float, mode: Mode, factor: float) -> Outcome:
    """A loopback proxy between the Runner and the Host's port ``drop``s (resets every
    connection, refuses new ones) or ``stall``s (holds every byte) for ``seconds``. Within
    the grace period nothing shows; beyond it, the running task is ``unknown`` until the
    Runner is back, then resumes; every task completes once, byte-exact."""
    grace = scale.grace(factor)
    outcome = Outcome(f"stream {mode} {seconds:.0f}s (grace {grace:.0f}s)")
    with (
        chaos_cluster(root, scale, factor, runners=0) as cluster,
        chaos_proxy("127.0.0.1", cluster.host_port) as proxy,
    ):
        # The Runner dials the proxy, which forwards to the Host's port.
        name = cluster.start_runner(
            f"r{cluster.tag}-0", env={"HAKURIVER_NETWORK__HOST_PORT": str(proxy.port)}
        )
        stream = TaskStream(cluster, scale.lines, scale.sleep)
        started = time.monotonic()
        long = long_task(stream, scale, seconds + 2)
        stream.submit_many(scale.before)
        outcome.notes.append(f"at the cut: {snapshot(cluster, stream.tasks)}")
        proxy.set_mode(mode)
        cut_at = time.monotonic()
        stream.submit_in_background(scale.during, every=seconds / max(1, scale.during + 1))
        offline = False
        while time.monotonic() < cut_at + seconds:
            with contextlib.suppress(grpc.RpcError):
                offline |= node_status(cluster, name) != node_pb2.NODE_STATUS_ONLINE
            time.sleep(0.2)
        proxy.set_mode("pass")
        stream.join()
        stream.submit_many(scale.after)
        settle(cluster, outcome, stream.tasks, bound=scale.bound, started=started)
        went_unknown = unknown_seen(cluster, long)
        history = [STATUS_NAME[s] for s in events(cluster, long.task_id or 0)]
        outcome.notes.append(
            f"long task {long.task_id}: {' -> '.join(history)}; proxy accepted "
            f"{proxy.connections_accepted} connections; node offline during the cut: {offline}"
        )
        if seconds > grace and not went_unknown:
            outcome.problems.append(
                f"cut of {seconds:.0f}s > grace {grace:.0f}s, yet task {long.task_id} never "
                "showed unknown"
            )
        if seconds < grace and (went_unknown or offline):
            outcome.problems.append(
                f"cut of {seconds:.0f}s < grace {grace:.0f}s, yet the node went offline "
                f"({offline}) or task {long.task_id} unknown ({went_unknown})"
            )
        attach_logs(cluster, outcome, stream.tasks)
    return outcome


# ----- two clusters, one Docker daemon, the same Runner name ------------------------------


def two_clusters(root: Path, scale: Scale) -> Outcome:
    """Two clusters share the Docker daemon and a Runner name. Restarting one cluster's
    Runner (SIGKILL, start) leaves the other cluster's running task alone: it completes
    byte-exact, once."""
    outcome = Outcome("2 clusters, same runner name")
    name = f"rsame-{os.getpid()}-{int(time.monotonic() * 1000) % 100000}"
    with (
        chaos_cluster(root / "a", scale, scale.factor_within, runner_names=[name]) as ours,
        chaos_cluster(root / "b", scale, scale.factor_within, runner_names=[name]) as theirs,
    ):
        started = time.monotonic()
        our_stream = TaskStream(ours, scale.lines, scale.sleep)
        their_stream = TaskStream(theirs, scale.lines, scale.sleep)
        our_long = long_task(our_stream, scale, 4)
        their_long = long_task(their_stream, scale, 4)
        theirs.kill_runner(name)
        theirs.start_runner(name)
        our_stream.submit_many(scale.before)
        their_stream.submit_many(scale.before)
        settle(ours, outcome, our_stream.tasks, bound=scale.bound, started=started)
        other = Outcome("the other cluster")
        settle(theirs, other, their_stream.tasks, bound=scale.bound, started=started)
        outcome.tasks += other.tasks
        outcome.completed += other.completed
        outcome.failed += other.failed
        outcome.lost += other.lost
        outcome.ran_twice += other.ran_twice
        outcome.byte_exact += other.byte_exact
        outcome.checked_output += other.checked_output
        outcome.released &= other.released
        outcome.problems += [f"restarted cluster: {p}" for p in other.problems]
        outcome.notes.append(
            f"our task {our_long.task_id} and their task {their_long.task_id} spanned the "
            "restart of their runner"
        )
        attach_logs(ours, outcome, our_stream.tasks)
        attach_logs(theirs, outcome, their_stream.tasks)
    return outcome


# ----- the list -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    id: str
    run: Callable[[Path, Scale], Outcome]
    needs: str = ""  # "root-tmpfs" or "dockerd": see tests/chaos/system.py


def scenarios(scale: Scale) -> list[Scenario]:
    """Every fault; a real restart of the Docker daemon (last) only with
    HAKURIVER_CHAOS_DOCKERD=1: it stops every container on the daemon, anyone's, and
    docker-away tests the same on the suite's Runner alone."""
    cuts = (
        [
            ("cut-5s-drop", scale.short_cut, "drop", scale.factor_within),
            ("cut-long-stall", scale.long_cut, "stall", scale.factor_beyond),
        ]
        if scale.name == "short"
        else [
            ("cut-5s-drop", scale.short_cut, "drop", scale.factor_within),
            ("cut-5s-stall", scale.short_cut, "stall", scale.factor_within),
            ("cut-60s-drop", scale.long_cut, "drop", scale.factor_beyond),
            ("cut-60s-stall", scale.long_cut, "stall", scale.factor_beyond),
        ]
    )
    found = [
        Scenario("runner-sigkill", runner_sigkill),
        Scenario("runner-away-sigstop", lambda r, s: runner_away(r, s, "sigstop")),
        Scenario("runner-away-sigkill", lambda r, s: runner_away(r, s, "sigkill")),
        Scenario("host-sigkill-burst", host_sigkill_burst),
        *(
            Scenario(
                cid,
                lambda r, s, sec=sec, mode=mode, f=f: stream_cut(r, s, sec, mode, f),  # type: ignore[misc]
            )
            for cid, sec, mode, f in cuts
        ),
        Scenario("two-clusters-same-name", two_clusters),
        Scenario("storage-full", storage_full, needs="root-tmpfs"),
        Scenario("docker-away", docker_away),
    ]
    if os.environ.get("HAKURIVER_CHAOS_DOCKERD"):
        found.append(Scenario("dockerd-restart", dockerd_restart, needs="dockerd"))
    return found
