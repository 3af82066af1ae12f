"""A task dispatched while the node's Docker daemon does not answer (a dockerd restart)
fails saying so, not with the bare error of the HTTP library underneath."""

from __future__ import annotations

from pathlib import Path
from typing import cast

import docker

from hakuriver_common.proto.hakuriver.v1 import runner_service_pb2 as rpb, task_pb2
from hakuriver_runner.docker_backend import DockerBackend
from hakuriver_runner.outbox import Outbox
from hakuriver_runner.pool import BlockingPool
from hakuriver_runner.process_backend import ProcessBackend
from hakuriver_runner.supervisor import Supervisor
from tests.unit.local_cluster import local_config


class _Outbox:
    def __init__(self) -> None:
        self.sent: list[rpb.ConnectRequest] = []

    async def send(self, message: rpb.ConnectRequest) -> None:
        self.sent.append(message)


async def test_a_start_without_a_docker_daemon_says_docker_did_not_answer(
    tmp_path: Path, docker_ready: None
) -> None:
    config = local_config(tmp_path)
    backend = DockerBackend(config, "node-a")
    backend.client.close()
    # The daemon gone (a dockerd restart): its socket answers nothing.
    backend.client = docker.DockerClient(
        base_url=f"unix://{tmp_path / 'gone.sock'}", version="1.41"
    )
    outbox = _Outbox()
    pool = BlockingPool()
    supervisor = Supervisor(backend, ProcessBackend(config), cast(Outbox, outbox), pool)
    try:
        await supervisor.dispatch(
            rpb.DispatchCommand(
                task_id=7,
                kind=task_pb2.TASK_KIND_COMMAND,
                image="hakuriver/hakuriver-base:base",
                container_name="hakuriver-base",
                command="true",
                cores=1,
            )
        )
    finally:
        pool.shutdown()
    report = outbox.sent[-1].task_state
    assert report.state == rpb.RUNNER_TASK_STATE_START_FAILED
    # The system's reason, not the reprs of the libraries' wrappers around it.
    assert report.error_message.startswith(
        "the runner could not start it: the Docker daemon did not answer ("
    ), report.error_message
    assert report.error_message.endswith(": No such file or directory)"), report.error_message
    assert "Connection aborted" not in report.error_message
