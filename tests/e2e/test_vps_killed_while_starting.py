"""A VPS its owner kills while it waits for its sshd is reported killed with no error, not
as a VPS that "never accepted SSH connections" (the Runner's Supervisor and Docker backend
against the real daemon; an sshd that never answers stands in for a slow one); a paused VPS
the Runner adopts again is not waited for as one whose sshd is starting; one paused or
resumed outside HakuRiver is paused or resumed as asked."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import cast

import pytest

from hakuriver_common.proto.hakuriver.v1 import runner_service_pb2 as rpb, task_pb2
from hakuriver_runner.docker_backend import DockerBackend
from hakuriver_runner.outbox import Outbox
from hakuriver_runner.pool import BlockingPool
from hakuriver_runner.process_backend import ProcessBackend
from hakuriver_runner.supervisor import Supervisor
from tests.e2e.harness import BASE_ENV
from tests.fake_runner import eventually

pytestmark = pytest.mark.docker
SSH_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE1KjKdQFMK2E8kVmbb3r2Dk5c6bwSvpZ0ZyYy2sQkVx"


class _Outbox:
    def __init__(self) -> None:
        self.sent: list[rpb.ConnectRequest] = []

    async def send(self, message: rpb.ConnectRequest) -> None:
        self.sent.append(message)

    def exits(self) -> list[rpb.TaskStateReport]:
        return self.reports(rpb.RUNNER_TASK_STATE_EXITED)

    def reports(self, state: rpb.RunnerTaskState.ValueType) -> list[rpb.TaskStateReport]:
        return [m.task_state for m in self.sent if m.task_state.state == state]


@contextlib.asynccontextmanager
async def _vps(
    backend: DockerBackend, task_id: int, image: str, *mounts: task_pb2.Mount
) -> AsyncIterator[tuple[Supervisor, _Outbox]]:
    """A Supervisor on the real Docker backend that was sent a VPS of ``image``, and what it
    sent the Host; its watchers stopped afterwards."""
    outbox = _Outbox()
    pool = BlockingPool()
    supervisor = Supervisor(backend, ProcessBackend(backend.config), cast(Outbox, outbox), pool)
    try:
        await supervisor.dispatch(
            rpb.DispatchCommand(
                task_id=task_id,
                kind=task_pb2.TASK_KIND_VPS,
                image=f"hakuriver/{image}:base",
                container_name=image,
                ssh_public_key=SSH_KEY,
                mounts=mounts,
            )
        )
        yield supervisor, outbox
    finally:
        for watcher in supervisor.stop_watching():
            watcher.cancel()
        pool.shutdown()


async def test_a_vps_killed_before_its_sshd_answers_has_no_error(
    backend: DockerBackend, tmp_path: Path
) -> None:
    silent_sshd = tmp_path / "sshd"
    silent_sshd.write_text("#!/bin/sh\nexec sleep 600\n")
    silent_sshd.chmod(0o755)
    mount = task_pb2.Mount(host_path=str(silent_sshd), container_path="/usr/sbin/sshd")
    async with _vps(backend, 21, BASE_ENV, mount) as (supervisor, outbox):
        await asyncio.sleep(1)  # its watcher waits for a greeting that does not come
        await supervisor.kill(rpb.KillCommand(task_id=21, grace_seconds=0))
        [report] = await eventually(outbox.exits, what="the VPS's exit report", within=30)
    assert report.error_message == ""


async def test_a_paused_vps_adopted_again_stays_paused_and_keeps_its_port(
    backend: DockerBackend, sshd_image: str
) -> None:
    """A VPS paused when its Runner's stream comes back (the Host restarted, or the Runner):
    its frozen sshd greets no one, and the Runner waited for it as for one starting, then
    stopped the VPS a minute later as one that "never accepted SSH connections". It is
    reported paused at once, with its port, and left as it is."""
    async with _vps(backend, 22, sshd_image) as (supervisor, outbox):
        [running] = await eventually(
            lambda: outbox.reports(rpb.RUNNER_TASK_STATE_RUNNING), what="its sshd up", within=30
        )
        await supervisor.pause(rpb.PauseCommand(task_id=22))
        for watcher in supervisor.stop_watching():  # the stream is gone
            watcher.cancel()
        assert await supervisor.scan() == [22]
        await supervisor.reconcile(rpb.RegisterAck(adopt=[rpb.AdoptTask(task_id=22)]))
        [adopted] = await eventually(  # after the one of its pause
            lambda: outbox.reports(rpb.RUNNER_TASK_STATE_PAUSED)[1:], what="a paused report"
        )
        assert adopted.ssh_port == running.ssh_port > 0
        assert outbox.exits() == []


async def test_a_vps_paused_outside_hakuriver_is_paused_when_asked(
    backend: DockerBackend, sshd_image: str
) -> None:
    """``docker pause`` of a VPS a moment before its owner paused it through HakuRiver: Docker
    refuses the pause (409, already paused) and the Runner took it for a VPS that had ended,
    so it confirmed nothing and PauseTask failed after 10 s ("did not confirm"); a resume of
    one unpaused outside (Docker: 500, not paused) logged a traceback and failed so too. The
    Runner confirms the VPS paused, and running."""
    async with _vps(backend, 23, sshd_image) as (supervisor, outbox):
        await eventually(
            lambda: outbox.reports(rpb.RUNNER_TASK_STATE_RUNNING), what="its sshd up", within=30
        )
        [container] = backend.client.containers.list(filters={"label": "hakuriver.task_id=23"})
        container.pause()
        await supervisor.pause(rpb.PauseCommand(task_id=23))
        assert len(outbox.reports(rpb.RUNNER_TASK_STATE_PAUSED)) == 1
        container.unpause()
        await supervisor.resume(rpb.ResumeCommand(task_id=23))
        assert len(outbox.reports(rpb.RUNNER_TASK_STATE_RUNNING)) == 2
        assert outbox.exits() == []
