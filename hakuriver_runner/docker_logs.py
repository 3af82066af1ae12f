"""A container's output from the Docker API, read in large blocks.

docker-py's ``logs(stream=True)`` yields one frame per log line, and the daemon sends each
frame as an HTTP chunk of its own, so a task printing short lines as fast as it can was read
at a few thousand lines a second and each line became a message of its own all the way to
the Host. This reads whatever bytes the daemon has sent so far from the connection (up to
READ_BYTES at a time, never waiting for more) and takes off the HTTP chunk framing and
Docker's frame headers itself: a backlog comes as large blocks, a lone line at once.

Two ways in. ``follow_output`` follows the container's log (the daemon reads its log file,
Docker's `local` driver's, again for the reader): any container, from its first byte, at
any time. ``Attached`` attaches to a created container's output before it starts, and reads
what the daemon copies from the container as it copies it, with no log file in between:
over twice the rate of a log follow on a flood. An attached reader that stops reading holds
the container's writes once the daemon's buffer (1 MB) is full: that is the flow control
from the Host's storage back to the task; the Runner closes the attachment whenever its
stream to the Host is gone.
"""

from __future__ import annotations

import contextlib
import socket
import struct
from collections.abc import Iterator
from typing import Any

from docker.types.daemon import CancellableStream

READ_BYTES = 256 * 1024
_HEADER = struct.Struct(">BxxxL")  # stream type, payload size
STDERR_FRAME = 2


def payloads(buffer: bytearray) -> list[tuple[int, bytes]]:
    """The payloads of the complete frames at the start of ``buffer`` (which keeps what is
    left of an incomplete one), as (0 for stdout, 1 for stderr, data); frames of one output
    in a row come out joined."""
    parts: list[tuple[int, list[bytes]]] = []
    at = 0
    while len(buffer) - at >= _HEADER.size:
        kind, size = _HEADER.unpack_from(buffer, at)
        end = at + _HEADER.size + size
        if end > len(buffer):
            break
        index = 1 if kind == STDERR_FRAME else 0
        data = bytes(buffer[at + _HEADER.size : end])
        if parts and parts[-1][0] == index:
            parts[-1][1].append(data)
        elif data:
            parts.append((index, [data]))
        at = end
    del buffer[:at]
    return [(index, b"".join(pieces)) for index, pieces in parts]


class Dechunker:
    """HTTP/1.1 chunked transfer coding, undone incrementally."""

    def __init__(self) -> None:
        self.pending = bytearray()
        self.left = 0  # data bytes still to come in the current chunk
        self.crlf = False  # the CRLF after a chunk's data is still to come
        self.done = False

    def feed(self, data: bytes) -> bytes:
        """The body bytes in ``data`` (and what was held back from before)."""
        self.pending += data
        pending, body = self.pending, bytearray()
        while not self.done:
            if self.left:
                take = min(self.left, len(pending))
                body += pending[:take]
                del pending[:take]
                self.left -= take
                if self.left:
                    break
                self.crlf = True
            if self.crlf:
                if len(pending) < 2:
                    break
                del pending[:2]
                self.crlf = False
            end = pending.find(b"\r\n")
            if end < 0:
                break
            size = int(bytes(pending[:end]).split(b";")[0], 16)
            del pending[: end + 2]
            self.left, self.done = size, size == 0
        return bytes(body)


def follow_output(container: Any, follow: bool = True) -> CancellableStream:
    """Stream a non-TTY container's stdout and stderr, from its start until it ends (without
    ``follow``: what its log holds now), as blocks of (0 for stdout, 1 for stderr, bytes) in
    the order written; ``close()`` from another thread ends it. One request for both: the
    daemon follows one log for it."""
    api = container.client.api
    response = api._get(
        api._url("/containers/{0}/logs", container.id),
        params={"stdout": 1, "stderr": 1, "follow": int(follow), "tail": "all"},
        stream=True,
    )
    api._raise_for_status(response)
    api._disable_socket_timeout(api._get_raw_response_socket(response))

    connection = response.raw._fp.fp  # the buffered socket under http.client's response
    dechunker = Dechunker() if response.raw.chunked else None

    def blocks() -> Iterator[tuple[int, bytes]]:
        pending = bytearray()
        while data := connection.read1(READ_BYTES):
            pending += dechunker.feed(data) if dechunker is not None else data
            yield from payloads(pending)
            if dechunker is not None and dechunker.done:
                return

    return CancellableStream(blocks(), response)


class Attachment:
    """A raw connection attached to a container's streams (``params``), with no timeout."""

    def __init__(self, container: Any, params: dict[str, int]) -> None:
        api = container.client.api
        self._socket = api.attach_socket(container.id, params={**params, "stream": 1})
        api._disable_socket_timeout(self._socket)
        self._raw: socket.socket = getattr(self._socket, "_sock", self._socket)

    def close(self) -> None:
        """Safe from any thread, and more than once: a blocked read ends, and the container
        sees the end of what it reads."""
        with contextlib.suppress(OSError):
            self._raw.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self._socket.close()


class Attached(Attachment):
    """A created container's stdout and stderr (and its stdin, with ``stdin``), attached
    to before it starts."""

    def __init__(self, container: Any, stdin: bool = False) -> None:
        super().__init__(container, {"stdout": 1, "stderr": 1, "stdin": int(stdin)})

    def blocks(self) -> Iterator[tuple[int, bytes]]:
        """(0 for stdout, 1 for stderr, bytes) in the order written, until the container's
        output ends (or ``close``)."""
        pending = bytearray()
        while data := self._raw.recv(READ_BYTES):
            pending += data
            yield from payloads(pending)
