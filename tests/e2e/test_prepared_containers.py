"""The Runner's Docker edge for containers prepared ahead, against a real daemon: what a
dispatch does when what was prepared is gone, stale or for another dispatch. These are the
races of a reconnect (the scan of the new stream while the old stream's threads still run)
and of an environment load, played one step at a time."""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
import time
from datetime import UTC, datetime
from pathlib import Path

import docker
import pytest

from hakuriver_common.proto.hakuriver.v1 import runner_service_pb2 as rpb, task_pb2
from hakuriver_runner.docker_backend import DockerBackend
from hakuriver_runner.start_gate import NEVER_RELEASED
from tests.e2e.harness import BASE_ENV, command_dispatch

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
    assert prepared.status == "running"  # held at its gate (start_gate)
    assert "hakuriver.gated" in prepared.labels
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

    def create_then_scan(
        dispatch: rpb.DispatchCommand, ahead: bool = False, gated: bool = False
    ) -> object:
        made = create(dispatch, ahead, gated)
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


def _exited(container: docker.models.containers.Container) -> None:
    for _ in range(100):
        container.reload()
        if container.status == "exited":
            return
        time.sleep(0.05)
    raise AssertionError(f"{container.name} still {container.status}")


def test_a_held_command_runs_only_once_released(backend: DockerBackend) -> None:
    dispatch = command_dispatch(["sh", "-c", "echo ran"], 7, (0,))
    assert backend.prepare(dispatch) is True
    [held] = _containers(backend)
    time.sleep(0.3)
    held.reload()
    assert held.status == "running" and held.logs() == b""
    released = datetime.now(UTC)
    started = backend.start(dispatch)
    assert started.id == held.id
    info = backend.wait(started)
    assert info.exit_code == 0 and info.error == ""
    # Its start is its release, not the container's start ahead of it.
    assert info.started_at is not None and info.started_at >= released
    assert held.logs() == b"ran\n"


def test_a_held_container_let_go_never_runs_its_command(backend: DockerBackend) -> None:
    """The Runner went away (its gate's attachment closed) before the dispatch: the command
    never runs, and the Runner that comes back removes the container, reporting nothing."""
    assert backend.prepare(command_dispatch(["sh", "-c", "echo ran"], 7, (0,))) is True
    [held] = _containers(backend)
    gate = backend.prepared[7].gate
    assert gate is not None
    gate.close()
    _exited(held)
    assert held.logs() == (NEVER_RELEASED + "\n").encode()
    assert _restarted(backend).tasks() == {}
    assert _containers(backend) == []


def _restarted(backend: DockerBackend) -> DockerBackend:
    """The same node's Runner started again: nothing in memory, its state dir the same."""
    again = DockerBackend(backend.config, backend.runner_name)
    again.cluster_id = backend.cluster_id
    return again


def test_a_released_container_is_a_task_to_every_scan(backend: DockerBackend) -> None:
    dispatch = command_dispatch(["sh", "-c", "exit 3"], 7, (0,))
    assert backend.prepare(dispatch) is True
    released = datetime.now(UTC)
    started = backend.start(dispatch)
    _exited(started)
    assert list(backend.tasks()) == [7]
    again = _restarted(backend)
    found = again.tasks()
    assert list(found) == [7]
    info = again.wait(found[7])
    assert info.exit_code == 3
    assert info.started_at is not None and info.started_at >= released  # its release


def test_a_held_container_killed_at_its_gate_is_removed_by_a_restarted_runner(
    backend: DockerBackend,
) -> None:
    """Its gate ended by a signal (a dockerd restart, a `docker kill`), leaving no mark: never
    released, so never a task."""
    assert backend.prepare(command_dispatch(["sh", "-c", "echo ran"], 7, (0,))) is True
    [held] = _containers(backend)
    held.kill()
    _exited(held)
    assert _restarted(backend).tasks() == {}
    assert _containers(backend) == []


def test_a_held_container_killed_before_its_dispatch_is_made_again(
    backend: DockerBackend,
) -> None:
    """Its gate ended by a signal while it waited: the dispatch sees its attachment ended,
    removes it and runs the command in a new container, once."""
    dispatch = command_dispatch(["sh", "-c", "echo ran"], 7, (0,))
    assert backend.prepare(dispatch) is True
    [held] = _containers(backend)
    held.kill()
    _exited(held)
    started = backend.start(dispatch)
    assert started.id != held.id
    assert backend.wait(started).exit_code == 0
    [only] = _containers(backend)
    assert only.id == started.id and only.logs() == b"ran\n"


def test_an_image_without_a_shell_is_prepared_created_only(backend: DockerBackend) -> None:
    """Its gate cannot start, so it is never held: the next prepare of it creates only."""
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w") as tar:
        info = tarfile.TarInfo("hello.txt")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"hi"))
    tag = f"hakuriver/noshell-{backend.cluster_id}:base"
    backend.client.api.import_image_from_data(
        layer.getvalue(), repository=tag.split(":")[0], tag="base"
    )
    try:
        dispatch = command_dispatch(["true"], 7, (0,))
        dispatch.image = tag
        assert backend.prepare(dispatch) is False  # held, found without a gate, removed
        assert _containers(backend) == []
        assert backend.prepare(dispatch) is True
        [prepared] = _containers(backend)
        assert prepared.status == "created" and "hakuriver.gated" not in prepared.labels
    finally:
        for container in _containers(backend):
            container.remove(force=True)
        backend.client.images.remove(tag, force=True)


def test_a_task_whose_mounts_cover_the_shell_is_not_held_and_others_still_are(
    backend: DockerBackend, tmp_path: Path
) -> None:
    """A task may mount a folder over the image's /bin: its gate cannot start, so tasks
    with that mount are prepared created only from then on, while tasks of the same image
    without it are still held."""
    empty = tmp_path / "empty"
    empty.mkdir()
    covered = command_dispatch(["true"], 7, (0,))
    covered.mounts.append(task_pb2.Mount(host_path=str(empty), container_path="/bin"))
    assert backend.prepare(covered) is False  # held, found without a gate, removed
    assert _containers(backend) == []
    assert backend.prepare(covered) is True
    [created] = _containers(backend)
    assert created.status == "created" and "hakuriver.gated" not in created.labels
    backend.remove(7)
    for task_id in (8, 9):
        assert backend.prepare(command_dispatch(["true"], task_id, (0,))) is True
        held = backend.prepared[task_id]
        assert held.gate is not None
        held.container.reload()
        assert held.container.status == "running"


def _environment(backend: DockerBackend, dispatch: rpb.DispatchCommand) -> set[str]:
    started = backend.start(dispatch)
    assert backend.wait(started).exit_code == 0
    lines = set(started.logs().decode().splitlines())
    started.remove(force=True)
    return {line for line in lines if not line.startswith("HOSTNAME=")}


def _with_bash_as_sh(backend: DockerBackend, tag: str) -> None:
    """The base image with this machine's bash as its /bin/sh (as in RHEL or Fedora)."""
    files = ["/bin/bash"]
    linked = subprocess.run(["ldd", "/bin/bash"], capture_output=True, text=True, check=True)
    files += [word for word in linked.stdout.split() if word.startswith("/")]
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w") as tar:
        for path in files:
            name = "bin/sh" if path == "/bin/bash" else path.lstrip("/")
            tar.add(os.path.realpath(path), arcname=name)
    base = backend.client.containers.create(f"hakuriver/{BASE_ENV}:base", ["true"])
    try:
        base.put_archive("/", archive.getvalue())
        base.commit(repository=tag.split(":")[0], tag="base")
    finally:
        base.remove(force=True)


@pytest.mark.parametrize("shell", ["busybox", "bash"])
def test_a_held_command_gets_the_environment_it_would_have_without_the_gate(
    backend: DockerBackend, shell: str
) -> None:
    """The gate's shell adds PWD and SHLVL to its environment (bash's ``exec`` sets SHLVL
    again): they are gone before the command runs; a task that sets one itself, or one the
    shell resets (OPTIND, under busybox; ``_``, which the gate's ``read`` sets) or drops
    (PS1, under bash), is not held, and keeps its own."""
    image = f"hakuriver/{BASE_ENV}:base"
    if shell == "bash":
        image = f"hakuriver/bash-sh-{backend.cluster_id}:base"
        _with_bash_as_sh(backend, image)

    def dispatch(task_id: int) -> rpb.DispatchCommand:
        made = command_dispatch(["env"], task_id, (0,))
        made.image = image
        return made

    try:
        unheld = _environment(backend, dispatch(7))
        assert backend.prepare(dispatch(8)) is True
        assert "hakuriver.gated" in _containers(backend)[0].labels
        held = _environment(backend, dispatch(8))
        assert {v for v in held if "TASK_ID" not in v} == {v for v in unheld if "TASK_ID" not in v}
        assert not any(v.startswith(("PWD=", "SHLVL=")) for v in held)
        for task_id, name in enumerate(["SHLVL", "OPTIND", "PS1", "_"], start=9):
            own = dispatch(task_id)
            own.env[name] = "5"
            assert backend.prepare(own) is True
            [prepared] = _containers(backend)
            assert prepared.status == "created" and "hakuriver.gated" not in prepared.labels
            assert f"{name}=5" in _environment(backend, own)
    finally:
        if shell == "bash":
            for container in _containers(backend):
                container.remove(force=True)
            backend.client.images.remove(image, force=True)


@pytest.mark.parametrize(("command", "shell"), [("-x", "busybox"), ("A=b", "bash")])
def test_a_command_the_gate_would_read_as_an_option_or_a_variable_is_not_held(
    backend: DockerBackend, command: str, shell: str
) -> None:
    """Docker runs a task's command as the program it names (here none: 127); busybox's
    ``exec`` would take ``-x`` for an option (2), and bash's ``env`` ``A=b`` for a
    variable (and run ``env``: 0)."""
    dispatch = command_dispatch([command, "env"], 7, (0,))
    if shell == "bash":
        dispatch.image = f"hakuriver/bash-sh-{backend.cluster_id}:base"
        _with_bash_as_sh(backend, dispatch.image)
    try:
        assert backend.prepare(dispatch) is True
        [prepared] = _containers(backend)
        assert prepared.status == "created" and "hakuriver.gated" not in prepared.labels
        assert backend.wait(backend.start(dispatch)).exit_code == 127
    finally:
        if shell == "bash":
            for container in _containers(backend):
                container.remove(force=True)
            backend.client.images.remove(dispatch.image, force=True)


def test_a_missing_command_ends_with_127_naming_it(backend: DockerBackend) -> None:
    """As without the gate (Docker's init reports it so)."""
    dispatch = command_dispatch(["no-such-command"], 7, (0,))
    assert backend.prepare(dispatch) is True
    started = backend.start(dispatch)
    assert backend.wait(started).exit_code == 127
    assert b"no-such-command" in started.logs()


@pytest.mark.parametrize(
    "change",
    ['ENTRYPOINT ["env"]', 'HEALTHCHECK --interval=1s CMD ["false"]', "ENV spring.profile=lab"],
    ids=["entrypoint", "healthcheck", "variable-not-a-shell-name"],
)
def test_an_image_the_gate_would_change_is_prepared_without_a_gate(
    backend: DockerBackend, change: str
) -> None:
    """The gate would take an entrypoint's place, a health check would run against it, and
    its shell (busybox, dash) would drop a variable whose name is not a shell name."""
    base = backend.client.containers.create(f"hakuriver/{BASE_ENV}:base", ["true"])
    tag = f"hakuriver/entrypoint-{backend.cluster_id}:base"
    try:
        base.commit(repository=tag.split(":")[0], tag="base", changes=[change])
        dispatch = command_dispatch(["env"], 7, (0,))
        dispatch.image = tag
        assert backend.prepare(dispatch) is True
        [prepared] = _containers(backend)
        assert prepared.status == "created" and "hakuriver.gated" not in prepared.labels
        started = backend.start(dispatch)
        assert started.id == prepared.id and backend.wait(started).exit_code == 0
        if change.startswith("ENV"):
            assert "spring.profile=lab" in started.logs().decode().splitlines()
    finally:
        base.remove(force=True)
        for container in _containers(backend):
            container.remove(force=True)
        backend.client.images.remove(tag, force=True)


def test_a_release_logged_but_never_sent_is_not_a_task(backend: DockerBackend) -> None:
    """The Runner stopped between logging a release and sending its line: the gate read the
    end of its input and said so, and the Runner that comes back removes it."""
    assert backend.prepare(command_dispatch(["sh", "-c", "echo ran"], 7, (0,))) is True
    [held] = _containers(backend)
    backend._release_log.record(held.id, datetime.now(UTC))
    gate = backend.prepared[7].gate
    assert gate is not None
    gate.close()
    _exited(held)
    assert _restarted(backend).tasks() == {}
    assert _containers(backend) == []
