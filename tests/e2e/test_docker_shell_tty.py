"""hakuriver.docker-shell interactively, driven through a real pseudo-terminal."""

from __future__ import annotations

import fcntl
import os
import pty
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Iterator

import pytest

from tests.e2e.harness import BASE_ENV, ProcessCluster

pytestmark = pytest.mark.docker


class Terminal:
    """The user's side of a pty running the CLI."""

    def __init__(self, cluster: ProcessCluster, name: str) -> None:
        self.master, self.slave = pty.openpty()
        self.set_size(24, 80)
        self.before = termios.tcgetattr(self.slave)
        env = {**os.environ, "HAKURIVER_CONFIG": str(cluster.config_path), "TERM": "xterm"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "hakuriver_cli.docker_shell", name],
            stdin=self.slave,
            stdout=self.slave,
            stderr=self.slave,
            env=env,
            start_new_session=True,
        )
        self.seen = b""

    def set_size(self, rows: int, cols: int) -> None:
        fcntl.ioctl(self.slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

    def send(self, data: bytes) -> None:
        os.write(self.master, data)

    def expect(self, needle: bytes, timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        while needle not in self.seen:
            left = deadline - time.monotonic()
            assert left > 0, f"never saw {needle!r}; screen so far: {self.seen[-500:]!r}"
            ready, _, _ = select.select([self.master], [], [], min(left, 0.2))
            if ready:
                try:
                    self.seen += os.read(self.master, 4096)
                except OSError:
                    break
        assert needle in self.seen, self.seen[-500:]
        self.seen = self.seen[self.seen.index(needle) + len(needle) :]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        os.close(self.master)
        os.close(self.slave)


@pytest.fixture
def shell_env(cluster: ProcessCluster) -> Iterator[str]:
    name = f"tty{cluster.tag}"
    result = cluster.cli("docker", "create-container", f"hakuriver/{BASE_ENV}:base", name)
    assert result.returncode == 0, result.stderr
    yield name
    cluster.cli("docker", "delete-container", name)


def test_interactive_shell_through_a_pty(cluster: ProcessCluster, shell_env: str) -> None:
    term = Terminal(cluster, shell_env)
    try:
        term.send(b"echo ready-$((6*7))\r")
        term.expect(b"ready-42")
        # The remote TTY has our window size, and follows a resize.
        term.send(b"stty size\r")
        term.expect(b"24 80")
        term.set_size(40, 132)
        os.kill(term.proc.pid, signal.SIGWINCH)
        time.sleep(0.3)
        term.send(b"stty size\r")
        term.expect(b"40 132")
        # Ctrl-C reaches the remote shell's foreground process, not our CLI.
        term.send(b"sleep 30; echo not-interrupted\r")
        time.sleep(0.5)
        started = time.monotonic()
        term.send(b"\x03")
        term.send(b"echo after-$((1+1))\r")
        term.expect(b"after-2", timeout=10)
        assert time.monotonic() - started < 10
        assert b"not-interrupted" not in term.seen
        assert term.proc.poll() is None
        term.send(b"exit 3\r")
        assert term.proc.wait(15) == 3
        assert termios.tcgetattr(term.slave) == term.before, "terminal not restored"
    finally:
        term.close()
