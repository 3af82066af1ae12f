"""What the command-line tools load, in a real process: ``--help`` loads neither grpc nor
protobuf nor pydantic; ``hakuriver.task submit --wait -- true`` against a real Host (and a
FakeRunner, no Docker) loads grpc but neither pydantic nor the daemons' Config nor rich. Only
which modules are loaded is checked, never how long it took (that is bench/bench_cli.py's).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.bench_cli import runner_thread
from bench.host_process import HostProcess, bench_host

# The tool as its console script runs it, writing the names of the loaded modules at exit.
PROBE = """
import atexit, json, os, sys
out = os.environ["HAKURIVER_TEST_MODULES"]
atexit.register(lambda: open(out, "w").write(json.dumps(sorted(sys.modules))))
tool = sys.argv[1]
sys.argv = [f"hakuriver.{tool}", *sys.argv[2:]]
__import__(f"hakuriver_cli.{tool}", fromlist=["run"]).run()
"""
NEVER_AT_START = {
    "grpc",
    "google.protobuf",
    "pydantic",
    "pydantic_settings",
    "docker",
    "asyncio",
    "hakuriver_common.config",
    "hakuriver_common.proto",
}


def run_tool(
    tmp_path: Path, tool: str, *args: str
) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    modules = tmp_path / "modules.json"
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("HAKURIVER_")}
    env["HAKURIVER_TEST_MODULES"] = str(modules)
    done = subprocess.run(
        [sys.executable, "-c", PROBE, tool, *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    return done, set(json.loads(modules.read_text()))


@pytest.mark.parametrize("tool", ["task", "client", "vps", "ssh", "admin", "docker"])
def test_help_loads_no_transport_and_no_pydantic(tmp_path: Path, tool: str) -> None:
    done, loaded = run_tool(tmp_path, tool, "--help")
    assert done.returncode == 0, done.stderr
    assert "Usage" in done.stdout
    assert loaded & NEVER_AT_START == set()


@pytest.fixture(scope="module")
def host() -> Iterator[HostProcess]:
    with bench_host() as started, runner_thread(started):
        yield started


def test_submit_wait_loads_grpc_and_not_pydantic(tmp_path: Path, host: HostProcess) -> None:
    done, loaded = run_tool(
        tmp_path, "task", "--config", str(host.config_path), "submit", "--wait", "--", "true"
    )
    assert done.returncode == 0, done.stderr
    assert "completed, exit code 0" in done.stdout
    assert "grpc" in loaded
    unwanted = {"pydantic", "pydantic_settings", "rich", "docker", "hakuriver_common.config"}
    assert loaded & unwanted == set()
    assert "google.protobuf.json_format" not in loaded


def test_a_table_loads_rich_and_not_pydantic(tmp_path: Path, host: HostProcess) -> None:
    done, loaded = run_tool(tmp_path, "client", "--config", str(host.config_path), "nodes")
    assert done.returncode == 0, done.stderr
    assert "bench-cli" in done.stdout
    assert "rich" in loaded
    assert loaded & {"pydantic", "pydantic_settings", "hakuriver_common.config"} == set()


def test_a_config_only_pydantic_reads_still_works(tmp_path: Path, host: HostProcess) -> None:
    """A config with a webhook is read by load_config (client_config leaves it to it)."""
    config = tmp_path / "config.toml"
    config.write_text(
        host.config_path.read_text() + '\n[[webhooks]]\nurl = "http://127.0.0.1:9/hook"\n'
    )
    done, loaded = run_tool(tmp_path, "task", "--config", str(config), "list", "--json")
    assert done.returncode == 0, done.stderr
    assert isinstance(json.loads(done.stdout), list)
    assert "hakuriver_common.config" in loaded
