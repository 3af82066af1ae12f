"""A Host in a subprocess on free loopback ports, for benchmarks that load it from outside.

By default it runs as a real deployment does: TLS with the test CA (tests/tls.py) and API
tokens; the bootstrap admin's token, which the Host writes on its first start, is read back
as ``admin_token``. ``plaintext`` and ``authentication=False`` (both allowed on loopback
only) give the unsecured baseline. ``client_config`` is what clients and FakeRunners dial
with: the address, the CA and the join token.
"""

from __future__ import annotations

import contextlib
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from hakuriver_common.channels import open_channel
from hakuriver_common.config import Config, load_config
from hakuriver_common.credentials import read_secret
from tests.e2e.harness import free_port
from tests.tls import tls_files

START_TIMEOUT = 30.0


class HostProcess:
    """A Host with its own config, database and shared folder under ``root``."""

    def __init__(
        self,
        root: Path,
        heartbeat_interval: float,
        *,
        plaintext: bool = False,
        authentication: bool = True,
    ) -> None:
        self.root = root
        self.plaintext = plaintext
        self.authentication = authentication
        port, metrics = free_port(), free_port()
        self.target = f"127.0.0.1:{port}"
        # HTTPS with the test CA: the command-line tools call the API there (cli.md).
        self.dashboard_port = free_port()
        self.config_path = root / "config.toml"
        self.credentials = root / "credentials"
        tls = tls_files()
        self.config_path.write_text(
            f"[network]\nhost_port = {port}\nmetrics_port = {metrics}\n"
            f"host_ssh_proxy_port = {free_port()}\n[dashboard]\nport = {self.dashboard_port}\n"
            f'[paths]\nshared_dir = "{root / "shared"}"\n'
            f'local_temp_dir = "{root / "local_temp"}"\n'
            f'[database]\ndb_file = "{root / "host.db"}"\n'
            f"[timing]\nheartbeat_interval = {heartbeat_interval}\n"
            f"[tls]\nplaintext = {str(plaintext).lower()}\n"
            f'ca_file = "{tls.ca_cert}"\ncert_file = "{tls.host_cert}"\n'
            f'key_file = "{tls.host_key}"\n'
            f"[auth]\nauthentication = {str(authentication).lower()}\n"
            f'credentials_file = "{self.credentials}"\n'
            f'join_token = "hkrj_{secrets.token_urlsafe(16)}"\n'
        )
        self.client_config: Config = load_config(self.config_path)
        self.admin_token = ""
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def label(self) -> str:
        """How the Host is secured, in words."""
        transport = "plaintext" if self.plaintext else "TLS"
        return f"{transport}, {'API tokens' if self.authentication else 'no authentication'}"

    def start(self) -> subprocess.Popen[bytes]:
        """Start the Host and return once it answers health checks."""
        self.launch()
        return self.wait_serving()

    def launch(self) -> None:
        """Start the process without waiting for it (several Hosts start side by side)."""
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "hakuriver_host", "--config", str(self.config_path)],
            stdout=subprocess.DEVNULL,
            stderr=(self.root / "host.log").open("ab"),
        )

    def wait_serving(self) -> subprocess.Popen[bytes]:
        """Wait until the launched Host answers health checks; read the admin's token."""
        assert self.proc is not None
        self._wait_serving(self.proc)
        if self.authentication and not self.admin_token:
            self.admin_token = read_secret(self.credentials)
        return self.proc

    def _wait_serving(self, proc: subprocess.Popen[bytes]) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        with open_channel(self.client_config, "") as probe:
            health = health_pb2_grpc.HealthStub(probe)
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"the Host exited ({proc.returncode}): {self.log()}")
                try:
                    reply = health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the Host did not serve within {START_TIMEOUT}s")
                time.sleep(0.05)

    def log(self) -> str:
        path = self.root / "host.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(30)


@contextmanager
def bench_hosts(
    *securities: tuple[bool, bool], heartbeat_interval: float = 5
) -> Iterator[list[HostProcess]]:
    """Hosts started side by side, one per (plaintext, authentication); each with its own
    folder and ports. Stopped with SIGTERM afterwards."""
    with contextlib.ExitStack() as stack:
        hosts = []
        for plaintext, authentication in securities:
            root = Path(stack.enter_context(tempfile.TemporaryDirectory()))
            host = HostProcess(
                root, heartbeat_interval, plaintext=plaintext, authentication=authentication
            )
            stack.callback(host.stop)
            hosts.append(host)
        for host in hosts:
            host.launch()
        for host in hosts:
            host.wait_serving()
        yield hosts


@contextmanager
def bench_host(
    heartbeat_interval: float = 5, *, plaintext: bool = False, authentication: bool = True
) -> Iterator[HostProcess]:
    """A started Host (see HostProcess); stopped with SIGTERM afterwards."""
    with bench_hosts((plaintext, authentication), heartbeat_interval=heartbeat_interval) as hosts:
        yield hosts[0]
