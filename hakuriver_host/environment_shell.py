"""A process inside a Host environment container, attached for an interactive session.

The environment layer's interface for ``docker-shell``: blocking calls (run them off the
event loop) over one ``docker exec`` with its raw socket, so the servicer never touches
docker-py.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

STDERR_FRAME = 2
log = logging.getLogger(__name__)


class ShellProcess:
    def __init__(
        self, api: Any, container_id: str, command: list[str], tty: bool, env: dict[str, str]
    ) -> None:
        self._api = api
        self._container_id = container_id
        self.tty = tty
        self._exec_id = api.exec_create(container_id, command, stdin=True, tty=tty, environment=env)
        self._sock = api.exec_start(self._exec_id, socket=True, tty=tty)
        self._raw: socket.socket = getattr(self._sock, "_sock", self._sock)

    def output(self) -> Iterator[tuple[bool, bytes]]:
        """(is_stderr, data) as the process writes, until it closes its output."""
        from docker.utils.socket import frames_iter

        try:
            for stream, data in frames_iter(self._sock, self.tty):
                yield stream == STDERR_FRAME, data
        except OSError:
            return

    def write(self, data: bytes) -> None:
        self._raw.sendall(data)

    def close_stdin(self) -> None:
        with contextlib.suppress(OSError):
            self._raw.shutdown(socket.SHUT_WR)

    def resize(self, rows: int, cols: int) -> None:
        if self.tty and rows:
            self._api.exec_resize(self._exec_id, height=rows, width=cols)

    def exit_code(self) -> int:
        return int(self._api.exec_inspect(self._exec_id).get("ExitCode") or 0)

    def close(self) -> None:
        """Hang up: a reader blocked on the socket returns at once. Docker keeps an exec's
        process running when its client goes, so ``stop`` ends it."""
        with contextlib.suppress(OSError):
            self._raw.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self._raw.close()

    def stop(self) -> None:
        """End the process and its process group if it still runs (blocking: a Docker
        call): a command without a TTY (``docker-shell NAME -- CMD``) has no controlling
        terminal whose end would send its children SIGHUP, so Ctrl-C left them running
        (an ``apt-get`` holding dpkg's lock). ``docker exec`` makes the process lead a
        session and group of its own. The Host must see the container's processes (it runs
        beside the Docker daemon)."""
        try:
            info = self._api.exec_inspect(self._exec_id)
        except Exception:
            return
        pid = int(info.get("Pid") or 0)
        if not info.get("Running") or pid <= 0:
            return
        # Only a process of this container: the PID is the daemon's view, which is ours
        # only when the Host shares its PID namespace (and a PID can be reused).
        try:
            ours = self._container_id in Path(f"/proc/{pid}/cgroup").read_text()
        except OSError:
            ours = False
        if not ours:
            log.warning("cannot end shell process %d of container %.12s", pid, self._container_id)
            return
        with contextlib.suppress(OSError):
            if os.getpgid(pid) == pid:
                os.killpg(pid, signal.SIGKILL)
            else:
                os.kill(pid, signal.SIGKILL)
