"""``task stdout --follow`` and ``client health --watch`` ride out a Host restart as
``submit --wait`` does (test_cli.py): over either transport (Connect on the dashboard's port,
gRPC), the follower prints every line of the task's output once, in order, and both go on
once the Host is back, saying on stderr that they lost it and that it answers again."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from hakuriver_common.certificates import TlsFiles, issue_host_certificate, make_ca
from hakuriver_common.proto.hakuriver.v1 import task_pb2
from tests.e2e.harness import ProcessCluster, wait_for

pytestmark = pytest.mark.docker

# The tools over the dashboard's port (Connect: the config has it on) and over gRPC.
TRANSPORTS = {"connect": {}, "grpc": {"HAKURIVER_DASHBOARD__ENABLED": "false"}}
GATE = "follow-gate"
# Numbered lines until the test opens the gate, then one more and the end.
SCRIPT = (
    f"i=1; while [ ! -e /shared/{GATE} ]; do echo line $i; i=$((i+1)); sleep 0.05; done; "
    "echo line $i; echo end"
)


class Tool:
    """A CLI tool run as a user runs it; its stdout lines collected as they come."""

    def __init__(self, cluster: ProcessCluster, args: list[str], env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [*cluster.cli_argv(args[0]), *args[1:]],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={
                **os.environ,
                "HAKURIVER_CONFIG": str(cluster.config_path),
                "PYTHONUNBUFFERED": "1",
                **env,
            },
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    def stderr(self) -> str:
        """Its stderr, once it has ended."""
        assert self.proc.stderr is not None
        return self.proc.stderr.read()

    def ended(self, timeout: float = 60) -> int:
        code = self.proc.wait(timeout)
        self._reader.join(timeout)
        return code


@pytest.mark.parametrize("stop", [signal.SIGKILL, signal.SIGTERM], ids=["crash", "restart"])
def test_followers_and_watchers_ride_out_a_host_restart(
    fresh_cluster: ProcessCluster, stop: signal.Signals
) -> None:
    c = fresh_cluster
    (c.shared_dir / "shared_data").mkdir(parents=True, exist_ok=True)
    task = c.submit(["sh", "-c", SCRIPT])
    c.wait_status(task.task_id, {task_pb2.TASK_STATUS_RUNNING})
    followers = {
        name: Tool(c, ["task", "stdout", "--follow", str(task.task_id)], env)
        for name, env in TRANSPORTS.items()
    }
    watchers = {
        name: Tool(c, ["client", "health", "--watch", "--json"], env)
        for name, env in TRANSPORTS.items()
    }
    tools = {
        **{f"follower over {n}": t for n, t in followers.items()},
        **{f"watcher over {n}": t for n, t in watchers.items()},
    }
    try:
        for name, tool in tools.items():
            wait_for(lambda t=tool: len(t.lines) >= 3, what=f"the {name} printing")  # type: ignore[misc]
        c.kill_host(stop)
        time.sleep(2)  # past the 1 s between retries: a tool that gives up has done so
        for name, tool in tools.items():
            assert tool.proc.poll() is None, f"the {name} gave up: {tool.stderr()}"
        c.start_host()
        wait_for(lambda: c.node_online(c.runner_names[0]), what="the Runner back")
        assert c.get(task.task_id).status == task_pb2.TASK_STATUS_RUNNING
        for name, tool in tools.items():
            seen = len(tool.lines)
            wait_for(
                lambda t=tool, n=seen: len(t.lines) > n + 2,  # type: ignore[misc]
                what=f"the {name} going on after the restart",
            )
        (c.shared_dir / "shared_data" / GATE).touch()
        for name, tool in followers.items():
            assert tool.ended() == 0, f"the follower over {name}: {tool.stderr()}"
        for tool in watchers.values():
            tool.proc.send_signal(signal.SIGINT)
            assert tool.ended() == 130  # Ctrl-C, as before the restart
    finally:
        for tool in tools.values():
            if tool.proc.poll() is None:
                tool.proc.kill()
                tool.proc.wait()
    stored = c.read_log(task.task_id).decode()
    *numbered, end = stored.splitlines()
    assert end == "end"
    assert numbered == [f"line {i}" for i in range(1, len(numbered) + 1)]
    for name, tool in tools.items():
        err = tool.stderr()
        if name.startswith("follower"):
            assert "".join(tool.lines) == stored, f"the {name} lost or repeated output"
        notes = err.splitlines()
        assert len([x for x in notes if x.startswith("lost the host at ")]) == 1, (name, err)
        assert len([x for x in notes if "answers again" in x]) == 1, (name, err)
        assert "error" not in err, (name, err)


def test_a_follower_stops_when_the_host_comes_back_with_a_certificate_it_cannot_trust(
    fresh_cluster: ProcessCluster, tmp_path: Path
) -> None:
    """A Host restarted with another cluster's certificate (``hakuriver.init tls --force``
    without copying the new ``ca.pem``): asking again cannot help, so the follower ends with
    the TLS problem in words instead of retrying for ever."""
    c = fresh_cluster
    task = c.submit(["sh", "-c", "while true; do echo tick; sleep 0.05; done"])
    c.wait_status(task.task_id, {task_pb2.TASK_STATUS_RUNNING})
    follower = Tool(c, ["task", "stdout", "--follow", str(task.task_id)], TRANSPORTS["grpc"])
    try:
        wait_for(lambda: len(follower.lines) >= 3, what="the follower printing")
        c.kill_host(signal.SIGKILL)
        other = TlsFiles.in_folder(tmp_path)
        make_ca(other)
        issue_host_certificate(other, ["127.0.0.1"])
        c.host = c.spawn_host(
            {
                "HAKURIVER_TLS__CA_FILE": str(other.ca_cert),
                "HAKURIVER_TLS__CERT_FILE": str(other.host_cert),
                "HAKURIVER_TLS__KEY_FILE": str(other.host_key),
            }
        )
        code = follower.ended(timeout=30)
    finally:
        if follower.proc.poll() is None:
            follower.proc.kill()
            follower.proc.wait()
    err = follower.stderr()
    assert code == 1, err
    assert err.splitlines()[-1] == (
        f"error: TLS with the host at 127.0.0.1:{c.host_port} failed: its certificate is not "
        "signed by tls.ca_file or does not name this address (tls.server_name)"
    ), err
