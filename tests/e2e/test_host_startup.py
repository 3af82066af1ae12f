"""A Host that cannot listen on one of its ports exits 1 (a restart may find it free) with
one line naming the address, and starts nothing; a second Host on a port in use fails instead
of sharing it. A config it refuses exits 2: systemd's RestartPreventExitStatus=2 stops
restarting what would be refused again."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from hakuriver_common.proto.hakuriver.v1 import access_service_pb2 as apb
from hakuriver_common.roles import Role
from tests.e2e.harness import ProcessCluster
from tests.tls import tls_files

NETWORK_PORT_KEYS = {
    "host_port": "gRPC API",
    "metrics_port": "metrics",
    "host_ssh_proxy_port": "SSH proxy",
}
PORT_KEYS = {**NETWORK_PORT_KEYS, "dashboard_port": "dashboard"}


def _config(
    root: Path,
    bind: str = "127.0.0.1",
    plaintext: bool = False,
    dashboard_plaintext: bool = False,
    **ports: int,
) -> Path:
    path = root / "config.toml"
    tls = tls_files()
    lines = ["[network]", f'host_bind_ip = "{bind}"']
    lines += [f"{key} = {ports.get(key, 0)}" for key in NETWORK_PORT_KEYS]
    lines += ["[dashboard]", f"port = {ports.get('dashboard_port', 0)}"]
    lines += [f"plaintext = {'true' if dashboard_plaintext else 'false'}"]
    lines += [
        "[paths]",
        f'shared_dir = "{root / "shared"}"',
        f'local_temp_dir = "{root / "tmp"}"',
        "[database]",
        f'db_file = "{root / "host.db"}"',
        "[tls]",
        f"plaintext = {'true' if plaintext else 'false'}",
        f'ca_file = "{tls.ca_cert}"',
        f'cert_file = "{tls.host_cert}"',
        f'key_file = "{tls.host_key}"',
        "[auth]",
        f'credentials_file = "{root / "credentials"}"',
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def _run_host(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hakuriver_host", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(("key", "what"), list(PORT_KEYS.items()))
def test_a_taken_port_is_one_line_and_a_non_zero_exit(tmp_path: Path, key: str, what: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = _run_host(_config(tmp_path, **{key: port}))
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"error: cannot listen on 127.0.0.1:{port} for the {what}: Address already in use"
    ], result.stderr
    assert not (tmp_path / "host.db").exists(), "nothing is started before every port is held"


def test_a_bind_address_that_does_not_resolve_is_named_with_the_reason(tmp_path: Path) -> None:
    """Said "Unknown error -2" (os.strerror of the resolver's error number)."""
    config = _config(tmp_path)
    text = config.read_text().replace("[network]\n", '[network]\nmetrics_bind_ip = "host:9"\n')
    config.write_text(text)
    result = _run_host(config)
    assert result.returncode == 1
    # Beside the warning that this /metrics, not on a loopback address, is open.
    [line] = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert line.startswith("error: cannot listen on host:9:0 for the metrics: "), line
    assert "Unknown error" not in result.stderr and "Traceback" not in result.stderr


def test_a_second_host_on_the_same_port_fails(tmp_path: Path) -> None:
    (tmp_path / "first").mkdir()
    first = ProcessCluster(tmp_path / "first", runner_count=0)
    first.start_host()
    try:
        result = _run_host(_config(tmp_path, host_port=first.host_port))
        assert result.returncode == 1
        assert f"cannot listen on 127.0.0.1:{first.host_port} for the gRPC API" in result.stderr
        assert "Traceback" not in result.stderr
    finally:
        first.stop()


def test_plaintext_is_refused_off_loopback_and_missing_certificates_are_named(
    tmp_path: Path,
) -> None:
    """Plaintext only on loopback; a Host without its key says which file and how to make it.
    Each exited 1, and systemd restarted it every 5 s to say the same again."""
    result = _run_host(_config(tmp_path, bind="0.0.0.0", plaintext=True))
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "error: tls.plaintext = true is allowed only on a loopback address, not 0.0.0.0: "
        "create certificates with hakuriver.init tls"
    ], result.stderr
    result = _run_host(_config(tmp_path, bind="0.0.0.0", dashboard_plaintext=True))
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "error: a plain-HTTP dashboard is allowed only on a loopback address, not 0.0.0.0: "
        "set dashboard.plaintext = false (HTTPS with the Host's certificate) or "
        "dashboard.bind_ip to a loopback address"
    ], result.stderr
    config = _config(tmp_path)
    missing = tmp_path / "nowhere.key"
    config.write_text(config.read_text().replace(str(tls_files().host_key), str(missing)))
    result = _run_host(config)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"error: cannot read tls.key_file {missing}: No such file or directory (create it "
        "with hakuriver.init tls, or set tls.plaintext = true on a loopback address)"
    ], result.stderr
    assert not (tmp_path / "host.db").exists()


def test_a_database_url_that_names_no_database_exits_2(tmp_path: Path) -> None:
    """Only a change of database.url fixes it: it exited 1, and systemd restarted it for ever."""
    config = _config(tmp_path)
    config.write_text(config.read_text().replace("[database]\n", '[database]\nurl = "nosuch"\n'))
    result = _run_host(config)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "error: database.url is not a SQLAlchemy URL, e.g. "
        "postgresql+psycopg://USER:PASSWORD@SERVER/DATABASE"
    ], result.stderr


def test_a_lost_admin_token_is_recovered_on_the_hosts_machine(tmp_path: Path) -> None:
    """--new-admin-token writes a working admin token (0600) for the next start."""
    cluster = ProcessCluster(tmp_path, runner_count=0)
    cluster.start_host()
    try:
        first = cluster.admin_token
        cluster.kill_host(signal.SIGTERM)
        cluster.credentials.write_text("hkrt_somebody-elses-token\n")  # kept, not lost
        host = [sys.executable, "-m", "hakuriver_host", "--config", str(cluster.config_path)]
        result = subprocess.run(
            [*host, "--new-admin-token"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        assert "restart the Host" in result.stdout
        [kept] = cluster.credentials.parent.glob(f"{cluster.credentials.name}.*.old")
        assert kept.read_text() == "hkrt_somebody-elses-token\n"
        assert f"kept the file that was there as {kept}" in result.stdout
        assert cluster.credentials.stat().st_mode & 0o777 == 0o600
        cluster.start_host()
        assert cluster.admin_token != first
        whoami = cluster.access.WhoAmI(apb.WhoAmIRequest(), timeout=10)
        assert (whoami.user, whoami.role) == ("admin", Role.ADMIN.pb)
    finally:
        cluster.stop()
