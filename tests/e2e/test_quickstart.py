"""The README's one-command cluster: it starts over TLS with an admin token, runs a sample
task, shows its output and how to add a user, stops, and starts again with the same state."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.connect_http import Endpoint
from tests.e2e.harness import free_port

pytestmark = pytest.mark.docker
ROOT = Path(__file__).resolve().parents[2]
SCRIPT = str(ROOT / "scripts" / "quickstart.sh")


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _tool(tool: str, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", f"hakuriver_cli.{tool}", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_quickstart_starts_a_cluster_and_runs_a_sample_task(
    docker_ready: None, tmp_path: Path
) -> None:
    port = free_port()
    qs = tmp_path / "qs"
    env = {
        **os.environ,
        "HAKURIVER_PYTHON": sys.executable,
        "HAKURIVER_QUICKSTART_DIR": str(qs),
        "HAKURIVER_QUICKSTART_PORT": str(port),
    }
    env.pop("HAKURIVER_TOKEN", None)
    cli_env = {**env, "HAKURIVER_CONFIG": str(qs / "config.toml")}
    try:
        started = subprocess.run([SCRIPT], env=env, capture_output=True, text=True, timeout=120)
        assert started.returncode == 0, started.stdout + started.stderr
        assert "completed, exit code 0" in started.stdout
        assert "Hello from HakuRiver, task " in started.stdout
        assert "hakuriver.task submit" in started.stdout
        assert "hakuriver.admin user add alice --role user" in started.stdout
        assert "hakuriver.admin token create --user alice --save" in started.stdout
        # The stop command it prints stops this cluster, not the checkout's .quickstart.
        stop_line = f"HAKURIVER_QUICKSTART_DIR={qs} scripts/quickstart.sh stop"
        assert stop_line in started.stdout
        # The dashboard's address and how to sign in; its page and API answer there.
        dashboard = f"http://127.0.0.1:{port + 3}/"
        assert f"Dashboard: {dashboard}" in started.stdout
        assert f"cat {qs / 'credentials'}" in started.stdout
        with urllib.request.urlopen(dashboard, timeout=10) as page:
            assert b'<div id="app">' in page.read()
        admin = (qs / "credentials").read_text().strip()
        who = Endpoint(dashboard.rstrip("/")).call("hakuriver.v1.AccessService/WhoAmI", {}, admin)
        assert who.json()["user"] == "admin"
        # Secrets only for the owner; the CA's key stays beside the Host.
        for secret in ("config.toml", "credentials", "tls/ca.key", "tls/host.key"):
            assert _mode(qs / secret) == 0o600, secret
        assert _mode(qs / "runner-state" / "credential") == 0o600
        assert 'join_token = "hkrj_' in (qs / "config.toml").read_text()
        # The sample task ran in the local hakuriver/hakuriver-base:base: the Host said at
        # every start that the environment had to be made ("is not a local image").
        assert "WARNING hakuriver_host.environments" not in (qs / "host.log").read_text()

        # The message's steps work as written: the CLI is the admin without further setup.
        added = _tool("admin", "user", "add", "alice", "--role", "user", env=cli_env)
        assert added.returncode == 0, added.stderr
        saved = tmp_path / "alice.token"
        made = _tool(
            "admin", "token", "create", "--user", "alice", "--save", str(saved), env=cli_env
        )
        assert made.returncode == 0, made.stderr
        assert _mode(saved) == 0o600
        alice = {**cli_env, "HAKURIVER_TOKEN": saved.read_text().strip()}
        assert _tool("admin", "--json", "whoami", env=alice).stdout.count('"alice"') == 1
        listed = _tool("task", "list", "--json", env=alice)
        assert listed.returncode == 0 and json.loads(listed.stdout) == [], listed.stderr

        stopped = subprocess.run([SCRIPT, "stop"], env=env, capture_output=True, text=True)
        assert stopped.returncode == 0
        # Again: the same CA, admin token and Runner credential; the history is kept.
        ca = (qs / "tls" / "ca.pem").read_bytes()
        again = subprocess.run([SCRIPT], env=env, capture_output=True, text=True, timeout=120)
        assert again.returncode == 0, again.stdout + again.stderr
        assert (qs / "tls" / "ca.pem").read_bytes() == ca
        twice = subprocess.run([SCRIPT], env=env, capture_output=True, text=True, timeout=120)
        assert twice.returncode == 1
        assert f"already running in {qs} (stop it: {stop_line})" in twice.stdout
        tasks = _tool("task", "list", "--json", env=cli_env)
        assert tasks.returncode == 0, tasks.stderr
        assert [t["status"] for t in json.loads(tasks.stdout)] == ["completed", "completed"]
        assert {t["owner"] for t in json.loads(tasks.stdout)} == {"admin"}
    finally:
        stopped = subprocess.run([SCRIPT, "stop"], env=env, capture_output=True, text=True)
    assert stopped.returncode == 0
    assert stopped.stdout == f"stopped the quickstart cluster in {qs}\n"
    assert not (qs / "host.pid").exists()
    # Stopping again says that nothing was running rather than claiming to stop it.
    again_stopped = subprocess.run([SCRIPT, "stop"], env=env, capture_output=True, text=True)
    assert again_stopped.stdout == f"no quickstart cluster is running in {qs}\n"


def test_stop_never_signals_a_process_that_has_a_stale_pid(tmp_path: Path) -> None:
    """A cluster that ended without `stop` (a reboot) leaves its pid files; `stop` then
    killed whatever process had those numbers now."""
    qs = tmp_path / "qs"
    qs.mkdir()
    other = subprocess.Popen(["sleep", "60"])
    try:
        for role in ("host", "runner"):
            (qs / f"{role}.pid").write_text(f"{other.pid}\n")
        env = {**os.environ, "HAKURIVER_QUICKSTART_DIR": str(qs)}
        stopped = subprocess.run([SCRIPT, "stop"], env=env, capture_output=True, text=True)
        assert stopped.returncode == 0, stopped.stderr
        assert stopped.stdout == f"no quickstart cluster is running in {qs}\n"
        assert other.poll() is None  # not signalled
        assert not (qs / "host.pid").exists() and not (qs / "runner.pid").exists()
    finally:
        other.kill()
        other.wait()
