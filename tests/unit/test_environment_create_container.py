"""create-container never makes Docker pull (an image gone between its look-up and the
container's creation is NOT_FOUND, as one never there), and a container Docker will not
start is not kept under the environment's name (a second try said "already exists")."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import docker.errors
import pytest
from docker.models.containers import ContainerCollection

from hakuriver_host.environments import EnvironmentManager
from hakuriver_host.errors import FailedPrecondition, NotFound
from tests.unit.local_cluster import local_config


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
