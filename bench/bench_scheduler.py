"""Scheduler throughput and latency: a real Host, N simulated Runners (no Docker), in one run:

- floor: bare unary gRPC calls (health Check) to the same Host at the same concurrency,
  the most that one call per task could reach on this machine; and the same calls to a bare
  grpc.aio server with no HakuRiver code (bench/grpc_ceiling.py), what the library does;
- single submits: ``tasks`` SubmitTask calls (more while the lone tasks below still need
  load, up to ``tasks_max``), ``in_flight`` at a time, end to end (submit to completed), as
  tasks/s and as a ratio to the floor;
- job arrays: one SubmitTask of ``array`` tasks (``TaskArray``), the time it takes to
  answer ("accepted") and end to end tasks/s (submit to the last task completed), as a
  ratio to the floor; arrays go one after another (``array_rounds``, more while the lone
  tasks below still need load, up to ``array_rounds_max``);
- a lone task's submit -> running, as a user sees it (SubmitTask sent, then WatchTask until
  it reports RUNNING; also when SubmitTask answered), one at a time, with no load and again
  during each load above.

Each simulated Runner is a FakeRunner (tests/fake_runner.py), the real Connect protocol: it
registers, heartbeats, and answers every dispatch at once with "running" then "exited 0".
The Host releases a task once its final status is stored; the Runners count those releases,
which is how the benchmark sees a load complete: exact, and free for the Host (polling
GetBatch often enough to time the end to a few ms would load the Host it measures: a call
on a 10,000-task array costs it ~10-20 ms). One GetBatch per array then checks that every
task completed, and its time is printed.

The load is one plain user's ("sweeper"); the lone tasks are another user's (the admin's),
as in a lab where one user's sweep runs while another submits a task: the Host serves at
most ``auth.calls_per_caller`` calls of one user at once (caller_turns), so the lone task
does not queue behind the sweep's calls in flight. A lone task of the sweeper does: during
single submits, lone tasks of the sweeper are timed too ("sweeper's own"), after the others.
The lone tasks come from another process (its own event loop, its own channel), run on a
FakeRunner of their own there, which holds each task running until the probe has seen it
so and then finishes it. That Runner has too little memory for the load's tasks (each asks
1 GiB), and the lone tasks target it, so the two never share a node. A lone sample counts
as under load only when the load ran from its submit to its RUNNING.

Counts come from HAKURIVER_BENCH_* variables (see ``Counts.from_env``). Prints the figures
with the goals beside them; asserts nothing about time. Every phase is bounded by a count
and by ``timeout`` seconds. ``HAKURIVER_BENCH_PROFILE=out.txt`` records the Host with py-spy
(raw collapsed stacks; of the threads holding the GIL, or as
``HAKURIVER_BENCH_PROFILE_ARGS`` says, e.g. ``--gil --native``) during
``HAKURIVER_BENCH_PROFILE_PHASE`` (``floor``, ``singles``, ``arrays``, or ``all``: the
last two, the default);
``python -m bench.profile_report out.txt`` sums it up.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import date
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event as ProcessEvent
from pathlib import Path
from typing import Any, TypeVar

import grpc
import psutil
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.grpc_ceiling import bare_server
from bench.host_process import HostProcess, bench_host
from hakuriver_common.channels import open_aio_channel
from hakuriver_common.config import load_config
from hakuriver_common.proto.hakuriver.v1 import (
    access_service_pb2 as apb,
    access_service_pb2_grpc,
    task_pb2,
    task_service_pb2 as tpb,
    task_service_pb2_grpc,
)
from hakuriver_common.roles import Role
from tests.fake_runner import HOLD, FakeRunner

T = TypeVar("T")
ENV = "bench"
GIB = 2**30
BUSY_FIELDS = ("user", "nice", "system", "irq", "softirq", "steal")
# The load's tasks ask this much memory; the lone tasks' Runner has less, so none lands there.
LOAD_MEMORY = "1G"
LONE_RUNNER = "lone-probe"
# The load is one user's (their calls take turns: auth.calls_per_caller); the lone tasks are
# the admin's, another user's.
LOAD_USER = "sweeper"
LONE_MEMORY = GIB // 2
RUNNING = task_pb2.TASK_STATUS_RUNNING
COMPLETED = task_pb2.TASK_STATUS_COMPLETED

FLOOR_ROUNDS = 3
GOAL_SINGLES = 2_000  # tasks/s end to end
GOAL_ACCEPT = 1.0  # seconds for SubmitTask of the array to answer
GOAL_ARRAY = 10_000  # tasks/s end to end
GOAL_LONE_P99 = 0.050  # seconds, submit -> running under load


@dataclass(frozen=True)
class Counts:
    runners: int = 100
    # Single submits: at least this many (more while the lone tasks need load, up to
    # ``tasks_max``), ``in_flight`` at a time.
    tasks: int = 2000
    tasks_max: int = 20_000
    in_flight: int = 64
    # Tasks per array, its max_running (0: no cap), arrays at least / at most.
    array: int = 10_000
    array_max_running: int = 0
    array_rounds: int = 2
    array_rounds_max: int = 20
    # Lone tasks per measurement (no load, during singles, during arrays).
    lone: int = 100
    # Seconds any one phase may take before the benchmark gives up on it.
    timeout: float = 300.0

    @classmethod
    def from_env(cls) -> Counts:
        def get(name: str, default: float) -> Any:
            raw = os.environ.get(f"HAKURIVER_BENCH_{name}")
            return type(default)(raw) if raw else default

        d = cls()
        return cls(
            runners=get("RUNNERS", d.runners),
            tasks=get("TASKS", d.tasks),
            tasks_max=get("TASKS_MAX", d.tasks_max),
            in_flight=get("IN_FLIGHT", d.in_flight),
            array=get("ARRAY", d.array),
            array_max_running=get("ARRAY_MAX_RUNNING", d.array_max_running),
            array_rounds=get("ARRAY_ROUNDS", d.array_rounds),
            array_rounds_max=get("ARRAY_ROUNDS_MAX", d.array_rounds_max),
            lone=get("LONE", d.lone),
            timeout=get("TIMEOUT", d.timeout),
        )


@dataclass
class Cpu:
    """Seconds of CPU over a phase: the Host, the benchmark's own process, and the rest of
    the machine (other processes: on a shared machine they explain a noisy figure)."""

    host: float = 0.0
    own: float = 0.0
    others: float = 0.0
    seconds: float = 0.0

    def shares(self, server: str = "Host") -> str:
        wall = max(self.seconds, 1e-9)
        return (
            f"CPU: {server} {self.host / wall:.0%} of a core, load generator and simulated "
            f"runners {self.own / wall:.0%}, other processes {self.others / wall:.0%}"
        )


def _busy() -> float:
    """CPU seconds the whole machine has been busy."""
    t = psutil.cpu_times()
    return sum(getattr(t, name, 0.0) for name in BUSY_FIELDS)


@dataclass
class Singles:
    tasks: int
    submit_seconds: float
    total_seconds: float
    # SubmitTask sent -> the simulated Runner got the dispatch, per task.
    to_dispatch: list[float]
    cpu: Cpu


@dataclass
class ArrayRound:
    size: int
    accepted: float  # SubmitTask sent -> answered
    total: float  # SubmitTask sent -> the last task completed (released)
    get_batch: float  # one GetBatch of the finished array
    cpu: Cpu


@dataclass
class Lone:
    """Lone tasks, each from SubmitTask sent: to RUNNING seen by WatchTask, and to
    SubmitTask answered (the task stored and the placement pass that considered it done)."""

    running: list[float]
    answered: list[float]

    @classmethod
    def of(cls, samples: list[tuple[float, float]]) -> Lone:
        return cls([r for r, _ in samples], [a for _, a in samples])


@dataclass
class Result:
    label: str
    floor: float
    floor_rounds: list[float]
    floor_cpu: Cpu
    # The floor's calls to a bare grpc.aio server (bench/grpc_ceiling.py), each round.
    ceiling_rounds: list[float]
    # Single submits to it: a task's messages alone.
    ceiling_singles: Singles
    # While the lone tasks ran with no load.
    idle_cpu: Cpu
    singles: Singles
    arrays: list[ArrayRound]
    lone_idle: Lone
    lone_singles: Lone
    # The sweeping user's own lone tasks during single submits.
    lone_own: Lone
    lone_arrays: Lone
    notes: list[str] = field(default_factory=list)


def percentile(values: list[float], q: float) -> float:
    """Nearest rank (p99 of 100 samples is the largest); nan when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def median(values: list[float]) -> float:
    return percentile(values, 0.5)


# ----- the lone tasks' process ------------------------------------------------------------


def _probe_main(config_path: str, token: str, conn: Connection, load_on: ProcessEvent) -> None:
    """Entry point of the probe process: answer ("probe", n, under_load, seconds, token)
    with ("samples", [(seconds to RUNNING, seconds to the SubmitTask answer), ...]), until
    ("stop",) or the pipe closes. The lone tasks are ``token``'s holder's (empty: the
    admin's, ``token``)."""
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_probe_serve(Path(config_path), token, conn, load_on))


async def _probe_serve(
    config_path: Path, token: str, conn: Connection, load_on: ProcessEvent
) -> None:
    config = load_config(config_path)
    runner = FakeRunner(
        config,
        LONE_RUNNER,
        cores=4,
        memory_bytes=LONE_MEMORY,
        environments=[ENV],
        answer=HOLD,
    )
    await runner.start()
    try:
        async with contextlib.AsyncExitStack() as channels:
            stubs: dict[str, task_service_pb2_grpc.TaskServiceStub] = {}
            conn.send(("ready",))
            while True:
                try:
                    command = await asyncio.to_thread(conn.recv)
                except EOFError:
                    return
                if command[0] != "probe":
                    return
                _, n, under_load, seconds, whose = command
                whose = whose or token
                if whose not in stubs:
                    channel = await channels.enter_async_context(open_aio_channel(config, whose))
                    stubs[whose] = task_service_pb2_grpc.TaskServiceStub(channel)
                load = load_on if under_load else None
                samples = await _probe(stubs[whose], runner, n, load, seconds)
                conn.send(("samples", samples))
    finally:
        await runner.stop()


async def _probe(
    stub: task_service_pb2_grpc.TaskServiceStub,
    runner: FakeRunner,
    n: int,
    load_on: ProcessEvent | None,
    seconds: float,
) -> list[tuple[float, float]]:
    """Up to ``n`` lone tasks one at a time within ``seconds``; under load, only while the
    load runs (a sample counts when the load ran at its submit and at its RUNNING)."""
    deadline = time.monotonic() + seconds
    samples: list[tuple[float, float]] = []
    while len(samples) < n and time.monotonic() < deadline:
        if load_on is not None and not load_on.is_set():
            break
        sample = await _lone_task(stub, runner, deadline - time.monotonic())
        if load_on is None or load_on.is_set():
            samples.append(sample)
    return samples


async def _lone_task(
    stub: task_service_pb2_grpc.TaskServiceStub, runner: FakeRunner, seconds: float
) -> tuple[float, float]:
    """Submit one task to the probe's Runner, watch it until RUNNING, then finish it and
    watch it until COMPLETED: (seconds to RUNNING, seconds to the SubmitTask answer)."""
    async with asyncio.timeout(min(seconds, 60.0)):
        sent = time.perf_counter()
        reply = await stub.SubmitTask(
            tpb.SubmitTaskRequest(
                command="true",
                container_name=ENV,
                targets=[task_pb2.Target(hostname=LONE_RUNNER)],
            )
        )
        answered = time.perf_counter() - sent
        task_id = reply.tasks[0].task_id
        running = None
        async for update in stub.WatchTask(tpb.WatchTaskRequest(task_id=task_id)):
            status = update.task.status
            if status == RUNNING and running is None:
                running = time.perf_counter()
                runner.finish(task_id, 0)
            elif status == COMPLETED:
                break
            elif running is None and status not in (
                task_pb2.TASK_STATUS_PENDING,
                task_pb2.TASK_STATUS_ASSIGNING,
            ):
                raise RuntimeError(f"lone task {task_id} went {status} before running")
        if running is None:
            raise RuntimeError(f"lone task {task_id} ended without being seen running")
        return running - sent, answered


class Prober:
    """The probe process, driven over a pipe."""

    def __init__(self, host: HostProcess) -> None:
        context = multiprocessing.get_context("spawn")
        self.load_on = context.Event()
        self.conn, child = context.Pipe()
        self.proc = context.Process(
            target=_probe_main,
            args=(str(host.config_path), host.admin_token, child, self.load_on),
            name="lone-probe",
            daemon=True,
        )

    async def start(self, seconds: float = 60.0) -> None:
        self.proc.start()
        await self._receive(seconds)

    async def _receive(self, seconds: float) -> Any:
        def receive() -> Any:
            if not self.conn.poll(seconds):
                raise TimeoutError(f"the lone-task probe answered nothing within {seconds:g}s")
            return self.conn.recv()

        return await asyncio.to_thread(receive)

    async def probe(self, n: int, under_load: bool, seconds: float, token: str = "") -> Lone:
        """``n`` lone tasks of ``token``'s holder (empty: the admin's)."""
        self.conn.send(("probe", n, under_load, seconds, token))
        _, samples = await self._receive(seconds + 90)
        return Lone.of(samples)

    def stop(self) -> None:
        if self.proc.pid is None:  # never started
            return
        with contextlib.suppress(OSError):
            self.conn.send(("stop",))
        self.proc.join(30)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(10)


# ----- the load --------------------------------------------------------------------------


class Releases:
    """Counts the Host's releases (a task's final status is stored) across the Runners."""

    def __init__(self) -> None:
        self.count = 0
        self._goal = 0
        self._reached = asyncio.Event()

    def __call__(self, task_id: int) -> None:
        self.count += 1
        if self._goal and self.count >= self._goal:
            self._reached.set()

    def reset(self) -> None:
        self.count, self._goal = 0, 0
        self._reached.clear()

    async def reach(self, goal: int, seconds: float, what: str) -> None:
        self._goal = goal
        if self.count < goal:
            try:
                await asyncio.wait_for(self._reached.wait(), max(seconds, 0.0))
            except TimeoutError:
                raise TimeoutError(
                    f"{what}: {self.count} of {goal} tasks completed in time"
                ) from None
        self._goal = 0
        self._reached.clear()


class Profiler:
    """py-spy on the Host during one phase (HAKURIVER_BENCH_PROFILE / _PHASE)."""

    def __init__(self, path: str, phase: str) -> None:
        self.path = path
        self.phase = phase or "all"
        self.proc: subprocess.Popen[bytes] | None = None

    @contextlib.contextmanager
    def during(self, phase: str, pid: int) -> Iterator[None]:
        wanted = self.phase == phase or (self.phase == "all" and phase != "floor")
        if not self.path or not wanted or self.proc is not None:
            yield
            return
        spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        options = os.environ.get("HAKURIVER_BENCH_PROFILE_ARGS", "--gil").split()
        if "--native" not in options:  # py-spy pauses the Host to read native stacks
            options.append("--nonblocking")
        command = [spy, "record", *options, "-f", "raw", "-o", self.path]
        self.proc = subprocess.Popen([*command, "--pid", str(pid)])
        time.sleep(1)  # until it has attached
        if self.proc.poll() is not None:
            raise RuntimeError(f"py-spy exited at once ({self.proc.returncode}): {command}")
        try:
            yield
        finally:
            if self.phase != "all":
                self.stop()

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            proc.send_signal(signal.SIGINT)
            proc.wait(60)


class Bench:
    def __init__(self, host: HostProcess, counts: Counts, profiler: Profiler) -> None:
        assert host.proc is not None
        self.host = host
        self.host_pid = host.proc.pid
        self.counts = counts
        self.profiler = profiler
        self.releases = Releases()
        self.runners: list[FakeRunner] = []
        self.prober = Prober(host)
        self.notes: list[str] = []

    async def run(self) -> Result:
        counts = self.counts
        try:
            await self.prober.start()
            self.runners = [
                FakeRunner(
                    self.host.client_config,
                    f"sim-{i:03d}",
                    cores=64,
                    memory_bytes=256 * GIB,
                    environments=[ENV],
                    on_release=self.releases,
                )
                for i in range(counts.runners)
            ]
            await asyncio.gather(*(r.start() for r in self.runners))
            sweeper = await self.user_token(LOAD_USER)
            async with open_aio_channel(self.host.client_config, sweeper) as ch:
                stub = task_service_pb2_grpc.TaskServiceStub(ch)
                async with self.cpu() as floor_cpu:
                    with self.profiler.during("floor", self.host_pid):
                        floors = await self.floor(ch)
                ceilings, ceiling_singles = await self.ceiling()
                async with self.cpu() as idle_cpu:
                    lone_idle = await self.prober.probe(counts.lone, False, counts.timeout)
                with self.profiler.during("singles", self.host_pid):
                    singles, (lone_singles, lone_own) = await self.under_probe(
                        lambda done: self.singles(stub, done, self.releases, self.runners),
                        sweeper,
                    )
                with self.profiler.during("arrays", self.host_pid):
                    arrays, (lone_arrays,) = await self.under_probe(
                        lambda done: self.arrays(stub, done)
                    )
        finally:
            self.profiler.stop()
            await asyncio.gather(*(r.stop() for r in self.runners))
            self.prober.stop()
        return Result(
            label=self.host.label,
            floor=max(floors),
            floor_rounds=floors,
            floor_cpu=floor_cpu,
            ceiling_rounds=ceilings,
            ceiling_singles=ceiling_singles,
            idle_cpu=idle_cpu,
            singles=singles,
            arrays=arrays,
            lone_idle=lone_idle,
            lone_singles=lone_singles,
            lone_own=lone_own,
            lone_arrays=lone_arrays,
            notes=self.notes,
        )

    @contextlib.asynccontextmanager
    async def cpu(self, server: int = 0) -> Any:
        """CPU of the Host (or of the process ``server``), of this process and the probe's,
        and of the rest of the machine."""
        host, own = psutil.Process(server or self.host_pid), psutil.Process()
        probe = psutil.Process(self.prober.proc.pid)
        processes = (host, own, probe)
        before = [sum(p.cpu_times()[:2]) for p in processes]
        machine = _busy()
        start = time.perf_counter()
        measured = Cpu()
        yield measured
        measured.seconds = time.perf_counter() - start
        used = [sum(p.cpu_times()[:2]) - b for p, b in zip(processes, before, strict=True)]
        measured.host, measured.own = used[0], used[1]
        measured.others = max(0.0, _busy() - machine - sum(used))

    async def floor(self, channel: grpc.aio.Channel) -> list[float]:
        """Calls/s of the cheapest unary RPC (health Check) at the same concurrency as the
        single submits, ``tasks`` calls per round, ``FLOOR_ROUNDS`` rounds (the best counts:
        the Host may still be busy with the Runners' registrations in the first)."""
        stub = health_pb2_grpc.HealthStub(channel)
        slots = asyncio.Semaphore(self.counts.in_flight)

        async def check() -> None:
            async with slots:
                await stub.Check(health_pb2.HealthCheckRequest(), timeout=self.counts.timeout)

        rates = []
        for _ in range(FLOOR_ROUNDS):
            start = time.perf_counter()
            await asyncio.gather(*(check() for _ in range(self.counts.tasks)))
            rates.append(self.counts.tasks / (time.perf_counter() - start))
        return rates

    async def ceiling(self) -> tuple[list[float], Singles]:
        """The floor's calls and the single submits, made the same way, to grpc.aio alone
        (bench/grpc_ceiling.py), with Runners of its own."""
        releases = Releases()
        with bare_server(self.host.client_config) as bare:
            runners = [
                FakeRunner(bare.config, f"bare-{i:03d}", on_release=releases)
                for i in range(self.counts.runners)
            ]
            try:
                await asyncio.gather(*(r.start() for r in runners))
                async with open_aio_channel(bare.config, "") as channel:
                    rates = await self.floor(channel)
                    stub = task_service_pb2_grpc.TaskServiceStub(channel)
                    done = asyncio.Event()
                    done.set()
                    singles = await self.singles(stub, done, releases, runners, bare.pid)
            finally:
                await asyncio.gather(*(r.stop() for r in runners))
        return rates, singles

    async def under_probe(
        self, load: Callable[[asyncio.Event], Awaitable[T]], *own: str
    ) -> tuple[T, tuple[Lone, ...]]:
        """Run ``load`` while the probe measures lone tasks: another user's, then those of
        each of ``own`` (the load's user's token); ``load`` gets an event set once the probe
        has its samples (it may stop then) and must end by itself."""
        done = asyncio.Event()
        self.prober.load_on.set()

        async def loaded() -> T:
            try:
                return await load(done)
            finally:
                self.prober.load_on.clear()  # the probe stops at its current sample

        running = asyncio.create_task(loaded())
        try:
            samples = [
                await self.prober.probe(self.counts.lone, True, self.counts.timeout, token)
                for token in ("", *own)
            ]
        except BaseException:
            running.cancel()
            with contextlib.suppress(BaseException):
                await running
            raise
        done.set()
        return await running, tuple(samples)

    async def user_token(self, name: str) -> str:
        """A new plain user's API token (the admin creates both)."""
        async with open_aio_channel(self.host.client_config, self.host.admin_token) as channel:
            access = access_service_pb2_grpc.AccessServiceStub(channel)
            await access.CreateUser(apb.CreateUserRequest(name=name, role=Role.USER.pb))
            reply = await access.CreateToken(apb.CreateTokenRequest(user=name))
        return reply.secret

    async def singles(
        self,
        stub: task_service_pb2_grpc.TaskServiceStub,
        done: asyncio.Event,
        releases: Releases,
        runners: list[FakeRunner],
        server: int = 0,
    ) -> Singles:
        """``tasks`` single submits (more until ``done``), completed when ``runners`` were
        each released; the server is the Host unless ``server`` (a pid) is given."""
        counts = self.counts
        submitted_at: dict[int, float] = {}
        releases.reset()
        deadline = time.monotonic() + counts.timeout
        request = tpb.SubmitTaskRequest(command="true", container_name=ENV, memory=LOAD_MEMORY)
        issued = 0
        timed_out: set[str] = set()

        async def submitter() -> None:
            nonlocal issued
            while (issued < counts.tasks or not done.is_set()) and issued < counts.tasks_max:
                if time.monotonic() > deadline:
                    timed_out.add("submits")
                    return
                issued += 1
                sent = time.perf_counter()
                reply = await stub.SubmitTask(request, timeout=counts.timeout)
                submitted_at[reply.tasks[0].task_id] = sent

        async with self.cpu(server) as cpu:
            start = time.perf_counter()
            await asyncio.gather(*(submitter() for _ in range(counts.in_flight)))
            submit_seconds = time.perf_counter() - start
            await releases.reach(len(submitted_at), counts.timeout, "single submits")
            total = time.perf_counter() - start
        if timed_out:
            self.notes.append(f"single submits: stopped after {issued} at the timeout")
        dispatched = {t: at for r in runners for t, at in r.dispatched_at.items()}
        to_dispatch = [dispatched[t] - s for t, s in submitted_at.items() if t in dispatched]
        return Singles(len(submitted_at), submit_seconds, total, to_dispatch, cpu)

    async def arrays(
        self, stub: task_service_pb2_grpc.TaskServiceStub, done: asyncio.Event
    ) -> list[ArrayRound]:
        counts = self.counts
        deadline = time.monotonic() + counts.timeout
        rounds: list[ArrayRound] = []
        while len(rounds) < counts.array_rounds or (
            not done.is_set() and len(rounds) < counts.array_rounds_max
        ):
            if time.monotonic() > deadline:
                self.notes.append(f"arrays: stopped after {len(rounds)} rounds at the timeout")
                break
            rounds.append(await self.array_round(stub, deadline - time.monotonic()))
        return rounds

    async def array_round(
        self, stub: task_service_pb2_grpc.TaskServiceStub, seconds: float
    ) -> ArrayRound:
        counts = self.counts
        self.releases.reset()
        request = tpb.SubmitTaskRequest(
            command="true",
            container_name=ENV,
            memory=LOAD_MEMORY,
            array=tpb.TaskArray(indices=range(counts.array), max_running=counts.array_max_running),
        )
        async with self.cpu() as cpu:
            start = time.perf_counter()
            reply = await stub.SubmitTask(request, timeout=seconds)
            accepted = time.perf_counter() - start
            if reply.created != counts.array:
                raise RuntimeError(f"array: {reply.created} of {counts.array} tasks created")
            await self.releases.reach(counts.array, seconds - accepted, f"array {reply.batch_id}")
            total = time.perf_counter() - start
        asked = time.perf_counter()
        batch = await stub.GetBatch(tpb.GetBatchRequest(batch_id=reply.batch_id), timeout=60)
        get_batch = time.perf_counter() - asked
        finished = {c.status: c.count for c in batch.batch.counts}
        if finished != {COMPLETED: counts.array}:
            raise RuntimeError(f"array {reply.batch_id}: GetBatch counts {finished}")
        return ArrayRound(counts.array, accepted, total, get_batch, cpu)


def run(counts: Counts, profile: str = "", profile_phase: str = "all") -> Result:
    with bench_host() as host:

        async def main() -> Result:
            return await Bench(host, counts, Profiler(profile, profile_phase)).run()

        return asyncio.run(main())


# ----- report ----------------------------------------------------------------------------


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:7.1f} ms"


def _cpu_per_task(singles: Singles) -> float:
    """Seconds of the server's CPU per task."""
    return singles.cpu.host / singles.tasks


def _lone_line(name: str, lone: Lone) -> str:
    running, answered = lone.running, lone.answered
    return (
        f"    {name:<15} n={len(running):<4} p50 {_ms(percentile(running, 0.5))}  "
        f"p90 {_ms(percentile(running, 0.9))}  p99 {_ms(percentile(running, 0.99))}"
        f"   (answered: p50 {_ms(percentile(answered, 0.5))}  "
        f"p99 {_ms(percentile(answered, 0.99))})"
    )


def report(result: Result, counts: Counts) -> None:
    floor = result.floor
    singles = result.singles
    print(
        f"scheduler: {counts.runners} simulated runners (64 cores each), Host a subprocess "
        f"({result.label}), {date.today().isoformat()}"
    )
    print(
        f"  floor: bare unary gRPC calls (health Check), {counts.in_flight} in flight: "
        f"{floor:.0f} calls/s (best of {', '.join(f'{r:.0f}' for r in result.floor_rounds)})"
    )
    print(f"    {result.floor_cpu.shares()}")
    ceiling = max(result.ceiling_rounds)
    print(
        "  grpc.aio alone: the same calls to a bare grpc.aio server (TLS, the health servicer, "
        f"no HakuRiver code): {ceiling:.0f} calls/s "
        f"(best of {', '.join(f'{r:.0f}' for r in result.ceiling_rounds)}); "
        f"the floor is {floor / ceiling:.2f}x of it, the single-submit goal "
        f"{GOAL_SINGLES / ceiling:.2f}x"
    )
    bare = result.ceiling_singles
    bare_e2e = bare.tasks / bare.total_seconds
    print(
        "  grpc.aio alone, a task's messages: the same single submits to that server, which "
        "answers each with an id and dispatches it to the next of its own Runners, and "
        "releases it when reported exited (nothing checked, stored or scheduled): "
        f"{bare_e2e:.0f} tasks/s end to end; the single-submit goal is "
        f"{GOAL_SINGLES / bare_e2e:.2f}x of it"
    )
    print(
        f"    {bare.cpu.shares('server')}; {_cpu_per_task(bare) * 1e6:.0f} us of the server's "
        "CPU per task"
    )
    print(f"  single submits: {singles.tasks} tasks, {counts.in_flight} SubmitTask in flight")
    print(f"    submitted          {singles.tasks / singles.submit_seconds:7.0f} tasks/s")
    e2e = singles.tasks / singles.total_seconds
    print(
        f"    end to end         {e2e:7.0f} tasks/s = {e2e / floor:.2f}x the floor = "
        f"{e2e / bare_e2e:.2f}x grpc.aio alone's task messages      goal > {GOAL_SINGLES:,} tasks/s"
    )
    print(
        f"    submit -> dispatch p50 {_ms(percentile(singles.to_dispatch, 0.5))}  "
        f"p99 {_ms(percentile(singles.to_dispatch, 0.99))}"
    )
    print(
        f"    {singles.cpu.shares()}; {_cpu_per_task(singles) * 1e6:.0f} us of the Host's CPU "
        f"per task = {_cpu_per_task(singles) / _cpu_per_task(bare):.2f}x grpc.aio alone's"
    )
    cap = counts.array_max_running or "none"
    print(
        f"  job arrays of {counts.array:,} tasks (max_running {cap}), {len(result.arrays)} one "
        "after another; done when the Host released every task (its final status stored), "
        "checked by one GetBatch"
    )
    for index, rnd in enumerate(result.arrays, start=1):
        rate = rnd.size / rnd.total
        print(
            f"    #{index:<2} accepted in {_ms(rnd.accepted)}   end to end {rnd.total:6.2f} s = "
            f"{rate:6.0f} tasks/s = {rate / floor:.2f}x the floor   GetBatch {_ms(rnd.get_batch)}"
        )
        print(f"        {rnd.cpu.shares()}")
    if result.arrays:
        accepted = median([r.accepted for r in result.arrays])
        rate = median([r.size / r.total for r in result.arrays])
        print(
            f"    median: accepted in {_ms(accepted)} (goal < {GOAL_ACCEPT:g} s); end to end "
            f"{rate:.0f} tasks/s = {rate / floor:.2f}x the floor (goal > {GOAL_ARRAY:,} tasks/s)"
        )
    print(
        "  lone tasks, one at a time from another process, another user's but the sweeper's "
        "own: SubmitTask sent -> RUNNING seen by WatchTask "
        f"(goal p99 < {GOAL_LONE_P99 * 1000:g} ms under load)"
    )
    print(_lone_line("no load", result.lone_idle))
    print(_lone_line("during singles", result.lone_singles))
    print(_lone_line("sweeper's own", result.lone_own))
    print(_lone_line("during arrays", result.lone_arrays))
    idle = result.idle_cpu
    print(
        f"    other processes during the no-load samples: "
        f"{idle.others / max(idle.seconds, 1e-9):.0%} of a core"
    )
    for note in result.notes:
        print(f"  note: {note}")


def main() -> None:
    counts = Counts.from_env()
    result = run(
        counts,
        os.environ.get("HAKURIVER_BENCH_PROFILE", ""),
        os.environ.get("HAKURIVER_BENCH_PROFILE_PHASE", "all"),
    )
    report(result, counts)


if __name__ == "__main__":
    main()
