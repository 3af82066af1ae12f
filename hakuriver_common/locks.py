"""One process at a time on a piece of state (the Host's database, a Runner's state
directory): an exclusive lock on a file, which the kernel drops when the process ends,
killed or not, so a restart is never refused."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path


class LockHeld(Exception):
    """Another process holds the lock; ``holder`` is its pid ("" when unknown)."""

    def __init__(self, holder: str) -> None:
        super().__init__(holder)
        self.holder = holder if holder.isdigit() else ""

    @property
    def by(self) -> str:
        """The holder as " (pid N)", or nothing when it is not known."""
        return f" (pid {self.holder})" if self.holder else ""


def hold_lock(path: Path) -> int:
    """An open descriptor of ``path`` (made 0600 if missing) with an exclusive lock on it,
    this process's pid written in it; close it to let go. Raises ``LockHeld`` when another
    process holds it, ``OSError`` when ``path`` cannot be opened."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
        os.close(fd)
        raise LockHeld(holder) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd
