"""A client in another language, from the stubs buf generates (examples/node-client: Node.js,
protoc-gen-es and @connectrpc/connect-node's gRPC transport), against a real Host over TLS
with an API token: it submits a task, prints its output as it is written and exits with the
task's exit code."""

from __future__ import annotations

import os
import shutil
import subprocess
from functools import partial
from pathlib import Path

import pytest

from tests.e2e.example_clients import check_runs_a_task_and_exits_with_its_code, refused
from tests.e2e.harness import ProcessCluster, required
from tests.tls import tls_files

pytestmark = pytest.mark.docker

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "node-client"


@pytest.fixture(scope="module")
def client() -> Path:
    """The example compiled (tsc) from its sources and generated stubs."""
    ready = shutil.which("node") and (EXAMPLE / "node_modules" / ".bin" / "tsc").exists()
    if not ready:
        required(
            "Node.js", "node or examples/node-client's packages missing: scripts/ensure-node.sh"
        )
    built = subprocess.run(
        [str(EXAMPLE / "node_modules" / ".bin" / "tsc"), "-p", str(EXAMPLE)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    return EXAMPLE / "dist" / "client.js"


def run(
    cluster: ProcessCluster, client: Path, *command: str, token: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "HAKURIVER_HOST": f"https://127.0.0.1:{cluster.host_port}",
        "HAKURIVER_CA": str(tls_files().ca_cert),
        "HAKURIVER_TOKEN": cluster.admin_token if token is None else token,
    }
    return subprocess.run(
        ["node", str(client), "--", *command], capture_output=True, text=True, env=env, timeout=120
    )


def test_the_node_client_runs_a_task_and_exits_with_its_code(
    cluster: ProcessCluster, client: Path
) -> None:
    check_runs_a_task_and_exits_with_its_code(partial(run, cluster, client))


def test_a_refused_token_ends_the_node_client_with_the_reason(
    cluster: ProcessCluster, client: Path
) -> None:
    assert "token" in refused(partial(run, cluster, client)).lower()
