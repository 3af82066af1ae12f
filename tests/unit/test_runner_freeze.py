"""A pause or resume that fails because its task just ended is no error (an array paused as
its tasks end); any other failure still is."""

from __future__ import annotations

import docker.errors
import requests

from hakuriver_runner.supervisor import _ended


def _docker_error(status: int) -> docker.errors.APIError:
    response = requests.Response()
    response.status_code = status
    return docker.errors.APIError("refused", response=response)


def test_only_a_task_no_longer_there_counts_as_ended() -> None:
    assert _ended(_docker_error(409))  # "Container ... is not running" / "is not paused"
    assert _ended(_docker_error(404))  # removed
    assert _ended(ProcessLookupError())  # a host process that exited
    assert not _ended(_docker_error(500))
    assert not _ended(ConnectionError("the Docker daemon went away"))
