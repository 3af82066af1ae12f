"""The fuzz tier's short run: every public RPC and the runner protocol, with requests
typed from the proto descriptors and corrupt bytes, against a real in-process Host (see
tests/fuzz/ and docs/development.md#fuzzing).

``make fuzz`` runs the same test with ``HAKURIVER_FUZZ_REQUESTS=10000`` and a random
``--hypothesis-seed`` (printed); here the run is derandomized, so CI sees the same
requests every time.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from tests.fuzz.driver import HostThread
from tests.fuzz.run import fuzz

REQUESTS = int(os.environ.get("HAKURIVER_FUZZ_REQUESTS", "400"))
# `make fuzz` sets the count and draws a seed; the suite is derandomized.
FULL_RUN = "HAKURIVER_FUZZ_REQUESTS" in os.environ


@pytest.fixture
def host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[HostThread]:
    """A Host (with FakeRunners, an admin and a plain user) on a thread of its own. The
    machine has no Docker as far as the Host knows: environment RPCs answer UNAVAILABLE,
    and nothing the fuzzer sends reaches a real daemon."""

    def no_docker(*args: object, **kwargs: object) -> None:
        raise docker.errors.DockerException("no Docker in the fuzz tier")

    monkeypatch.setattr(docker, "from_env", no_docker)
    monkeypatch.setattr(docker, "DockerClient", no_docker)
    started = HostThread(tmp_path / "fuzz")
    try:
        started.start()
        yield started
    finally:
        started.stop()
    assert not started.leftover, f"tasks still running after the Host stopped: {started.leftover}"


def test_fuzz_every_rpc_and_the_runner_protocol(host: HostThread) -> None:
    figures, problems = fuzz(host, REQUESTS, derandomize=not FULL_RUN)
    print()
    print(figures.report())
    assert not problems, f"{len(problems)} problems:\n" + "\n".join(problems)
