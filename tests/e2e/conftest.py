"""Fixtures: Docker availability and real clusters.

Tests that need Docker fail when it is missing in CI (CI=true); on a developer machine
without Docker they are skipped with the reason.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from hakuriver_runner.docker_backend import DockerBackend
from tests.e2e.browser import browser as browser
from tests.e2e.harness import BASE_ENV, SSHD_ENV, ProcessCluster, required, running_cluster
from tests.unit.local_cluster import local_config


def _docker_problem() -> str | None:
    try:
        client = docker.from_env()
        client.ping()
    except Exception as exc:
        return f"no Docker daemon ({exc.__class__.__name__}); run scripts/ensure-docker.sh"
    try:
        client.images.get(f"hakuriver/{BASE_ENV}:base")
    except docker.errors.ImageNotFound:
        return f"image hakuriver/{BASE_ENV}:base missing; run scripts/build-base-image.sh"
    finally:
        client.close()
    return None


@pytest.fixture(scope="session")
def docker_ready() -> None:
    problem = _docker_problem()
    if problem is None:
        return
    required("Docker", problem)


@pytest.fixture(scope="session")
def sshd_image(docker_ready: None) -> str:
    """An environment with openssh-server (scripts/build-sshd-image.sh)."""
    client = docker.from_env()
    try:
        client.images.get(f"hakuriver/{SSHD_ENV}:base")
    except docker.errors.ImageNotFound:
        required(
            "the sshd image",
            f"image hakuriver/{SSHD_ENV}:base missing; run scripts/build-sshd-image.sh",
        )
    finally:
        client.close()
    return SSHD_ENV


@pytest.fixture(scope="module")
def cluster(
    docker_ready: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ProcessCluster]:
    """One Host and two Runners shared by a test module."""
    with running_cluster(tmp_path_factory.mktemp("cluster"), runner_count=2) as c:
        yield c


@pytest.fixture
def fresh_cluster(docker_ready: None, tmp_path: Path) -> Iterator[ProcessCluster]:
    """A cluster of one Runner of the test's own, for tests that kill processes."""
    with running_cluster(tmp_path, runner_count=1) as c:
        yield c


@pytest.fixture
def backend(docker_ready: None, tmp_path: Path) -> Iterator[DockerBackend]:
    """The Runner's Docker backend alone, against the real daemon, as a cluster of its own:
    its containers are removed afterwards."""
    made = DockerBackend(local_config(tmp_path), "edge-" + uuid.uuid4().hex[:8])
    made.cluster_id = uuid.uuid4().hex[:12]
    yield made
    for container in made.client.containers.list(
        all=True, filters={"label": f"hakuriver.cluster={made.cluster_id}"}
    ):
        container.remove(force=True)
