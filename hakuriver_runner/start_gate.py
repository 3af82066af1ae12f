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
A container is held only once its gate is seen waiting (``waiting``; asked for an image's
first held container with a task's own mounts, then known of them), and every release
is written in the ``ReleaseLog`` before its line is sent: a Runner that starts again keeps
the released ones as tasks and removes the rest, however their gates ended. A command that
does not exist exits 127 saying so, as it does without the gate (Docker's init, which every
task container runs, reports it the same way).

Only images with no ``ENTRYPOINT`` of their own are held this way (the gate replaces it);
an image without ``/bin/sh`` cannot run the gate: its gate is never seen waiting, and its
containers are prepared created only from then on.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import threading
from collections.abc import Callable, Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

from hakuriver_runner.docker_logs import Attached

# On a container whose command waits behind a gate (with LABEL_PREPARED).
LABEL_GATED = "hakuriver.gated"
NEVER_RELEASED = "hakuriver: never released"
# Variables the gate's shell puts in its environment (busybox, dash and bash alike): unset
# before the command, which then gets the environment it would have had without the gate.
# A task or image that sets one itself is not held (``keeps_environment``). Bash's
# ``exec`` sets SHLVL again (to 0), so under bash the command is run through ``env -u``
# (when the image has ``env``).
SHELL_SETS = ("PWD", "SHLVL")
# Variables the gate's shell sets, resets or drops on its own, beyond those: ``_`` (the
# gate's ``read`` sets it); dash and busybox reset IFS, OPTIND and PPID; bash drops or
# rewrites the rest, and those named BASH* (SHELLOPTS=xtrace would also print the gate's
# lines).
SHELL_OWNED = frozenset(
    {
        *SHELL_SETS,
        "_",
        "IFS",
        "OPTIND",
        "PPID",
        "COMP_WORDBREAKS",
        "EPOCHREALTIME",
        "EPOCHSECONDS",
        "HISTCMD",
        "LINENO",
        "OLDPWD",
        "OPTERR",
        "POSIXLY_CORRECT",
        "PS1",
        "PS2",
        "PS4",
        "RANDOM",
        "SHELLOPTS",
        "SRANDOM",
    }
)
# A name the shells keep in the environment they pass on (dash and busybox drop any other,
# such as ``spring.profiles.active``, which Docker allows).
_SHELL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SCRIPT = (
    f'read -r _ || {{ echo "{NEVER_RELEASED}" >&2; exit 1; }}\n'
    f"unset {' '.join(SHELL_SETS)}\n"
    '[ -z "${BASH_VERSION-}" ] || ! command -v env >/dev/null || exec env -u SHLVL "$@"\n'
    'exec "$@"\n'
)
# The entrypoint of a held container; its command is the task's argv ("$@").
ENTRYPOINT = ["/bin/sh", "-c", _SCRIPT, "hakuriver-gate"]
# How the gate's shell shows in the container's processes while it waits.
WAITING = "/bin/sh -c read -r _"
# Under runner.state_dir: the held containers released, one line each.
RELEASED_FILE = "released-gates"
# Lines written to it between two prunes (``ReleaseLog.prune``): ~75 KB.
PRUNE_EVERY = 1000


def keeps_environment(names: Iterable[str]) -> bool:
    """Whether a command held at the gate gets exactly these variables as they were set
    (those of its image and of its task): none is one the shells own, each a shell's name."""
    return not any(
        name in SHELL_OWNED or name.startswith("BASH") or not _SHELL_NAME.fullmatch(name)
        for name in names
    )


class Gate(Attached):
    """A held container's one attachment: the Runner's end of its stdin, and its output
    once released. Attach before the start. Closed unreleased, the gate exits without
    running the command."""

    def __init__(self, container: Any) -> None:
        super().__init__(container, stdin=True)

    def ended(self) -> bool | None:
        """Has the container's side of the attachment ended (the container exited, or was
        removed: its gate is gone), as far as can be told without waiting? None when it
        cannot be told here: the gate's shell wrote something before its release (a
        locale warning, say), or the connection cannot be peeked (TLS, SSH)."""
        try:
            waiting = self._raw.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            return False
        except OSError:
            return True
        except Exception:  # an SSL socket (or an SSH channel) takes no flags
            return None
        return None if waiting else True

    def release(self) -> bool:
        """Let the command run, its stdin then at its end (as with no stdin at all); its
        output goes on on this attachment. False when the line could not be sent (the gate
        is gone); once it was, the command runs, whatever closing stdin says."""
        try:
            self._raw.sendall(b"\n")
        except OSError:
            self.close()
            return False
        with contextlib.suppress(OSError):
            self._raw.shutdown(socket.SHUT_WR)
        return True


def never_released(container: Any) -> bool:
    """Did this held container end at its gate, saying so (its last line on stderr)?"""
    try:
        tail = container.logs(stdout=False, stderr=True, tail=1)
    except Exception:  # the daemon away: kept, as what may be a task's result
        return False
    return bool(tail.decode(errors="replace").strip() == NEVER_RELEASED)


def waiting(processes: dict[str, Any]) -> bool:
    """Does a container's process list (Docker's ``top``) show its gate waiting?"""
    titles = processes.get("Titles") or []
    column = titles.index("CMD") if "CMD" in titles else -1
    return any(str(row[column]).startswith(WAITING) for row in processes.get("Processes") or [])


class ReleaseLog:
    """The held containers this node's Runner released, and when, on disk: a Runner that
    starts again keeps those as the tasks they are, and removes every other held container,
    however its gate ended (a signal leaves no mark). Written before the release; a line
    survives the Runner's crash (the containers do not survive the machine's)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        # Lines written since the log was last pruned, and the containers released while
        # the ones that exist are listed for a prune (None: no prune under way).
        self._since_pruned = 0
        self._listing: set[str] | None = None

    def record(self, container_id: str, at: datetime) -> None:
        """Raises OSError when it cannot be written (the container is then not released)."""
        with self._lock:
            self._since_pruned += 1
            if self._listing is not None:
                self._listing.add(container_id)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a+b") as out:
                if out.seek(0, os.SEEK_END):
                    out.seek(-1, os.SEEK_END)
                    if out.read(1) != b"\n":  # a line cut short (a crash, a full disk)
                        out.write(b"\n")
                out.write(f"{container_id} {at.isoformat()}\n".encode())

    def read(self) -> dict[str, datetime]:
        with self._lock:
            return self._read()

    def _read(self) -> dict[str, datetime]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        released: dict[str, datetime] = {}
        for line in text.splitlines():
            container_id, _, at = line.partition(" ")
            with contextlib.suppress(ValueError):
                released[container_id] = datetime.fromisoformat(at)
        return released

    def keep_only(self, container_ids: set[str]) -> None:
        """Forget the containers that are gone: read and rewritten whole (then renamed over)
        under the lock, so that a release logged meanwhile is not lost."""
        with self._lock:
            self._keep_only(container_ids)

    def prune(self, existing: Callable[[], set[str]], every: int = PRUNE_EVERY) -> None:
        """``keep_only`` the ``existing`` containers once ``every`` lines were written since
        the last prune: a Runner that stays connected for months releases a container per
        task, and reads the whole log when it connects again. A container released while
        they are listed is kept."""
        with self._lock:
            if self._since_pruned < every or self._listing is not None:
                return
            self._since_pruned = 0
            self._listing = set()
        try:
            ids = existing()
        except Exception:
            with self._lock:  # tried again at the next prune
                self._listing = None
                self._since_pruned += every
            raise
        with self._lock:
            released_meanwhile, self._listing = self._listing, None
            self._keep_only(ids | released_meanwhile)

    def _keep_only(self, container_ids: set[str]) -> None:
        if not self.path.exists():
            return
        kept = {cid: at for cid, at in self._read().items() if cid in container_ids}
        spare = self.path.with_suffix(".new")
        spare.write_text(
            "".join(f"{cid} {at.isoformat()}\n" for cid, at in kept.items()),
            encoding="utf-8",
        )
        os.replace(spare, self.path)
