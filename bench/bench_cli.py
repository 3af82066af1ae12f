"""How long the command-line tools take to start, against the same calls made through the API.

A real Host process on loopback (TLS with the test CA, API tokens; bench/host_process.py) and
one FakeRunner (tests/fake_runner.py: the real runner protocol, no Docker; it runs each task
and reports exit 0 at once) in this process, on an event loop of its own thread. Interleaved,
``runs`` times each, medians (and minimums):

- floor: ``python -c pass``, the interpreter starting and stopping (same interpreter, same
  site-packages: what any Python tool pays);
- ``hakuriver.task --help`` and ``hakuriver.client --help``;
- ``hakuriver.task submit --wait -- true`` (the console script, as a user runs it: over
  Connect on the dashboard's HTTPS port), and the same with the dashboard off in its config
  (over gRPC);
- the same submit and wait through the API from this already-running process: SubmitTask
  then WatchTask until the task is final, (a) on a new channel each time (TCP connect, TLS
  handshake, the token, both calls: what any one-shot client pays, in any language) and
  (b) on a channel kept open (the Host's and Runner's own work alone);
- ``hakuriver.client nodes`` and ListNodes through the API on a new channel.

CLI overhead = CLI wall time - new-channel API round trip - floor: what is left is the tool's
own cost (imports, argument parsing, reading the config and token, building the channel).
For ``--help`` it is the wall time minus the floor. Also timed, as a bound on that overhead
for any Python client of the API: ``python -c 'import grpc, <the task service stubs>'``.
Prints figures; asserts nothing about time. ``HAKURIVER_BENCH_CLI_RUNS`` sets the runs
(default 15).

The processes run as an installed tool does, from compiled bytecode: with their own
``PYTHONPYCACHEPREFIX`` (a temporary folder, filled by the untimed first rounds) and without
``PYTHONDONTWRITEBYTECODE``, so nothing is written into the checkout and no module is
compiled again in a timed run.

``HAKURIVER_BENCH_CLI_BEFORE=DIR`` also times ``--help`` and ``submit --wait`` of another
checkout of the tools in the same rounds (e.g. ``git archive REV | tar -x -C DIR``), run as
``python -c 'from hakuriver_cli.task import run; run()'`` with ``PYTHONPATH=DIR``, so a
change's before and after come from one run on one machine.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from bench.host_process import HostProcess, bench_host
from hakuriver_common.channels import open_channel
from hakuriver_common.proto.hakuriver.v1 import (
    node_service_pb2 as npb,
    node_service_pb2_grpc,
    task_pb2,
    task_service_pb2 as tpb,
    task_service_pb2_grpc,
)
from hakuriver_common.statuses import FINAL_TASK_STATUSES
from tests.e2e.harness import without_hakuriver_variables
from tests.fake_runner import FakeRunner

TARGET_MS = 100.0  # the bound on the CLI's own cost


@dataclass(frozen=True)
class Counts:
    runs: int = 15
    warmup: int = 2  # untimed rounds first (page cache, .pyc files, the Host's caches)
    before: Path | None = None  # another checkout to time in the same rounds

    @classmethod
    def from_env(cls) -> Counts:
        before = os.environ.get("HAKURIVER_BENCH_CLI_BEFORE")
        return cls(
            runs=int(os.environ.get("HAKURIVER_BENCH_CLI_RUNS", str(cls.runs))),
            before=Path(before).resolve() if before else None,
        )


# What is timed, in the order of each round and of the report.
FLOOR = "floor: python -c pass"
TASK_HELP = "hakuriver.task --help"
CLIENT_HELP = "hakuriver.client --help"
TASK_SUBMIT = "hakuriver.task submit --wait -- true"
TASK_SUBMIT_GRPC = "the same, over gRPC (dashboard off)"
API_SUBMIT_NEW = "API submit + wait, new channel"
API_SUBMIT_WARM = "API submit + wait, open channel"
CLIENT_NODES = "hakuriver.client nodes"
API_NODES_NEW = "API ListNodes, new channel"
GRPC_IMPORT = "python -c 'import grpc, task stubs'"
BEFORE_HELP = "before: hakuriver.task --help"
BEFORE_SUBMIT = "before: hakuriver.task submit --wait -- true"


@dataclass
class Result:
    label: str  # how the Host is secured
    seconds: dict[str, list[float]] = field(default_factory=dict)

    def median(self, name: str) -> float:
        return statistics.median(self.seconds[name])

    def overhead(self, cli: str, api: str | None = None) -> float:
        """The CLI's own cost: its wall time minus the floor (and minus the API call)."""
        api_time = self.median(api) if api is not None else 0.0
        return self.median(cli) - api_time - self.median(FLOOR)


def tool(name: str) -> list[str]:
    """The console script as installed next to this interpreter (else ``-m``)."""
    script = Path(sys.executable).with_name(name)
    if script.is_file():
        return [str(script)]
    found = shutil.which(name)
    if found:
        return [found]
    return [sys.executable, "-m", f"hakuriver_cli.{name.split('.', 1)[1].replace('-', '_')}"]


def _clean_env(pycache: Path) -> dict[str, str]:
    """This environment without HakuRiver's variables (only --config configures the tools),
    with bytecode cached in ``pycache``."""
    env = without_hakuriver_variables()
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = str(pycache)
    return env


def timed_process(
    argv: list[str], pycache: Path, pythonpath: Path | None = None
) -> Callable[[], float]:
    env = _clean_env(pycache)
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    pycache.mkdir(parents=True, exist_ok=True)

    def run() -> float:
        start = time.perf_counter()
        # cwd: not the checkout, which ``python -c`` would put first on sys.path
        done = subprocess.run(argv, capture_output=True, env=env, timeout=120, cwd=pycache)
        elapsed = time.perf_counter() - start
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} exited {done.returncode}: {done.stderr!r}")
        return elapsed

    return run


def submit_and_wait(channel: grpc.Channel) -> None:
    """What ``hakuriver.task submit --wait -- true`` asks the Host."""
    stub = task_service_pb2_grpc.TaskServiceStub(channel)
    request = tpb.SubmitTaskRequest(kind=task_pb2.TASK_KIND_COMMAND, command="true")
    [task] = stub.SubmitTask(request, timeout=30).tasks
    for update in stub.WatchTask(tpb.WatchTaskRequest(task_id=task.task_id), timeout=60):
        if update.task.status in FINAL_TASK_STATUSES:
            if update.task.status != task_pb2.TASK_STATUS_COMPLETED:
                raise RuntimeError(f"task {task.task_id} ended {update.task.status}")
            return
    raise RuntimeError(f"task {task.task_id}: the watch ended before the task did")


def list_nodes(channel: grpc.Channel) -> None:
    stub = node_service_pb2_grpc.NodeServiceStub(channel)
    stub.ListNodes(npb.ListNodesRequest(), timeout=30)


def timed_api(host: HostProcess, call: Callable[[grpc.Channel], None]) -> Callable[[], float]:
    def run() -> float:
        start = time.perf_counter()
        with open_channel(host.client_config, host.admin_token) as channel:
            call(channel)
        return time.perf_counter() - start

    return run


def timed_warm(channel: grpc.Channel, call: Callable[[grpc.Channel], None]) -> Callable[[], float]:
    def run() -> float:
        start = time.perf_counter()
        call(channel)
        return time.perf_counter() - start

    return run


@contextmanager
def runner_thread(host: HostProcess) -> Iterator[FakeRunner]:
    """A FakeRunner serving on an event loop in a thread of its own, while this thread waits
    on processes and blocking calls."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="fake-runner", daemon=True)
    thread.start()

    async def start() -> FakeRunner:
        return await FakeRunner(host.client_config, "bench-cli", cores=4).start()

    try:
        runner = asyncio.run_coroutine_threadsafe(start(), loop).result(30)
        try:
            yield runner
        finally:
            asyncio.run_coroutine_threadsafe(runner.stop(), loop).result(30)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)
        loop.close()


def run(counts: Counts) -> Result:
    with (
        tempfile.TemporaryDirectory() as cache,
        bench_host() as host,
        runner_thread(host),
        open_channel(host.client_config, host.admin_token) as warm,
    ):
        pycache = Path(cache)
        config = ["--config", str(host.config_path)]
        over_grpc = pycache / "over-grpc.toml"
        over_grpc.write_text(
            host.config_path.read_text().replace("[dashboard]\n", "[dashboard]\nenabled = false\n")
        )
        stubs = "import grpc; import hakuriver_common.proto.hakuriver.v1.task_service_pb2_grpc"
        steps: dict[str, Callable[[], float]] = {
            FLOOR: timed_process([sys.executable, "-c", "pass"], pycache),
            TASK_HELP: timed_process([*tool("hakuriver.task"), "--help"], pycache),
            CLIENT_HELP: timed_process([*tool("hakuriver.client"), "--help"], pycache),
            TASK_SUBMIT: timed_process(
                [*tool("hakuriver.task"), *config, "submit", "--wait", "--", "true"], pycache
            ),
            TASK_SUBMIT_GRPC: timed_process(
                [
                    *tool("hakuriver.task"),
                    "--config",
                    str(over_grpc),
                    "submit",
                    "--wait",
                    "--",
                    "true",
                ],
                pycache,
            ),
            API_SUBMIT_NEW: timed_api(host, submit_and_wait),
            API_SUBMIT_WARM: timed_warm(warm, submit_and_wait),
            CLIENT_NODES: timed_process([*tool("hakuriver.client"), *config, "nodes"], pycache),
            API_NODES_NEW: timed_api(host, list_nodes),
            GRPC_IMPORT: timed_process([sys.executable, "-c", stubs], pycache),
        }
        if counts.before is not None:
            old = [sys.executable, "-c", "from hakuriver_cli.task import run; run()"]
            steps[BEFORE_HELP] = timed_process([*old, "--help"], pycache / "before", counts.before)
            steps[BEFORE_SUBMIT] = timed_process(
                [*old, *config, "submit", "--wait", "--", "true"],
                pycache / "before",
                counts.before,
            )
        result = Result(host.label, {name: [] for name in steps})
        for round_ in range(counts.warmup + counts.runs):
            for name, step in steps.items():
                elapsed = step()
                if round_ >= counts.warmup:
                    result.seconds[name].append(elapsed)
    return result


def ms(seconds: float) -> str:
    return f"{seconds * 1000:7.1f} ms"


def report(result: Result, counts: Counts) -> None:
    print(f"cli: start-up and round trips, {counts.runs} runs each, interleaved, medians")
    print(f"  Host: a subprocess ({result.label}); one FakeRunner (no Docker)")
    for name, values in result.seconds.items():
        print(f"  {name:46s} median {ms(statistics.median(values))}  min {ms(min(values))}")
    print("  CLI overhead (wall - API round trip on a new channel - floor):")
    for cli, api in (
        (TASK_HELP, None),
        (CLIENT_HELP, None),
        (TASK_SUBMIT, API_SUBMIT_NEW),
        (TASK_SUBMIT_GRPC, API_SUBMIT_NEW),
        (CLIENT_NODES, API_NODES_NEW),
        (BEFORE_HELP, None),
        (BEFORE_SUBMIT, API_SUBMIT_NEW),
    ):
        if cli in result.seconds:
            print(f"    {cli:44s} {ms(result.overhead(cli, api))}  (target < {TARGET_MS:.0f} ms)")
    grpc_import = result.overhead(GRPC_IMPORT)
    print(f"  importing grpc and the task stubs alone (any Python client): {ms(grpc_import)}")
    connect = result.median(API_SUBMIT_NEW) - result.median(API_SUBMIT_WARM)
    print(f"  of the API round trip, a new channel (connect, TLS, first call) costs {ms(connect)}")


def main() -> None:
    counts = Counts.from_env()
    report(run(counts), counts)


if __name__ == "__main__":
    main()
