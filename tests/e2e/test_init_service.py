"""hakuriver.init service: systemd units that start a working Host and Runner.

systemd is not PID 1 here, so the units are run the way systemd would run them: their
ExecStart in their WorkingDirectory with their Environment, stopped with SIGTERM.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from hakuriver_common.channels import open_channel
from tests.e2e.harness import ProcessCluster, required, wait_for

INIT = [sys.executable, "-m", "hakuriver_cli.init", "service"]


def parse_unit(path: Path) -> dict[str, list[str]]:
    """Key -> values of a unit file (keys may repeat, as Environment= does)."""
    values: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, value = line.split("=", 1)
            values.setdefault(key, []).append(value)
    return values


def start_unit(unit: dict[str, list[str]], log: Path, **env: str) -> subprocess.Popen[bytes]:
    environment = dict(shlex.split(e)[0].split("=", 1) for e in unit["Environment"])
    for before in unit.get("ExecStartPre", []):
        subprocess.run(shlex.split(before.removeprefix("+")), check=True)
    return subprocess.Popen(
        shlex.split(unit["ExecStart"][0]),
        cwd=unit["WorkingDirectory"][0],
        env={**environment, **env},
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )


def test_units_start_a_working_cluster(docker_ready: None, tmp_path: Path) -> None:
    (tmp_path / "c").mkdir()
    cluster = ProcessCluster(tmp_path / "c")
    out = tmp_path / "units"
    made = subprocess.run(
        [*INIT, "--config", str(cluster.config_path), "--output-dir", str(out)],
        capture_output=True,
        text=True,
    )
    assert made.returncode == 0, made.stderr
    host_unit = parse_unit(out / "hakuriver-host.service")
    runner_unit = parse_unit(out / "hakuriver-runner.service")
    for unit, module in ((host_unit, "hakuriver_host"), (runner_unit, "hakuriver_runner")):
        argv = shlex.split(unit["ExecStart"][0])
        assert argv == [sys.executable, "-m", module, "--config", str(cluster.config_path)]
        assert unit["Restart"] == ["on-failure"] and unit["WantedBy"] == ["multi-user.target"]
        assert "User" not in unit
    assert "docker.service" in runner_unit["After"][0]
    try:
        cluster.host = start_unit(host_unit, tmp_path / "c" / "host.log")
        with open_channel(cluster.client_config, "") as probe:
            health = health_pb2_grpc.HealthStub(probe)
            wait_for(
                lambda: (
                    health.Check(health_pb2.HealthCheckRequest(), timeout=1).status
                    == health_pb2.HealthCheckResponse.SERVING
                ),
                what="the host started from its unit",
            )
        name = cluster.runner_names[0]
        cluster.runners[name] = start_unit(
            runner_unit,
            tmp_path / "c" / f"runner-{name}.log",
            HAKURIVER_RUNNER__NAME=name,
            HAKURIVER_RUNNER__STATE_DIR=str(cluster.runner_state_dir(name)),
        )

        def online() -> bool:
            listed = cluster.cli("client", "nodes", "--json")
            assert listed.returncode == 0, listed.stderr
            return any(
                n["hostname"] == name and n["status"] == "online" for n in json.loads(listed.stdout)
            )

        # The CLI reaches the Host over TLS as the admin the Host made on its first start.
        wait_for(online, what="the runner started from its unit")
        ran = cluster.cli("task", "submit", "--wait", "--", "echo", "from a unit")
        assert ran.returncode == 0, ran.stdout + ran.stderr
        assert "completed, exit code 0" in ran.stdout
        for proc in (cluster.runners[name], cluster.host):
            proc.send_signal(signal.SIGTERM)  # what KillMode=mixed sends first
            assert proc.wait(30) == 0
    finally:
        cluster.stop()


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "config.toml"
    path.write_text('[environment]\nrunner_user = "nobody"\n')  # a user of every machine
    return path


def test_runner_user_one_role_and_no_overwrite(config: Path, tmp_path: Path) -> None:
    out = tmp_path / "units"
    runner_only = [*INIT, "--runner", "--config", str(config), "--output-dir", str(out)]
    assert subprocess.run(runner_only, capture_output=True).returncode == 0
    assert sorted(p.name for p in out.iterdir()) == ["hakuriver-runner.service"]
    assert parse_unit(out / "hakuriver-runner.service")["User"] == ["nobody"]
    again = subprocess.run(runner_only, capture_output=True, text=True)
    assert again.returncode == 1 and "--force" in again.stderr
    both = subprocess.run(
        [*INIT, "--all", "--config", str(config), "--output-dir", str(out)],
        capture_output=True,
        text=True,
    )
    assert both.returncode == 1, "an existing unit must stop the whole write"
    assert not (out / "hakuriver-host.service").exists()
    forced = subprocess.run([*runner_only, "--force"], capture_output=True)
    assert forced.returncode == 0


def test_missing_config_is_refused(tmp_path: Path) -> None:
    result = subprocess.run(
        [*INIT, "--config", str(tmp_path / "none.toml"), "--output-dir", str(tmp_path / "u")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and "does not exist" in result.stderr
    assert not (tmp_path / "u").exists()


def _exposure(unit: Path) -> float:
    """systemd's exposure score of ``unit`` (0 safest .. 10), read offline."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        required("systemd-analyze", "not found: scripts/test.sh installs systemd")
    done = subprocess.run(
        [analyze, "security", "--offline=true", str(unit)], capture_output=True, text=True
    )
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", done.stdout + done.stderr)
    assert found, done.stdout + done.stderr
    return float(found[1])


def test_the_host_unit_is_sandboxed_to_what_it_writes(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(
        f'[paths]\nshared_dir = "{tmp_path / "shared"}"\n'
        f'host_log_file = "{tmp_path / "logs" / "host.log"}"\n'
        f'[database]\ndb_file = "{tmp_path / "db" / "cluster.db"}"\n'
        f'[auth]\ncredentials_file = "{tmp_path / "secrets" / "credentials"}"\n'
    )
    out = tmp_path / "units"
    made = subprocess.run(
        [*INIT, "--config", str(config), "--output-dir", str(out)], capture_output=True, text=True
    )
    assert made.returncode == 0, made.stderr
    host = parse_unit(out / "hakuriver-host.service")
    assert host["ProtectSystem"] == ["strict"] and host["NoNewPrivileges"] == ["yes"]
    [writable] = host["ReadWritePaths"]
    assert sorted(shlex.split(writable)) == sorted(
        f"-{tmp_path / name}" for name in ("shared", "logs", "db", "secrets")
    )
    # Its own folders are made before the sandbox applies; the shared one is a mount.
    [before] = host["ExecStartPre"]
    assert before.startswith("+/bin/mkdir -p ")
    subprocess.run(shlex.split(before.removeprefix("+")), check=True)
    assert all((tmp_path / name).is_dir() for name in ("logs", "db", "secrets"))
    assert not (tmp_path / "shared").exists()
    runner = parse_unit(out / "hakuriver-runner.service")
    assert host["RequiresMountsFor"] == runner["RequiresMountsFor"] == [str(tmp_path / "shared")]
    # 9.6 ("UNSAFE") before: the most a unit without any of it scores but 10.
    assert _exposure(out / "hakuriver-host.service") < 3.0
    assert _exposure(out / "hakuriver-runner.service") < 9.6


def test_the_configs_home_paths_are_the_ones_the_unit_lets_the_host_write(
    tmp_path: Path,
) -> None:
    # A user (not root) writes the units for a config of "~/..." paths (the defaults); the
    # Host unit runs as root, and systemd gives a unit without User= no HOME.
    home = tmp_path / "alice"
    home.mkdir()
    config = tmp_path / "config.toml"
    config.write_text(f'[paths]\nshared_dir = "{tmp_path / "shared"}"\n')
    out = tmp_path / "units"
    made = subprocess.run(
        [*INIT, "--host", "--config", str(config), "--output-dir", str(out)],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "HOME": str(home)},
    )
    assert made.returncode == 0, made.stderr
    host = parse_unit(out / "hakuriver-host.service")
    environment = dict(shlex.split(e)[0].split("=", 1) for e in host["Environment"])
    resolved = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, pathlib; from hakuriver_common.config import load_config; "
            "c = load_config(pathlib.Path(sys.argv[1])); "
            "print(c.database.db_file.expanduser()); "
            "print(c.auth.credentials_file.expanduser()); print(c.tls.path('key_file'))",
            str(config),
        ],
        capture_output=True,
        text=True,
        env=environment,
        cwd=host["WorkingDirectory"][0],
    )
    assert resolved.returncode == 0, resolved.stderr
    db_file, credentials, key = (Path(line) for line in resolved.stdout.split())
    writable = [Path(p.removeprefix("-")) for p in shlex.split(host["ReadWritePaths"][0])]
    for written in (db_file, credentials):
        assert any(written.is_relative_to(place) for place in writable), (written, writable)
    assert key == home / ".hakuriver" / "tls" / "host.key"
