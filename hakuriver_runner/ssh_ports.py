"""Loopback ports for the SSH servers of VPS tasks.

A port is chosen when the task's container is created and its sshd binds it seconds later.
A port the kernel handed out for a bind to port 0 is an ephemeral one: any outgoing
connection on the node may take it in between, and the VPS then fails with sshd's "Address
already in use". So, as Nomad's dynamic ports, these come from below the kernel's ephemeral
range, which outgoing connections never use, free now, and neither held by another VPS
container on the machine (every one shares its network) nor given in the last
``RECENT_SECONDS`` (a container being created). Where no such range is left (an ephemeral
range from 1024, say), the kernel picks, still never a port held or just given.
"""

from __future__ import annotations

import logging
import random
import socket
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

# Where the ports come from, as far as it lies below the ephemeral range (Linux's default
# ephemeral range starts at 32768).
DYNAMIC = range(20000, 32768)
# How long a port just given is not given again, though nothing listens on it yet.
RECENT_SECONDS = 300.0
# Random ports tried before falling back to one the kernel picks.
TRIES = 64
EPHEMERAL_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
log = logging.getLogger(__name__)


def ephemeral_range(path: Path = EPHEMERAL_RANGE_FILE) -> range:
    """The kernel's range of ports for outgoing connections (Linux's default if unknown)."""
    try:
        low, high = (int(n) for n in path.read_text().split())
    except (OSError, ValueError):
        return range(32768, 61000)
    return range(low, high + 1)


def is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _kernel_pick() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class SshPorts:
    def __init__(
        self,
        ephemeral: range | None = None,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        ephemeral = ephemeral if ephemeral is not None else ephemeral_range()
        self.pool = [p for p in DYNAMIC if p not in ephemeral]
        self._clock = clock
        self._rng = rng or random.Random()
        self._recent: dict[int, float] = {}
        self._lock = threading.Lock()
        self._warned = False

    def take(self, in_use: Iterable[int] = ()) -> int:
        """A port for a new VPS container; ``in_use``: the ports of the others."""
        with self._lock:
            now = self._clock()
            self._recent = {p: t for p, t in self._recent.items() if now - t < RECENT_SECONDS}
            skip = set(in_use) | set(self._recent)
            port = next(
                (
                    port
                    for port in self._rng.sample(self.pool, min(TRIES, len(self.pool)))
                    if port not in skip and is_free(port)
                ),
                0,
            )
            if not port:  # no range below the ephemeral one, or all of it taken
                port = self._kernel_pick(skip)
            self._recent[port] = now
            return port

    def _kernel_pick(self, skip: set[int]) -> int:
        if not self._warned:
            self._warned = True
            log.warning(
                "no free port for a VPS's sshd in %d-%d below the ephemeral range "
                "(net.ipv4.ip_local_port_range): the kernel picks one, which an outgoing "
                "connection may take before sshd binds it",
                DYNAMIC.start,
                DYNAMIC.stop - 1,
            )
        port = _kernel_pick()
        for _ in range(TRIES):
            if port not in skip:
                break
            port = _kernel_pick()
        return port
