"""create-container never makes Docker pull (an image gone between its look-up and the
container's creation is NOT_FOUND, as one never there), and a container Docker will not
start is not kept under the environment's name (a second try said "already exists")."""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import docker.errors
import pytest
from docker.models.containers import ContainerCollection

from hakuriver_host.environments import EnvironmentManager
from hakuriver_host.errors import FailedPrecondition, NotFound
from tests.unit.local_cluster import DEFAULT_ENV, local_config


class _Client:
    """docker-py's own container collection (its run pulls what create did not find) over
    a daemon whose image went once it was looked up, or which will not start containers."""

    def __init__(self, create: Any) -> None:
        self.pulled: list[str] = []
        found = SimpleNamespace(id="sha256:img")
        self.images = SimpleNamespace(get=lambda ref: found, pull=self._pull)
        self.containers = _Containers(self, create)

    def _pull(self, ref: str, **_: object) -> None:
        self.pulled.append(ref)
        raise docker.errors.APIError("pull refused: no registry here")


class _Containers(ContainerCollection):
    def __init__(self, client: _Client, create: Any) -> None:
        super().__init__(client=client)
        self._create = create

    def get(self, container_id: str) -> Any:
        raise docker.errors.NotFound("no such container")

    def create(self, image: str, command: Any = None, **kwargs: Any) -> Any:
        return self._create()


def _manager(tmp_path: Path, create: Any) -> tuple[EnvironmentManager, _Client]:
    manager = EnvironmentManager(local_config(tmp_path))
    manager._client = client = _Client(create)
    return manager, client


def test_an_image_gone_since_its_look_up_is_not_found_and_never_pulled(tmp_path: Path) -> None:
    def create() -> Any:
        raise docker.errors.ImageNotFound("No such image: lab/tools:1")

    manager, client = _manager(tmp_path, create)
    with pytest.raises(NotFound) as raised:
        manager.create_container("lab/tools:1", "myenv")
    assert raised.value.message.startswith("image: 'lab/tools:1' is not a local image")
    assert client.pulled == []


def test_a_container_docker_will_not_start_is_removed(tmp_path: Path) -> None:
    removed: list[bool] = []

    def start() -> None:
        raise docker.errors.APIError("500", explanation="OCI runtime create failed")

    made = SimpleNamespace(start=start, remove=lambda force: removed.append(force))
    manager, _ = _manager(tmp_path, lambda: made)
    with pytest.raises(FailedPrecondition) as raised:
        manager.create_container("lab/tools:1", "myenv")
    assert raised.value.message == "docker could not start lab/tools:1: OCI runtime create failed"
    assert removed == [True]


def test_a_host_without_docker_says_so_not_that_the_base_image_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """With Docker down at its start, the Host warned that 'busybox:latest' "is not a local
    image" and told the admin to load one, which was there all along."""

    def down(**_: object) -> Any:
        raise docker.errors.DockerException("Error while fetching server API version")

    monkeypatch.setattr(docker, "from_env", down)
    caplog.set_level(logging.WARNING, logger="hakuriver_host.environments")
    EnvironmentManager(local_config(tmp_path)).ensure_default()
    [said] = [r.getMessage() for r in caplog.records]
    assert said == (
        f"default environment {DEFAULT_ENV!r} has no tarball, and it cannot be made from "
        "'busybox:latest' now: Docker is not available on the Host: Error while fetching "
        "server API version; once Docker answers, restart the Host to make it"
    )
