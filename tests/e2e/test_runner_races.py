"""Races at the Runner, each interleaving forced on its Supervisor and Docker backend against
the real daemon: what the old stream's threads still do when the next stream registers."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import docker
import pytest

from hakuriver_common.environments import TIMESTAMP_LABEL, TarballFile, image_for, tarball_path
from hakuriver_common.proto.hakuriver.v1 import runner_service_pb2 as rpb
from hakuriver_runner.docker_backend import DockerBackend
from hakuriver_runner.outbox import Outbox
from hakuriver_runner.pool import BlockingPool
from hakuriver_runner.process_backend import ProcessBackend
from hakuriver_runner.supervisor import TARBALL_LOOKS, Supervisor
from tests.e2e.harness import BASE_ENV, command_dispatch
from tests.fake_runner import eventually

pytestmark = pytest.mark.docker


class _Sent:
    """What a Supervisor sends the Host on one stream: its outbox's lanes, drained."""

    def __init__(self, outbox: Outbox) -> None:
        self.messages: list[rpb.ConnectRequest] = []
        self._drain = asyncio.create_task(self._take(outbox.open()))

    async def _take(self, lanes: Any) -> None:
        while True:
            self.messages.append(await lanes.take())

    def exits(self) -> list[rpb.TaskStateReport]:
        reports = [m.task_state for m in self.messages if m.HasField("task_state")]
        reports += [r for m in self.messages for r in m.task_states.reports]
        return [r for r in reports if r.state == rpb.RUNNER_TASK_STATE_EXITED]

    def close(self) -> None:
        self._drain.cancel()


@contextlib.asynccontextmanager
async def _supervisor(backend: DockerBackend) -> AsyncIterator[tuple[Supervisor, Outbox]]:
    outbox = Outbox()
    pool = BlockingPool()
    supervisor = Supervisor(backend, ProcessBackend(backend.config), outbox, pool)
    try:
        yield supervisor, outbox
    finally:
        for watcher in supervisor.stop_watching():
            watcher.cancel()
        pool.shutdown()


def _set_when(event: threading.Event, check: Callable[[], object]) -> asyncio.Task[None]:
    async def waiting() -> None:
        await eventually(check, within=30, what="the moment to let the start go on")
        event.set()

    return asyncio.create_task(waiting())


async def test_a_start_cut_off_by_the_streams_end_is_not_started_again(
    backend: DockerBackend, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The stream ends while a dispatch's container is created and not yet started (the
    Host went away; the start's thread goes on). The next registration listed the created
    container, the Host had it adopted and the Runner started it, it ran and ended; then the
    old thread started it: Docker ran the command a second time. The registration now waits
    for starts under way, and lists the container started."""
    caplog.set_level("INFO", logger="hakuriver_runner.supervisor")
    created, go, returned = threading.Event(), threading.Event(), threading.Event()
    start_new = backend._start_new

    def slow_start(dispatch: rpb.DispatchCommand, container: Any) -> Any:
        created.set()
        go.wait(30)
        try:
            return start_new(dispatch, container)
        finally:
            returned.set()

    monkeypatch.setattr(backend, "_start_new", slow_start)
    async with _supervisor(backend) as (supervisor, outbox):
        first = _Sent(outbox)
        dispatching = asyncio.create_task(
            supervisor.dispatch(command_dispatch(["echo", "ran"], 31))
        )
        await eventually(created.is_set, what="the container created")
        dispatching.cancel()  # the stream ends (Session._end_stream)
        await asyncio.gather(dispatching, return_exceptions=True)
        first.close()
        outbox.close()
        sent = _Sent(outbox)  # the next stream
        # The old thread goes on once the task has run (a slow daemon), or once the next
        # registration is found waiting for it.
        letting_go = _set_when(go, lambda: sent.exits() or "under way" in caplog.text)
        known = await supervisor.scan()
        assert known == [31]
        await supervisor.reconcile(rpb.RegisterAck(adopt=[rpb.AdoptTask(task_id=31)]))
        [report] = await eventually(sent.exits, what="the exit report", within=30)
        await letting_go
        await eventually(returned.is_set, what="the old thread's start returned")
        sent.close()
    [container] = backend.client.containers.list(
        all=True, filters={"label": f"hakuriver.cluster={backend.cluster_id}"}
    )
    container.wait(timeout=30)
    assert report.exit_code == 0
    assert container.logs() == b"ran\n"


def _saved_as(backend: DockerBackend, name: str, timestamp: int) -> str:
    """Environment ``name``'s tarball of ``timestamp`` in the backend's shared folder, as
    create-tar saves one (the base image labelled with its time); the image's id. The
    local tag is removed again: only a load gives it back."""
    client = backend.client
    container = client.containers.create(f"hakuriver/{BASE_ENV}:base", "true")
    try:
        label = f"LABEL {TIMESTAMP_LABEL}={timestamp}"
        image = container.commit(repository=f"hakuriver/{name}", tag="base", changes=[label])
    finally:
        container.remove()
    backend.tarball_dir.mkdir(parents=True, exist_ok=True)
    with tarball_path(backend.tarball_dir, name, timestamp).open("wb") as out:
        for chunk in image.save(named=True):
            out.write(chunk)
    client.images.remove(image_for(name))
    return str(image.id)


async def test_a_dispatch_waiting_for_an_older_load_gets_the_newest_tarball(
    backend: DockerBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A task's dispatch finds its environment's newest tarball newer than the image here
    while another task's load of an older tarball is under way: it waits for that load,
    then loads its own. It joined the older load and started on that image. Its status
    said it was loading the newer tarball while it waited for the older one's load."""
    name = "race-" + uuid.uuid4().hex[:8]
    older, newer = _saved_as(backend, name, 1000), ""
    entered, go = threading.Event(), threading.Event()
    load = backend.load

    def held_load(tarball: TarballFile) -> None:
        if tarball.timestamp == 1000:
            entered.set()
            go.wait(30)
        load(tarball)

    monkeypatch.setattr(backend, "load", held_load)
    try:
        async with _supervisor(backend) as (supervisor, outbox):
            sent = _Sent(outbox)
            first = asyncio.create_task(supervisor.dispatch(_in(name, 41)))
            await eventually(entered.is_set, what="the older tarball's load under way")
            newer = await asyncio.to_thread(_saved_as, backend, name, 2000)
            second = asyncio.create_task(supervisor.dispatch(_in(name, 42)))
            await eventually(
                lambda: [m for m in sent.messages if m.task_state.task_id == 42],
                what="the second dispatch to wait for a load",
            )
            waiting = [m.task_state.detail for m in sent.messages if m.task_state.task_id == 42]
            go.set()
            await asyncio.gather(first, second)
            sent.close()
        assert waiting == [
            f"waiting for the load of environment {name} from {name}-1000.tar, "
            f"then loading {name}-2000.tar"
        ]
        images = {
            task_id: backend.client.containers.get(backend.container_name(task_id)).image.id
            for task_id in (41, 42)
        }
        assert images[42] == newer
        assert images[41] in (older, newer)
    finally:
        go.set()
        for container in backend.client.containers.list(
            all=True, filters={"label": f"hakuriver.cluster={backend.cluster_id}"}
        ):
            container.remove(force=True)
        for image in filter(None, (image_for(name), older, newer)):
            with contextlib.suppress(docker.errors.ImageNotFound):
                backend.client.images.remove(image, force=True)


def _in(name: str, task_id: int) -> rpb.DispatchCommand:
    """A command task's dispatch in environment ``name``."""
    dispatch = command_dispatch(["true"], task_id)
    dispatch.container_name = name
    dispatch.image = image_for(name)
    return dispatch


async def test_a_tarball_replaced_before_its_load_opens_it_loads_the_newer_one(
    backend: DockerBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """create-tar saves a newer tarball and removes the older one between the Runner
    choosing the older to load and opening it. The task failed with "cannot load"
    although the newer tarball was there; the Runner now looks again and loads that."""
    name = "race-" + uuid.uuid4().hex[:8]
    older, newer = _saved_as(backend, name, 1000), []
    load = backend.load

    def replaced_first(tarball: TarballFile) -> None:
        if tarball.timestamp == 1000:
            newer.append(_saved_as(backend, name, 2000))
            tarball.path.unlink()
        load(tarball)

    monkeypatch.setattr(backend, "load", replaced_first)
    try:
        async with _supervisor(backend) as (supervisor, _):
            await supervisor.dispatch(_in(name, 51))
        started = backend.client.containers.list(
            all=True, filters={"label": f"hakuriver.cluster={backend.cluster_id}"}
        )
        assert [c.image.id for c in started] == newer
    finally:
        for image in [image_for(name), older, *newer]:
            with contextlib.suppress(docker.errors.ImageNotFound):
                backend.client.images.remove(image, force=True)


async def test_tarballs_replaced_before_each_load_fail_the_task_after_a_few_looks(
    backend: DockerBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each tarball is replaced by a newer one before its load opens it: the Runner looks
    again TARBALL_LOOKS times, not for ever, then fails the task naming the file."""
    name = "race-" + uuid.uuid4().hex[:8]
    saved = [_saved_as(backend, name, 1000)]
    tried: list[str] = []
    load = backend.load

    def replaced_each_time(tarball: TarballFile) -> None:
        tried.append(tarball.path.name)
        saved.append(_saved_as(backend, name, tarball.timestamp + 1000))
        tarball.path.unlink()
        load(tarball)

    monkeypatch.setattr(backend, "load", replaced_each_time)
    try:
        async with _supervisor(backend) as (supervisor, outbox):
            sent = _Sent(outbox)
            await supervisor.dispatch(_in(name, 61))
            [failed] = await eventually(
                lambda: [
                    m.task_state.error_message
                    for m in sent.messages
                    if m.task_state.state == rpb.RUNNER_TASK_STATE_START_FAILED
                ],
                what="the start failed",
            )
            sent.close()
        assert tried == [f"{name}-{1000 * n}.tar" for n in range(1, TARBALL_LOOKS + 1)]
        assert f"cannot load {backend.tarball_dir / tried[-1]}: " in failed
    finally:
        for image in [image_for(name), *saved]:
            with contextlib.suppress(docker.errors.ImageNotFound):
                backend.client.images.remove(image, force=True)
