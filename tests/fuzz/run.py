"""One fuzz run against a HostThread, and the checks after it (used by tests/unit/test_fuzz.py,
which `make fuzz` runs with more requests).

After the requests: the Host still serves (a fresh FakeRunner runs a task to completion,
its output intact), no request got UNKNOWN, INTERNAL, DATA_LOSS or UNIMPLEMENTED (nor a
hung unary call, nor HTTP 5xx over Connect), nothing was logged with a traceback or at
ERROR, the process grew by less than ``MEMORY_BOUND``, every RPC was called, and the
state adds up (tests/invariants.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import resource
from collections.abc import Iterator
from typing import Any

from hypothesis import HealthCheck, Phase, given, settings, strategies as st

from hakuriver_common.proto.hakuriver.v1 import task_pb2
from hakuriver_common.statuses import TaskStatus
from tests.fake_runner import exit_with
from tests.fuzz.driver import (
    Figures,
    HostThread,
    LogRecorder,
    Outcome,
    Request,
    public_rpcs,
    rss_bytes,
)
from tests.fuzz.requests import requests_for
from tests.invariants import assert_consistent

# Growth of the process (Host, fuzzer and hypothesis together) the run may cause.
MEMORY_BOUND = 256 * 2**20
# A safety net, not a check: the address space the run may add before allocations fail
# (a Host that believes a claimed size could otherwise take the machine down; it then
# shows as a MemoryError, so as INTERNAL, in the figures).
ADDRESS_SPACE_MARGIN = 8 * 2**30
MEMORY_TEXT = ("512M", "1G", "0", "-1", "1.5G", "9999999999P", "abc", "1e9", "16E", "1 G")


def hints(host: HostThread) -> dict[str, st.SearchStrategy[Any]]:
    """Realistic values for fields by name, mixed with the hostile ones."""
    ids = st.sampled_from(host.task_ids)
    nodes = st.sampled_from(host.hostnames)
    return {
        "task_id": ids,
        "task_ids": ids,
        "known_task_ids": ids,
        "before_task_id": ids,
        "hostname": nodes,
        "node": nodes,
        "name": st.sampled_from(["hakuriver-base", "fuzzer", "admin"]),
        "user": st.sampled_from(["fuzzer", "admin", "*"]),
        "container_name": st.sampled_from(["hakuriver-base", "NULL"]),
        "memory": st.sampled_from(MEMORY_TEXT),
    }


@contextlib.contextmanager
def address_space_limit(margin: int) -> Iterator[None]:
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    with open("/proc/self/statm") as statm:
        now = int(statm.read().split()[0]) * 4096
    limit = now + margin
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


@contextlib.contextmanager
def recording_logs() -> Iterator[LogRecorder]:
    recorder = LogRecorder()
    root = logging.getLogger()
    level = root.level
    root.addHandler(recorder)
    root.setLevel(min(level, logging.WARNING) if level else logging.WARNING)
    try:
        yield recorder
    finally:
        root.removeHandler(recorder)
        root.setLevel(level)


def fuzz(
    host: HostThread, total: int, derandomize: bool, only: str = ""
) -> tuple[Figures, list[str]]:
    """Send ``total`` requests (rounded up to one per RPC); the figures and every problem.
    ``only``: a regular expression; fuzz just the RPCs whose path it matches."""
    rpcs = [rpc for rpc in public_rpcs() if re.search(only, rpc.path)]
    if not rpcs:
        raise ValueError(f"no RPC matches {only!r}")
    figures = Figures()
    examples = max(1, -(-total // len(rpcs)))

    # One request to every RPC per example, sent at once: each RPC gets its share.
    strategies = [requests_for(rpc, hints(host)) for rpc in rpcs]

    @settings(
        max_examples=examples,
        deadline=None,
        derandomize=derandomize,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
        print_blob=True,
    )
    @given(st.tuples(*strategies))
    def run_batch(batch: tuple[Request, ...]) -> None:
        on_grpc = [r for r in batch if r.transport == "grpc"]
        outcomes = host.run_client(_gather(host, on_grpc))
        for request, outcome in zip(on_grpc, outcomes, strict=True):
            figures.add(request, outcome)
        for request in batch:
            if request.transport == "connect":
                figures.add(request, host.call(request))

    with recording_logs() as logs, address_space_limit(ADDRESS_SPACE_MARGIN):
        figures.rss_before = rss_bytes()
        run_batch()
        problems = [
            f"{outcome.code} {outcome.details[:200]!r} after {outcome.seconds:.2f} s for "
            f"{request.describe()}"
            for request, outcome in figures.failures
        ]
        problems += host.run(_still_serves(host), timeout=60)
        figures.rss_after = rss_bytes()
        problems += [f"logged: {line}" for line in logs.problems()]
        figures.warnings = logs.warnings_by_logger()
        figures.client_side = logs.problems(client_side=True)
    growth = figures.rss_after - figures.rss_before
    if growth > MEMORY_BOUND:
        problems.append(
            f"memory grew by {growth / 2**20:.0f} MiB (bound {MEMORY_BOUND / 2**20:.0f} MiB)"
        )
    called = {key.split(":", 1)[1] for key in figures.requests if key.startswith("grpc:")}
    missed = sorted(rpc.name for rpc in rpcs if rpc.name not in called)
    if missed and total >= 20 * len(rpcs):
        problems.append(f"RPCs never called: {missed}")
    return figures, problems


async def _gather(host: HostThread, batch: list[Request]) -> list[Outcome]:
    return list(await asyncio.gather(*(host.call_grpc(request) for request in batch)))


async def _still_serves(host: HostThread) -> list[str]:
    """A task through a fresh Runner completes with its output; the books add up."""
    cluster = host.cluster
    problems: list[str] = []
    try:
        name = f"fuzz-final-{len(cluster.runners)}"
        await cluster.add_runner(name, cores=2, answer=exit_with(0, stdout=b"alive\n"))
        task = await cluster.submit("alive", targets=[task_pb2.Target(hostname=name)])
        done = await cluster.wait_status(task.task_id, within=10)
        if done.status != TaskStatus.COMPLETED.pb:
            problems.append(f"the liveness task ended {TaskStatus.from_pb(done.status)}")
        output = await cluster.read_log(task.task_id)
        if output != b"alive\n":
            problems.append(f"the liveness task's output is {output!r}")
    except Exception as exc:
        problems.append(f"the Host no longer runs a task: {type(exc).__name__}: {exc}")
    try:
        await assert_consistent(cluster.tasks, cluster.nodes)
    except AssertionError as exc:
        problems.append(str(exc))
    return problems
