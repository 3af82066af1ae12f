"""A Host in a subprocess on free loopback ports, for benchmarks that load it from outside."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.harness import free_port


@contextmanager
def bench_host(heartbeat_interval: float = 5) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """Yield the Host's gRPC address and process; stop it (SIGTERM) afterwards."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        port, metrics = free_port(), free_port()
        config = root / "config.toml"
        config.write_text(
            f"[network]\nhost_port = {port}\nmetrics_port = {metrics}\n"
            f'[paths]\nshared_dir = "{root / "shared"}"\n'
            f'[database]\ndb_file = "{root / "host.db"}"\n'
            f"[timing]\nheartbeat_interval = {heartbeat_interval}\n"
        )
        host = subprocess.Popen(
            [sys.executable, "-m", "hakuriver_host", "--config", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=(root / "host.log").open("wb"),
        )
        try:
            time.sleep(1.5)
            yield f"127.0.0.1:{port}", host
        finally:
            host.terminate()
            host.wait(30)
