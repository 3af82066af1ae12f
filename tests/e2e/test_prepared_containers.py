"""The Runner's Docker edge for containers prepared ahead, against a real daemon: what a
dispatch does when what was prepared is gone, stale or for another dispatch. These are the
races of a reconnect (the scan of the new stream while the old stream's threads still run)
and of an environment load, played one step at a time."""

from __future__ import annotations

import docker
import pytest

from hakuriver_common.proto.hakuriver.v1 import runner_service_pb2 as rpb
from hakuriver_runner.docker_backend import DockerBackend
from tests.e2e.harness import command_dispatch

pytestmark = pytest.mark.docker


def _dispatch(cpu: int, task_id: int = 7) -> rpb.DispatchCommand:
    return command_dispatch(["sleep", "60"], task_id, (cpu,))


def _containers(backend: DockerBackend) -> list[docker.models.containers.Container]:
    return backend.client.containers.list(
        all=True, filters={"label": f"hakuriver.cluster={backend.cluster_id}"}
    )


def _running_on(backend: DockerBackend, container: object, cpu: int) -> None:
    [only] = _containers(backend)
    assert only.id == container.id  # type: ignore[attr-defined]
    assert only.status == "running"
    assert only.attrs["HostConfig"]["CpusetCpus"] == str(cpu)
    assert "hakuriver.prepared" in only.labels


def test_the_prepared_container_is_the_one_started(backend: DockerBackend) -> None:
    assert backend.prepare(_dispatch(0)) is True
    [prepared] = _containers(backend)
    assert prepared.status == "created"
    started = backend.start(_dispatch(0))
    assert started.id == prepared.id
    _running_on(backend, started, 0)


def test_a_prepared_container_removed_meanwhile_is_made_again(backend: DockerBackend) -> None:
    """A scan of a new stream removed it while the old stream's thread held it."""
    assert backend.prepare(_dispatch(0)) is True
    [prepared] = _containers(backend)
    prepared.remove(force=True)
    started = backend.start(_dispatch(0))
    assert started.id != prepared.id
    [only] = _containers(backend)
    assert only.id == started.id and only.status == "running"


def test_a_scan_removes_what_was_prepared_and_a_late_prepare_keeps_nothing(
    backend: DockerBackend,
) -> None:
    assert backend.prepare(_dispatch(0)) is True
    assert backend.tasks() == {}
    assert _containers(backend) == [] and backend.prepared == {}

    # A prepare whose create overlaps a scan: what it made is removed, not held.
    create = backend._create

    def create_then_scan(dispatch: rpb.DispatchCommand, ahead: bool = False) -> object:
        made = create(dispatch, ahead)
        backend.tasks()
        return made

    backend._create = create_then_scan  # type: ignore[method-assign]
    assert backend.prepare(_dispatch(0)) is False
    backend._create = create  # type: ignore[method-assign]
    assert _containers(backend) == [] and backend.prepared == {}


def test_a_container_prepared_for_another_dispatch_is_never_adopted(
    backend: DockerBackend,
) -> None:
    """Prepared for CPU 0 and then forgotten (a scan, a failed removal): the dispatch for
    CPU 1 finds its name taken, removes it and makes its own."""
    assert backend.prepare(_dispatch(0)) is True
    backend.prepared.clear()
    started = backend.start(_dispatch(1))
    [only] = _containers(backend)
    assert only.id == started.id and only.status == "running"
    assert only.attrs["HostConfig"]["CpusetCpus"] == "1"
    assert "hakuriver.prepared" not in only.labels


def test_a_container_prepared_before_a_load_began_is_not_started(
    backend: DockerBackend,
) -> None:
    assert backend.prepare(_dispatch(0)) is True
    [prepared] = _containers(backend)
    # A load of another environment began: the tag this one was made from may have moved.
    backend._drop_prepared_of("another-environment")
    started = backend.start(_dispatch(0))
    assert started.id != prepared.id
    [only] = _containers(backend)
    assert only.id == started.id and "hakuriver.prepared" not in only.labels
