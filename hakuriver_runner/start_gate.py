"""A container started ahead of its task's dispatch and held before its command.

Docker's start of a container is most of a queued task's way to running (~160 ms of the
~250 ms between one task's end and the next one's start on a busy 2-core node); creating it
ahead saves only the create (~10 ms). So a container prepared ahead is also started: its
entrypoint is a gate, a shell that waits for a line on its stdin. The dispatch writes that
line (``Gate.release``) and the shell becomes the command: ~30 ms from the dispatch to a
`true` ended, against ~170 ms for a start.

The command runs only when the Runner releases it. The container is created with its stdin
open and attached once (docker-py then sets ``StdinOnce``): when that attachment closes
without the line (the Runner went away, or dropped what it prepared), the gate reads the
end of its input, says ``NEVER_RELEASED`` on stderr and exits without running anything.
A command that does not exist exits 127 saying so, as it does without the gate (Docker's
init, which every task container runs, reports it the same way).

Only images with no ``ENTRYPOINT`` of their own are held this way (the gate replaces it);
an image without ``/bin/sh`` cannot run the gate: its prepared container exits at once and
the dispatch starts a new one.
"""

from __future__ import annotations

import contextlib
import socket
from typing import Any

# On a container whose command waits behind a gate (with LABEL_PREPARED).
LABEL_GATED = "hakuriver.gated"
NEVER_RELEASED = "hakuriver: never released"
_SCRIPT = f'read -r _ || {{ echo "{NEVER_RELEASED}" >&2; exit 1; }}\nexec "$@"\n'
# The entrypoint of a held container; its command is the task's argv ("$@").
ENTRYPOINT = ["/bin/sh", "-c", _SCRIPT, "hakuriver-gate"]


class Gate:
    """The Runner's end of a held container's stdin; attach before the start."""

    def __init__(self, container: Any) -> None:
        api = container.client.api
        self._socket = api.attach_socket(container.id, params={"stdin": 1, "stream": 1})
        api._disable_socket_timeout(self._socket)
        self._raw: socket.socket = getattr(self._socket, "_sock", self._socket)

    def release(self) -> None:
        """Let the command run, its stdin then at its end (as with no stdin at all). Raises
        OSError when the gate is gone."""
        try:
            self._raw.sendall(b"\n")
            self._raw.shutdown(socket.SHUT_WR)
        finally:
            self.close()

    def close(self) -> None:
        """Safe more than once; a gate closed unreleased exits without running the command."""
        with contextlib.suppress(OSError):
            self._raw.close()
        with contextlib.suppress(OSError):
            self._socket.close()


def never_released(container: Any) -> bool:
    """Did this held container end at its gate, its command never run?"""
    try:
        tail = container.logs(stdout=False, stderr=True, tail=1)
    except Exception:  # the daemon away: kept, as what may be a task's result
        return False
    return bool(tail.decode(errors="replace").strip() == NEVER_RELEASED)
