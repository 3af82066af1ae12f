"""What the example clients in other languages (examples/node-client, examples/cpp-client)
must do against a real Host: run a task, print its output as it is written and exit with its
exit code; end with the reason when the Host refuses the token. ``run(*command, token=None)``
runs the client (with the cluster admin's token unless another is given)."""

from __future__ import annotations

import subprocess
from typing import Protocol


class Run(Protocol):
    def __call__(
        self, *command: str, token: str | None = None
    ) -> subprocess.CompletedProcess[str]: ...


def check_runs_a_task_and_exits_with_its_code(run: Run) -> None:
    done = run("sh", "-c", "echo hello; sleep 0.5; echo world; exit 3")
    assert done.returncode == 3, done.stderr
    assert done.stdout == "hello\nworld\n"
    assert "submitted task " in done.stderr and "exit code 3" in done.stderr
    assert run("true").returncode == 0


def refused(run: Run) -> str:
    """The client's stderr when the Host refuses its token (checked to be one error)."""
    done = run("true", token="hkr_not-a-token")
    assert done.returncode == 1
    assert done.stderr.startswith("error: "), done.stderr
    return done.stderr
