"""What the command-line tools load, in a real process: ``--help`` loads none of grpc,
protobuf, pydantic and rich (the help is plain text); ``hakuriver.task submit --wait --
true`` against a real Host (and a FakeRunner, no Docker) calls it over Connect on the
dashboard's HTTPS port and loads none of typer, grpc, asyncio, pydantic, the daemons' Config
and rich; with the dashboard off in the tool's config, or its port refusing, the same
command works over gRPC. Only which modules are loaded is checked, never how long it took
(that is bench/bench_cli.py's).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.bench_cli import runner_thread
from bench.host_process import HostProcess, bench_host
from tests.e2e.harness import free_port, without_hakuriver_variables

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
    "rich",
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
    env = without_hakuriver_variables()
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
def test_help_loads_no_transport_no_pydantic_and_no_rich(tmp_path: Path, tool: str) -> None:
    done, loaded = run_tool(tmp_path, tool, "--help")
    assert done.returncode == 0, done.stderr
    assert "Usage" in done.stdout
    assert loaded & NEVER_AT_START == set()


@pytest.fixture(scope="module")
def host() -> Iterator[HostProcess]:
    with bench_host() as started, runner_thread(started):
        yield started


SUBMIT_WAIT = ("submit", "--wait", "--", "true")


def test_submit_wait_loads_no_grpc_and_no_pydantic(tmp_path: Path, host: HostProcess) -> None:
    done, loaded = run_tool(tmp_path, "task", "--config", str(host.config_path), *SUBMIT_WAIT)
    assert done.returncode == 0, done.stderr
    assert "completed, exit code 0" in done.stdout
    unwanted = {"typer", "grpc", "asyncio", "pydantic", "rich", "docker", "hakuriver_common.config"}
    assert loaded & unwanted == set()


@pytest.mark.parametrize("dashboard", ["off", "refusing"])
def test_without_the_dashboard_the_call_goes_over_grpc(
    tmp_path: Path, host: HostProcess, dashboard: str
) -> None:
    served = f"[dashboard]\nport = {host.dashboard_port}\n"
    text = host.config_path.read_text()
    assert served in text
    other = "[dashboard]\nenabled = false\n" if dashboard == "off" else "[dashboard]\nport = "
    if dashboard == "refusing":
        other += f"{free_port()}\n"
    config = tmp_path / "tool.toml"
    config.write_text(text.replace(served, other))
    done, loaded = run_tool(tmp_path, "task", "--config", str(config), *SUBMIT_WAIT)
    assert done.returncode == 0, done.stderr
    assert "completed, exit code 0" in done.stdout
    assert "grpc" in loaded
