"""Bytes from one socket to another, for the SSH relays (the Host's proxy and the Runner's
tunnels).

On Linux the bytes go through a pipe with splice(2) and never enter Python: relaying an
SSH session's bulk copy through asyncio's streams cost the Host and the Runner about three
times the CPU per MB, and on a 2-core machine that CPU is taken from ssh and sshd
themselves. Elsewhere they go through the event loop's socket calls.

The sockets are plain non-blocking ones, not asyncio transports: a transport reads ahead
into a buffer that splice cannot see. Whoever owns a socket closes it only once the copies
using it have returned, never under them (a closed descriptor's number is soon another
connection's).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import socket
from collections.abc import Callable, Coroutine, Iterable
from typing import Any

# The most moved at a time, and the size asked for each copy's pipe.
CHUNK = 1024 * 1024

_SPLICE = getattr(os, "splice", None)
_FLAGS = getattr(os, "SPLICE_F_MOVE", 0) | getattr(os, "SPLICE_F_NONBLOCK", 0)


def _always() -> bool:
    return True


def prepared(sock: socket.socket) -> socket.socket:
    """``sock`` made ready for the event loop and for SSH's keystrokes: non-blocking, and
    small writes sent at once (asyncio's transports set TCP_NODELAY the same way)."""
    sock.setblocking(False)
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


class LineSocket:
    """A socket read a line at a time for a relay's handshake. What the peer sent after the
    line stays in ``rest``: a relay sends it on first."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.rest = b""

    async def readline(self, limit: int) -> bytes:
        """The next line with its newline; what is left at the end of the stream (b"" for
        nothing); ValueError for a line longer than ``limit``."""
        loop = asyncio.get_running_loop()
        buffer = bytearray(self.rest)
        searched = 0
        while (end := buffer.find(b"\n", searched)) < 0:
            if len(buffer) >= limit:
                raise ValueError(f"a line longer than {limit} bytes")
            searched = len(buffer)
            data = await loop.sock_recv(self.sock, 65536)
            if not data:
                self.rest = b""
                return bytes(buffer)
            buffer += data
        if end >= limit:
            raise ValueError(f"a line longer than {limit} bytes")
        self.rest = bytes(buffer[end + 1 :])
        return bytes(buffer[: end + 1])

    async def send(self, data: bytes) -> None:
        await asyncio.get_running_loop().sock_sendall(self.sock, data)


async def copy(
    source: socket.socket,
    sink: socket.socket,
    first: bytes = b"",
    go_on: Callable[[], bool] = _always,
) -> None:
    """Copy ``first``, then what ``source`` reads, to ``sink`` until ``source`` ends, either
    socket fails, or ``go_on()`` (asked before each read's bytes are passed on) says no."""
    loop = asyncio.get_running_loop()
    with contextlib.suppress(OSError):
        if first:
            await loop.sock_sendall(sink, first)
        if _SPLICE is not None:
            await _splice(loop, source, sink, go_on)
            return
        while (data := await loop.sock_recv(source, CHUNK)) and go_on():
            await loop.sock_sendall(sink, data)


async def until_first(jobs: Iterable[Coroutine[Any, Any, None]]) -> None:
    """Run ``jobs`` (a session's copies, and whatever else may end it) until the first
    returns, then cancel the others and wait for them too: only then may their sockets be
    closed (see the module's docstring)."""
    tasks = [asyncio.ensure_future(job) for job in jobs]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.wait(tasks)


async def _splice(
    loop: asyncio.AbstractEventLoop,
    source: socket.socket,
    sink: socket.socket,
    go_on: Callable[[], bool],
) -> None:
    assert _SPLICE is not None
    out, into = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        # The default pipe (64 KiB) would take sixteen system calls per CHUNK; a user over
        # the system's pipe-size budget keeps it.
        with contextlib.suppress(OSError):
            fcntl.fcntl(into, fcntl.F_SETPIPE_SZ, CHUNK)
        while True:
            try:
                held = _SPLICE(source.fileno(), into, CHUNK, flags=_FLAGS)
            except BlockingIOError:
                await _ready(loop, source.fileno(), writing=False)
                continue
            if not held or not go_on():
                return
            while held:
                try:
                    held -= _SPLICE(out, sink.fileno(), held, flags=_FLAGS)
                except BlockingIOError:
                    await _ready(loop, sink.fileno(), writing=True)
    finally:
        os.close(out)
        os.close(into)


async def _ready(loop: asyncio.AbstractEventLoop, fd: int, *, writing: bool) -> None:
    """Until ``fd`` can be read (or written) without blocking."""
    ready = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    if writing:
        loop.add_writer(fd, wake)
    else:
        loop.add_reader(fd, wake)
    try:
        await ready
    finally:
        if writing:
            loop.remove_writer(fd)
        else:
            loop.remove_reader(fd)


async def connect(host: str, port: int) -> socket.socket:
    """A connection to ``host``'s first address that answers, prepared (see ``prepared``)."""
    loop = asyncio.get_running_loop()
    failure: OSError | None = None
    for family, kind, proto, _, address in await loop.getaddrinfo(
        host, port, type=socket.SOCK_STREAM
    ):
        sock = socket.socket(family, kind, proto)
        try:
            sock.setblocking(False)
            await loop.sock_connect(sock, address)
        except OSError as exc:
            sock.close()
            failure = exc
            continue
        except BaseException:
            sock.close()
            raise
        return prepared(sock)
    raise failure or OSError(f"no address for {host}")
