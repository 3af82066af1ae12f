"""The cost of TLS and API-token authorisation, measured against an unsecured Host in one run.

Two Host configurations, each a real Host process on loopback with a fresh database:

- baseline: ``tls.plaintext = true`` and ``auth.authentication = false``;
- secured: the default, TLS with the cluster CA and an API token on every call.

Against each, in this process: simulated Runners (FakeRunners: the real Connect protocol, no
Docker; each answers a dispatch with "running" then "exited 0") and asyncio clients, each on
a connection of its own, sending the token as plain call metadata as real clients do. Each
round measures

1. SubmitTask throughput: a fixed number of submissions, a bounded number in flight spread
   over the clients; tasks/s and the Host's CPU time per task;
2. dispatch overhead: one task at a time, the time from sending SubmitTask to the FakeRunner
   receiving the dispatch (and reporting the task running); median and p95.

Two ways, one after the other:

- alone: one Host at a time, the order alternating (baseline, secured, secured, baseline,
  ...): each configuration's own figures;
- side by side: both Hosts at once, each with its own Runners and clients, so both see the
  same machine at the same moment (throughput: both loaded together; dispatch: one sample
  at a time, taking turns). On a machine shared with other work the alone rounds of one
  configuration vary by tens of percent; side by side, the ratio holds within a few.

Prints each figure and secured/baseline; the goal is under 10% slower. Asserts nothing
about time. ``HAKURIVER_BENCH_PROFILE=<prefix>`` records the Host of each alone round with
py-spy; ``HAKURIVER_BENCH_SEC_SPLIT=1`` adds alone rounds of TLS only and of tokens only.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import os
import signal
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import psutil

from bench.host_process import HostProcess, bench_hosts
from hakuriver_common.channels import bearer, open_aio_channel
from hakuriver_common.proto.hakuriver.v1 import task_service_pb2 as tpb, task_service_pb2_grpc
from tests.fake_runner import Fleet

ENV = "bench"
GOAL = 0.10  # secured at most 10% slower
WAIT_SECONDS = 120.0  # bound on waiting for dispatches (a broken Host must not hang make)
SETTLE_SECONDS = 0.5  # after a burst, for the Host's trailing writes (group commits)


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, str(default)))


@dataclass(frozen=True)
class Counts:
    """How much work each round does (the same for both configurations)."""

    tasks: int = 1000  # submissions timed for throughput
    samples: int = 100  # tasks submitted one at a time for dispatch overhead
    rounds: int = 4  # alone rounds per configuration
    pairs: int = 4  # side-by-side rounds
    warmup: int = 100  # untimed submissions first (connections, TLS sessions, caches)
    runners: int = 20  # per Host, 64 cores each (as in bench_scheduler)
    clients: int = 8  # per Host
    in_flight: int = 64  # per Host

    @classmethod
    def from_env(cls) -> Counts:
        return cls(
            tasks=_env_int("HAKURIVER_BENCH_SEC_TASKS", cls.tasks),
            samples=_env_int("HAKURIVER_BENCH_SEC_SAMPLES", cls.samples),
            rounds=_env_int("HAKURIVER_BENCH_SEC_ROUNDS", cls.rounds),
            pairs=_env_int("HAKURIVER_BENCH_SEC_PAIRS", cls.pairs),
        )


@dataclass(frozen=True)
class Setup:
    name: str
    plaintext: bool
    authentication: bool


BASELINE = Setup("baseline", plaintext=True, authentication=False)
SECURED = Setup("secured", plaintext=False, authentication=True)
# HAKURIVER_BENCH_SEC_SPLIT=1 adds these, to tell what TLS and tokens each cost.
TLS_ONLY = Setup("tls-only", plaintext=False, authentication=False)
TOKENS_ONLY = Setup("tokens", plaintext=True, authentication=True)


@dataclass
class Round:
    throughput: float  # tasks/s
    host_cpu_per_task: float  # seconds of Host CPU per submitted task
    others: float  # cores used by other processes on the machine meanwhile
    latencies: list[float]  # SubmitTask sent -> the Runner has the task, seconds
    replies: list[float]  # SubmitTask sent -> answered, seconds (the same tasks)


@dataclass
class Result:
    """Every round of one configuration (of one way: alone or side by side)."""

    setup: Setup
    label: str = ""
    rounds: list[Round] = field(default_factory=list)

    @property
    def throughputs(self) -> list[float]:
        return [r.throughput for r in self.rounds]

    @property
    def throughput(self) -> float:
        return statistics.median(self.throughputs)

    @property
    def host_cpu_per_task(self) -> float:
        return statistics.median(r.host_cpu_per_task for r in self.rounds)

    @property
    def others(self) -> float:
        return statistics.median(r.others for r in self.rounds)

    @property
    def latencies(self) -> list[float]:
        return sorted(x for r in self.rounds for x in r.latencies)

    @property
    def median(self) -> float:
        return statistics.median(self.latencies)

    @property
    def reply_median(self) -> float:
        return statistics.median(x for r in self.rounds for x in r.replies)

    @property
    def p95(self) -> float:
        found = self.latencies
        return found[min(len(found) - 1, int(0.95 * len(found)))]


class Arrivals:
    """Resolves when a FakeRunner got a task's dispatch (which may come before the
    SubmitTask reply), or its release."""

    def __init__(self) -> None:
        self._futures: dict[int, asyncio.Future[None]] = {}

    def _future(self, task_id: int) -> asyncio.Future[None]:
        found = self._futures.get(task_id)
        if found is None:
            found = self._futures[task_id] = asyncio.get_running_loop().create_future()
        return found

    def arrived(self, task_id: int) -> None:
        future = self._future(task_id)
        if not future.done():
            future.set_result(None)

    async def wait(self, task_ids: list[int]) -> None:
        await asyncio.wait_for(asyncio.gather(*(self._future(t) for t in task_ids)), WAIT_SECONDS)


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


def busy_seconds() -> float:
    """CPU time the machine's processes used, all cores, plus what the hypervisor stole
    (interrupt time left out: much of it is this benchmark's own loopback traffic)."""
    times = psutil.cpu_times()
    return times.user + times.nice + times.system + getattr(times, "steal", 0.0)


def process_of(host: HostProcess) -> psutil.Process:
    assert host.proc is not None
    return psutil.Process(host.proc.pid)


class CpuMeter:
    """A Host's CPU time, and what processes other than the benchmark's own (itself and its
    Hosts) used meanwhile: a busy machine is the main noise in these figures."""

    def __init__(self, host: HostProcess, hosts: list[HostProcess]) -> None:
        self.host = process_of(host)
        self.ours = [psutil.Process(), *(process_of(h) for h in hosts)]

    def read(self) -> tuple[float, float, float]:
        return cpu_seconds(self.host), sum(map(cpu_seconds, self.ours)), busy_seconds()

    @staticmethod
    def since(
        before: tuple[float, float, float], after: tuple[float, float, float]
    ) -> tuple[float, float]:
        """(the Host's CPU seconds, other processes' CPU seconds) between two readings."""
        host, ours, busy = (a - b for a, b in zip(after, before, strict=True))
        return host, max(0.0, busy - ours)


class Load:
    """The clients and Runners of one round against one Host (``hosts``: every Host of the
    round, this one included)."""

    def __init__(self, host: HostProcess, counts: Counts, hosts: list[HostProcess]) -> None:
        self.host = host
        self.hosts = hosts
        self.counts = counts
        self.dispatches = Arrivals()
        self.released = Arrivals()
        self.fleet = Fleet(
            host.client_config,
            counts.runners,
            "sec-{:03d}",
            per_channel=counts.runners,
            cores=64,
            memory_bytes=256 * 2**30,
            environments=[ENV],
            on_dispatch=self.dispatches.arrived,
            on_release=self.released.arrived,
        )
        # A connection each, as separate client machines would have.
        separate = [("grpc.use_local_subchannel_pool", 1)]
        self.channels = [
            open_aio_channel(host.client_config, options=separate) for _ in range(counts.clients)
        ]
        self.stubs = itertools.cycle(
            task_service_pb2_grpc.TaskServiceStub(c) for c in self.channels
        )
        # No token exists when the Host asks for none; then the client sends none.
        self.metadata = bearer(host.admin_token) if host.admin_token else None

    async def start(self) -> None:
        """Register the Runners, then warm up (connections, TLS sessions, caches)."""
        await asyncio.gather(*(r.start() for r in self.fleet.runners))
        await self.settle(await self.submit_many(self.counts.warmup))

    async def settle(self, task_ids: list[int]) -> None:
        """Until the tasks are dispatched, finished and released, and the Host has written
        what followed: the next measurement must not pay for these."""
        await self.dispatches.wait(task_ids)
        await self.released.wait(task_ids)
        await asyncio.sleep(SETTLE_SECONDS)

    async def stop(self) -> None:
        await self.fleet.stop()
        for channel in self.channels:
            await channel.close()

    async def submit(self, stub: task_service_pb2_grpc.TaskServiceStub) -> int:
        request = tpb.SubmitTaskRequest(command="true", container_name=ENV)
        reply = await stub.SubmitTask(request, metadata=self.metadata, timeout=WAIT_SECONDS)
        return reply.tasks[0].task_id

    async def submit_many(self, count: int) -> list[int]:
        slots = asyncio.Semaphore(self.counts.in_flight)

        async def one(stub: task_service_pb2_grpc.TaskServiceStub) -> int:
            async with slots:
                return await self.submit(stub)

        return await asyncio.gather(*(one(next(self.stubs)) for _ in range(count)))

    def dispatched_at(self, task_id: int) -> float:
        for runner in self.fleet.runners:
            if task_id in runner.dispatched_at:
                return runner.dispatched_at[task_id]
        raise KeyError(task_id)

    async def throughput(self) -> tuple[float, float, float]:
        """(tasks/s, Host CPU seconds per task, cores other processes used) over
        ``counts.tasks`` submissions."""
        meter = CpuMeter(self.host, self.hosts)
        before, start = meter.read(), time.perf_counter()
        ids = await self.submit_many(self.counts.tasks)
        elapsed = time.perf_counter() - start
        host, others = meter.since(before, meter.read())
        await self.settle(ids)
        return self.counts.tasks / elapsed, host / self.counts.tasks, others / elapsed

    async def dispatch_sample(self) -> tuple[float, float]:
        """Submit one task alone: (SubmitTask sent -> the Runner has it, -> answered).
        Returns once the task is released, so the next sample finds the Host idle."""
        sent = time.perf_counter()
        task_id = await self.submit(next(self.stubs))
        replied = time.perf_counter() - sent
        await self.dispatches.wait([task_id])
        latency = self.dispatched_at(task_id) - sent
        await self.released.wait([task_id])
        return latency, replied

    async def dispatch_latencies(self) -> tuple[list[float], list[float]]:
        """``counts.samples`` tasks one at a time: (latencies, reply times)."""
        samples = [await self.dispatch_sample() for _ in range(self.counts.samples)]
        return [s[0] for s in samples], [s[1] for s in samples]


class Profiler:
    """Records the Host during each timed throughput phase when ``prefix`` is set
    (HAKURIVER_BENCH_PROFILE=<prefix>): py-spy, which must be on PATH, sampling the threads
    holding the GIL, one raw flame file per round."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.proc: subprocess.Popen[bytes] | None = None

    def command(self, out: str, pid: int) -> list[str]:
        spy = ["py-spy", "record", "--gil", "--nonblocking", "-f", "raw"]
        return [*spy, "-o", f"{out}.txt", "--pid", str(pid)]

    def start(self, host: HostProcess, name: str) -> None:
        if not self.prefix:
            return
        assert host.proc is not None
        out = f"{self.prefix}-{name}-{host.proc.pid}"
        self.proc = subprocess.Popen(self.command(out, host.proc.pid))
        time.sleep(1)  # until it has attached

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            proc.send_signal(signal.SIGINT)
            proc.wait(60)


async def measure(host: HostProcess, counts: Counts, profiler: Profiler, name: str) -> Round:
    """One alone round: throughput (profiled, if asked), then dispatch latencies."""
    load = Load(host, counts, [host])
    try:
        await load.start()
        profiler.start(host, name)
        try:
            throughput = await load.throughput()
        finally:
            profiler.stop()
        return Round(*throughput, *await load.dispatch_latencies())
    finally:
        await load.stop()


async def measure_side_by_side(hosts: list[HostProcess], counts: Counts) -> list[Round]:
    """One side-by-side round, a Round per Host: throughput with every Host loaded at once;
    dispatch samples taken in turns (one Host's, the other's, ...), never two at a time,
    so each sample has the machine to itself and its neighbours in time are the other's."""
    loads = [Load(host, counts, hosts) for host in hosts]
    try:
        await asyncio.gather(*(load.start() for load in loads))
        timed = await asyncio.gather(*(load.throughput() for load in loads))
        samples: list[list[tuple[float, float]]] = [[] for _ in loads]
        for index in range(counts.samples):
            turn = range(len(loads)) if index % 2 == 0 else reversed(range(len(loads)))
            for which in turn:
                samples[which].append(await loads[which].dispatch_sample())
    finally:
        for load in loads:
            await load.stop()
    return [
        Round(*t, [x[0] for x in found], [x[1] for x in found])
        for t, found in zip(timed, samples, strict=True)
    ]


def schedule(setups: list[Setup], rounds: int) -> list[list[Setup]]:
    """In order, then reversed, and so on: each goes first (and last) as often as another."""
    return [setups if index % 2 == 0 else setups[::-1] for index in range(rounds)]


def started(stack: contextlib.ExitStack, setups: list[Setup]) -> list[HostProcess]:
    """A Host per setup, started side by side (stopped with ``stack``)."""
    return stack.enter_context(bench_hosts(*((s.plaintext, s.authentication) for s in setups)))


@dataclass
class Outcome:
    alone: list[Result]  # a Result per setup, baseline first
    side_by_side: list[Result]  # baseline, secured


OnRound = Callable[[str, Setup, Round], None]


def run(
    counts: Counts,
    setups: list[Setup],
    on_round: OnRound | None = None,
    profiler: Profiler | None = None,
) -> Outcome:
    """Alone rounds of ``setups`` (the first is the baseline), then side-by-side rounds of
    baseline and secured."""
    return asyncio.run(_run(counts, setups, on_round or (lambda *_: None), profiler))


async def _run(
    counts: Counts, setups: list[Setup], on_round: OnRound, profiler: Profiler | None
) -> Outcome:
    # One event loop for every round: grpc.aio keeps a poller bound to the first loop.
    # Hosts start and stop blocking it, between rounds, when nothing else runs.
    alone = {setup.name: Result(setup) for setup in setups}
    for order in schedule(setups, counts.rounds):
        for setup in order:
            with contextlib.ExitStack() as stack:
                [host] = started(stack, [setup])
                found = await measure(host, counts, profiler or Profiler(""), setup.name)
            alone[setup.name].label = host.label
            alone[setup.name].rounds.append(found)
            on_round("alone", setup, found)
    together = {setup.name: Result(setup) for setup in (BASELINE, SECURED)}
    for order in schedule([BASELINE, SECURED], counts.pairs):
        with contextlib.ExitStack() as stack:
            hosts = started(stack, order)
            rounds = await measure_side_by_side(hosts, counts)
        for setup, host, found in zip(order, hosts, rounds, strict=True):
            together[setup.name].label = host.label
            together[setup.name].rounds.append(found)
            on_round("side by side", setup, found)
    return Outcome(
        [alone[setup.name] for setup in setups], [together[BASELINE.name], together[SECURED.name]]
    )


def ms(seconds: float) -> str:
    return f"{seconds * 1000:7.2f} ms"


def slower(ratio: float) -> str:
    """A cost ratio against the baseline (above 1: slower) in words, against the goal."""
    verdict = "within" if ratio - 1 <= GOAL else "OVER"
    return f"{(ratio - 1) * 100:+5.1f}% ({verdict} the {GOAL:.0%} goal)"


def print_round(way: str, setup: Setup, found: Round) -> None:
    print(
        f"  {way:12s} {setup.name:8s} {found.throughput:5.0f} tasks/s  "
        f"Host CPU {found.host_cpu_per_task * 1e6:5.0f} us/task  "
        f"dispatch median {ms(statistics.median(found.latencies))}  "
        f"(other processes: {found.others:.1f} cores)",
        flush=True,
    )


def paired(base: Result, other: Result, cost: Callable[[Round], float]) -> list[float]:
    """other/baseline cost ratios of rounds run together or next to each other (above 1:
    slower)."""
    pairs = zip(base.rounds, other.rounds, strict=True)
    return [cost(o) / cost(b) if cost(b) else math.nan for b, o in pairs]


def ratios(found: list[float]) -> str:
    """Per-round ratios and their median, judged against the goal."""
    each = " ".join(f"{r:.2f}" for r in found)
    middle = statistics.median(found)
    return f"{each} -> median {middle:.3f}: {slower(middle)}"


def report(title: str, results: list[Result], counts: Counts) -> None:
    """Each figure per setup, and each setup against the first (the baseline), round by
    round: rounds run together or next to each other share the machine's mood."""
    base = results[0]
    print(f"  {title}")
    print(f"    SubmitTask throughput ({counts.tasks} tasks, {counts.in_flight} in flight):")
    for r in results:
        rounds = ", ".join(f"{t:.0f}" for t in r.throughputs)
        print(
            f"      {r.setup.name:8s} median {r.throughput:5.0f} tasks/s (rounds: {rounds}); "
            f"Host CPU {r.host_cpu_per_task * 1e6:5.0f} us/task; "
            f"other processes {r.others:.1f} cores"
        )
    for r in results[1:]:
        name = f"{r.setup.name}/{base.setup.name}"
        print(f"      {name} time per task, per round: "
              f"{ratios(paired(base, r, lambda x: 1 / x.throughput))}")  # fmt: skip
        print(f"      {name} Host CPU per task, per round: "
              f"{ratios(paired(base, r, lambda x: x.host_cpu_per_task))}")  # fmt: skip
    print(f"    dispatch overhead (one at a time, {counts.samples} per round, submit -> runner):")
    for r in results:
        print(
            f"      {r.setup.name:8s} median {ms(r.median)}  p95 {ms(r.p95)}  "
            f"(SubmitTask answered: median {ms(r.reply_median)})"
        )
    for r in results[1:]:
        name = f"{r.setup.name}/{base.setup.name}"
        medians = paired(base, r, lambda x: statistics.median(x.latencies))
        print(f"      {name} median, per round: {ratios(medians)}")
        print(f"      {name} p95 of all rounds: {r.p95 / base.p95:.3f}: {slower(r.p95 / base.p95)}")


def report_all(outcome: Outcome, counts: Counts) -> None:
    results = outcome.alone
    print("security cost: " + "; ".join(f"{r.setup.name} = {r.label}" for r in results))
    print(
        f"  Hosts are subprocesses, each with a fresh database; per Host {counts.runners} "
        f"FakeRunners and {counts.clients} asyncio clients in this process; "
        f"{psutil.cpu_count()} cores"
    )
    alone = f"alone: one Host at a time, {counts.rounds} round(s) each, order alternating"
    report(alone, results, counts)
    report(
        f"side by side: both Hosts loaded at once, {counts.pairs} round(s); "
        "each Host's figures while sharing the machine with the other",
        outcome.side_by_side,
        counts,
    )
    base, secured = outcome.side_by_side
    time_ratio = statistics.median(paired(base, secured, lambda x: 1 / x.throughput))
    cpu_ratio = statistics.median(paired(base, secured, lambda x: x.host_cpu_per_task))
    dispatch = statistics.median(paired(base, secured, lambda x: statistics.median(x.latencies)))
    print(
        "  secured vs baseline, side by side (the steadier measure): SubmitTask time per task "
        f"{slower(time_ratio)}; Host CPU per task {slower(cpu_ratio)}; "
        f"dispatch median {slower(dispatch)}"
    )


def main() -> None:
    counts = Counts.from_env()
    setups = [BASELINE, SECURED]
    if os.environ.get("HAKURIVER_BENCH_SEC_SPLIT"):
        setups += [TLS_ONLY, TOKENS_ONLY]
    print("security cost: rounds as they finish", flush=True)
    profiler = Profiler(os.environ.get("HAKURIVER_BENCH_PROFILE", ""))
    report_all(run(counts, setups, print_round, profiler), counts)


if __name__ == "__main__":
    main()
