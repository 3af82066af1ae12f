"""A Host in a subprocess on free loopback ports, for benchmarks that load it from outside."""

from __future__ import annotations

import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.e2e.harness import free_port


class HostProcess:
    """A Host with its own config, database and shared folder under ``root``."""

    def __init__(self, root: Path, heartbeat_interval: float) -> None:
        self.root = root
        port, metrics = free_port(), free_port()
        self.target = f"127.0.0.1:{port}"
        self.config = root / "config.toml"
        self.config.write_text(
            f"[network]\nhost_port = {port}\nmetrics_port = {metrics}\n"
            f"host_ssh_proxy_port = {free_port()}\n"
            f'[paths]\nshared_dir = "{root / "shared"}"\n'
            f'[database]\ndb_file = "{root / "host.db"}"\n'
            f"[timing]\nheartbeat_interval = {heartbeat_interval}\n"
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> subprocess.Popen[bytes]:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "hakuriver_host", "--config", str(self.config)],
            stdout=subprocess.DEVNULL,
            stderr=(self.root / "host.log").open("ab"),
        )
        time.sleep(1.5)
        return self.proc

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(30)


@contextmanager
def bench_host(heartbeat_interval: float = 5) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """Yield the Host's gRPC address and process; stop it (SIGTERM) afterwards."""
    with tempfile.TemporaryDirectory() as tmp:
        host = HostProcess(Path(tmp), heartbeat_interval)
        try:
            yield host.target, host.start()
        finally:
            host.stop()
