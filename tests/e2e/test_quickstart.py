"""The README's one-command cluster: it starts, runs a sample task, shows its output, stops."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.harness import free_port

pytestmark = pytest.mark.docker
ROOT = Path(__file__).resolve().parents[2]


def test_quickstart_starts_a_cluster_and_runs_a_sample_task(
    docker_ready: None, tmp_path: Path
) -> None:
    port = free_port()
    env = {
        **os.environ,
        "HAKURIVER_PYTHON": sys.executable,
        "HAKURIVER_QUICKSTART_DIR": str(tmp_path / "qs"),
        "HAKURIVER_QUICKSTART_PORT": str(port),
    }
    script = str(ROOT / "scripts" / "quickstart.sh")
    try:
        started = subprocess.run([script], env=env, capture_output=True, text=True, timeout=120)
        assert started.returncode == 0, started.stdout + started.stderr
        assert "completed, exit code 0" in started.stdout
        assert "Hello from HakuRiver, task " in started.stdout
        assert "hakuriver.task submit" in started.stdout
        client = [sys.executable, "-m", "hakuriver_cli.task", "list", "--json"]
        listed = subprocess.run(
            client,
            env={**env, "HAKURIVER_CONFIG": str(tmp_path / "qs" / "config.toml")},
            capture_output=True,
            text=True,
        )
        assert listed.returncode == 0, listed.stderr
        assert "completed" in [t["status"] for t in json.loads(listed.stdout)]
    finally:
        stopped = subprocess.run([script, "stop"], env=env, capture_output=True, text=True)
    assert stopped.returncode == 0
    assert not (tmp_path / "qs" / "host.pid").exists()
