"""Fixtures of the unit tier: a real Host in the test's event loop with FakeRunners.

No Docker and no subprocess: ``local_cluster`` is a HostServer on loopback ports with its
SQLite database and shared folder in ``tmp_path`` (see tests/unit/local_cluster.py).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import docker
import pytest

from hakuriver_host import metrics_http
from tests.unit.local_cluster import LocalCluster, local_config, place_migrated_database

MakeCluster = Callable[..., Awaitable[LocalCluster]]

# The tier's objects are many and mostly long-lived (the packages, grpc, SQLAlchemy,
# hypothesis, every test module): collected as often as Python's defaults ask, each test's
# allocations traversed them all again. Collections ten times rarer and none of what was
# loaded before the first test (pytest_collection_finish) took a fifth off the tier's CPU.
gc.set_threshold(100_000, 50, 100)


def pytest_collection_finish(session: pytest.Session) -> None:
    gc.collect()
    gc.freeze()


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """``-n auto``: two workers per core, as many tests spend most of their time waiting for
    a timer (a Runner's silence, a deadline, a token's expiry) while the other worker of
    their core runs."""
    return 2 * len(os.sched_getaffinity(0))


@pytest.fixture(autouse=True)
def no_docker_and_no_subprocess(monkeypatch: pytest.MonkeyPatch) -> None:
    """The unit tier runs anywhere: reaching for Docker or a subprocess fails the test."""

    def refuse(what: str) -> Callable[..., NoReturn]:
        def refused(*args: Any, **kwargs: Any) -> NoReturn:
            raise AssertionError(f"unit tests must not use {what}; put this test in tests/e2e")

        return refused

    monkeypatch.setattr(docker, "from_env", refuse("Docker"))
    monkeypatch.setattr(docker, "DockerClient", refuse("Docker"))
    monkeypatch.setattr(subprocess, "Popen", refuse("a subprocess"))


@pytest.fixture
async def make_local_cluster(
    tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[MakeCluster]:
    """Start LocalClusters with config sections changed, e.g.
    ``await make_local_cluster(scheduling={"starvation_seconds": 0})``; all are closed after
    the test, which fails if anything it started is still running then. Each starts on a
    copy of a migrated new database, unless the test is marked ``fresh_database``; its
    /metrics server polls every 5 ms, not 50: a Host's stop waits for that poll, at every
    test's end."""
    monkeypatch.setattr(metrics_http, "POLL_SECONDS", 0.005)
    made: list[LocalCluster] = []
    fresh = request.node.get_closest_marker("fresh_database") is not None

    async def make(**sections: dict[str, Any]) -> LocalCluster:
        cluster = LocalCluster(local_config(tmp_path / f"cluster-{len(made)}", **sections))
        if not fresh:
            place_migrated_database(cluster.config)
        made.append(cluster)
        await cluster.start_host()
        return cluster

    yield make
    closed = await asyncio.gather(*(cluster.close() for cluster in made), return_exceptions=True)
    for outcome in closed:
        if isinstance(outcome, BaseException):
            raise outcome
    leftover = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    if leftover:
        await asyncio.sleep(0.1)  # let cancelled tasks finish unwinding
        leftover = [t for t in leftover if not t.done()]
    assert not leftover, f"tasks still running after teardown: {leftover}"


@pytest.fixture
async def local_cluster(make_local_cluster: MakeCluster) -> LocalCluster:
    """A Host with the default test config and no runners yet (``add_runner`` starts them)."""
    return await make_local_cluster()


@pytest.fixture
def restored_logging() -> Iterator[None]:
    """The root logger as it was, after a test that set up a daemon's logging."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    for handler in root.handlers:
        handler.close()
    root.handlers[:] = handlers
    root.setLevel(level)
