"""A VPS its owner kills while it waits for its sshd is reported killed with no error, not
as a VPS that "never accepted SSH connections" (the Runner's Supervisor and Docker backend
against the real daemon; an sshd that never answers stands in for a slow one)."""

from __future__ import annotations

import asyncio
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
        return [
            m.task_state for m in self.sent if m.task_state.state == rpb.RUNNER_TASK_STATE_EXITED
        ]


async def test_a_vps_killed_before_its_sshd_answers_has_no_error(
    backend: DockerBackend, tmp_path: Path
) -> None:
    silent_sshd = tmp_path / "sshd"
    silent_sshd.write_text("#!/bin/sh\nexec sleep 600\n")
    silent_sshd.chmod(0o755)
    outbox = _Outbox()
    pool = BlockingPool()
    supervisor = Supervisor(backend, ProcessBackend(backend.config), cast(Outbox, outbox), pool)
    try:
        await supervisor.dispatch(
            rpb.DispatchCommand(
                task_id=21,
                kind=task_pb2.TASK_KIND_VPS,
                image=f"hakuriver/{BASE_ENV}:base",
                container_name=BASE_ENV,
                ssh_public_key=SSH_KEY,
                mounts=[
                    task_pb2.Mount(host_path=str(silent_sshd), container_path="/usr/sbin/sshd")
                ],
            )
        )
        await asyncio.sleep(1)  # its watcher waits for a greeting that does not come
        await supervisor.kill(rpb.KillCommand(task_id=21, grace_seconds=0))
        [report] = await eventually(outbox.exits, what="the VPS's exit report", within=30)
    finally:
        for watcher in supervisor.stop_watching():
            watcher.cancel()
        pool.shutdown()
    assert report.error_message == ""
