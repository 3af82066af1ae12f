"""The Host lists only its own environment containers. A tarball committed from one keeps
the container's labels (``hakuriver.env`` among them), so every task container a Runner
starts from it carries that label too; on a machine where a Runner shares the Host's Docker
(the quickstart, a Host that is also a compute node) those are not environments."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

from hakuriver_host.environments import EnvironmentManager
from tests.unit.local_cluster import local_config


def _container(name: str, labels: dict[str, str]) -> Any:
    return SimpleNamespace(name=name, labels=labels, status="running")


def test_task_containers_from_a_committed_environment_are_not_listed(tmp_path: Path) -> None:
    image_labels = {"hakuriver.env": "base", "hakuriver.env_image": "hakuriver/base:base"}
    found = [
        _container("hakuriver-env-base", image_labels),
        _container(
            "hakuriver-0123abcd-node1-task-42",
            {**image_labels, "hakuriver.task_id": "42", "hakuriver.runner": "node1"},
        ),
    ]
    manager = EnvironmentManager(local_config(tmp_path))
    manager._client = SimpleNamespace(
        containers=SimpleNamespace(list=lambda **_: found),
    )
    listed = manager.list_containers()
    assert [c["container_name"] for c in listed] == ["hakuriver-env-base"]
