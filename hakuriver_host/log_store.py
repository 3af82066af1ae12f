"""Command task output: appended to shared_dir files and fanned out to live followers.

Runners tag every chunk with its byte offset, so a chunk sent twice (after a reconnect or a
restart) is written once. A chunk must continue its file exactly: one that would leave a
gap is refused (never padded), so what is stored is always a prefix of what the task wrote.
A write that fails (a full disk) raises OutputError; the file keeps what was written, and
the chunks after it, which cannot continue the file, raise Lost (not Gap: no bytes went
missing between the Runner and the Host) until a chunk continues the file again.
Followers get chunks through queues bounded in count and bytes (1 MiB); a follower that
falls behind is not waited for: it is flagged and catches up from the file, which always
holds every byte, so a slow reader costs the Host at most that much memory and never slows
the writer or other readers. A reader that asked for a bound on its lag (``max_lag``) never
reads more than that far behind the stored end: it skips ahead to the start of a line within
the last ``max_lag`` bytes, and the offsets it is given show the jump.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")

STDOUT = "stdout"
STDERR = "stderr"
READ_CHUNK = 64 * 1024
FOLLOWER_QUEUE = 256
READER_THREADS = 4
# How far past a skip's landing point the reader looks for a line start.
LINE_PROBE = 4096
# Output bytes queued for one live follower at most; a slower one reads from the file.
FOLLOWER_BYTES = 1024 * 1024
# Free space under which output storage that failed is not taken as usable again: a full
# file system still takes appends into its files' last, partly filled blocks.
ROOM_BYTES = 16 * 1024 * 1024


class OutputError(Exception):
    """Output could not be stored (the message says why: a full disk, an I/O error)."""


class Gap(Exception):
    """A chunk would leave a gap in its file: refused."""


class Lost(Exception):
    """A chunk follows bytes an earlier failed write of its file did not store: refused."""


class Follower:
    def __init__(self) -> None:
        self.queue: asyncio.Queue[tuple[int, bytes] | None] = asyncio.Queue(FOLLOWER_QUEUE)
        # Bytes waiting in ``queue``: past FOLLOWER_BYTES the follower is lagging too.
        self.queued_bytes = 0
        self.lagging = False
        self.closed = False

    def offer(self, offset: int, data: bytes) -> None:
        """Queue a chunk, or mark the follower lagging (it rereads from the file)."""
        if self.lagging:
            return
        if self.queued_bytes + len(data) > FOLLOWER_BYTES:
            self.lagging = True
            return
        try:
            self.queue.put_nowait((offset, data))
        except asyncio.QueueFull:
            self.lagging = True
            return
        self.queued_bytes += len(data)

    async def take(self) -> tuple[int, bytes] | None:
        item = await self.queue.get()
        if item is not None:
            self.queued_bytes -= len(item[1])
        return item

    def drop_queued(self) -> None:
        while not self.queue.empty():
            self.queue.get_nowait()
        self.queued_bytes = 0


class LogStore:
    def __init__(self, outputs_dir: Path, errors_dir: Path) -> None:
        for directory in (outputs_dir, errors_dir):
            try:
                directory.mkdir(parents=True, exist_ok=True)
            except OSError as exc:  # the Host stops with this line: name the key to fix
                raise OSError(
                    f"cannot create {directory} for task output (paths.shared_dir): "
                    f"{exc.strerror or exc}"
                ) from None
        self._prefixes = (os.path.join(outputs_dir, ""), os.path.join(errors_dir, ""))
        self._sizes: dict[tuple[int, str], int] = {}
        # Files whose latest write failed, and why: a chunk past their end is Lost, not a Gap.
        self._failed: dict[tuple[int, str], str] = {}
        self._followers: dict[tuple[int, str], set[Follower]] = {}
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hakuriver-logs")
        # Readers (followers catching up, log reads) on threads of their own: many slow
        # followers rereading a large file must not queue up the writes of every task.
        self._readers = ThreadPoolExecutor(
            max_workers=READER_THREADS, thread_name_prefix="hakuriver-log-readers"
        )
        self.bytes_written = 0

    def path(self, task_id: int, stream: str) -> Path:
        return Path(self.paths(task_id)[stream == STDERR])

    def paths(self, task_id: int) -> tuple[str, str]:
        """The files of a task's stdout and stderr, as text, by formatting alone: a job
        array's submission builds these for every task, and two Paths a task cost it a third
        of its time."""
        return f"{self._prefixes[0]}{task_id}.out", f"{self._prefixes[1]}{task_id}.err"

    async def has_room(self) -> bool:
        """Is there room again on the storage of both outputs (at least ROOM_BYTES free)?"""
        return await self._io(self._has_room)

    def _has_room(self) -> bool:
        for prefix in self._prefixes:
            stat = os.statvfs(prefix)
            if stat.f_bavail * stat.f_frsize < ROOM_BYTES:
                return False
        return True

    async def _io(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def _stat_size(self, path: Path) -> int:
        try:
            return path.stat().st_size
        except FileNotFoundError:
            return 0

    async def size(self, task_id: int, stream: str) -> int:
        key = (task_id, stream)
        if key not in self._sizes:
            self._sizes[key] = await self._io(self._stat_size, self.path(task_id, stream))
        return self._sizes[key]

    def _pwrite(self, path: Path, offset: int, data: bytes) -> tuple[int, OSError | None]:
        """Write ``data`` at ``offset``: (bytes written, the error that stopped it)."""
        written = 0
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
        except OSError as exc:
            return 0, exc
        try:
            while written < len(data):
                written += os.pwrite(fd, data[written:], offset + written)
        except OSError as exc:
            return written, exc
        finally:
            os.close(fd)
        return written, None

    def expect(self, task_ids: list[int]) -> None:
        """New tasks have no output yet: their sizes are known without looking at the disk.
        Their files appear with their first byte (readers take a missing file as empty);
        creating two empty files per task up front cost a job array more than storing it."""
        for task_id in task_ids:
            for stream in (STDOUT, STDERR):
                self._sizes.setdefault((task_id, stream), 0)

    async def append(self, task_id: int, stream: str, offset: int, data: bytes) -> None:
        """Store a chunk that continues the file (or repeats part of it: idempotent). Gap
        if it starts past the end (Lost if the file's latest write failed); OutputError if
        the write fails (what was written stays and counts)."""
        key = (task_id, stream)
        size = await self.size(task_id, stream)
        if offset + len(data) <= size:
            return
        if offset > size:
            if key in self._failed:
                raise Lost(f"chunk at {offset} follows a write that failed: {self._failed[key]}")
            raise Gap(f"chunk at {offset} but {size} bytes stored: {offset - size} missing")
        data = data[size - offset :]
        offset = size
        written, error = await self._io(self._pwrite, self.path(task_id, stream), offset, data)
        self._sizes[key] = offset + written
        self.bytes_written += written
        if written:
            self._tell_followers(task_id, stream, offset, data[:written])
        if error is None:
            self._failed.pop(key, None)
            return
        self._failed[key] = f"{self.path(task_id, stream)}: {error.strerror or error}"
        raise OutputError(self._failed[key])

    def _tell_followers(self, task_id: int, stream: str, offset: int, data: bytes) -> None:
        for follower in self._followers.get((task_id, stream), ()):
            follower.offer(offset, data)

    def close(self, task_id: int) -> None:
        """The task is final and all its output is stored: end every follower."""
        for stream in (STDOUT, STDERR):
            for follower in self._followers.pop((task_id, stream), set()):
                follower.closed = True
                try:
                    follower.queue.put_nowait(None)
                except asyncio.QueueFull:
                    follower.lagging = True
            self._sizes.pop((task_id, stream), None)
            self._failed.pop((task_id, stream), None)

    def _read(self, path: Path, offset: int, max_lag: int) -> tuple[int, bytes]:
        """The next chunk from ``offset``; with ``max_lag``, from further on if the file's
        end is more than that far ahead (at a line start when one is near)."""
        try:
            with path.open("rb") as f:
                end = os.fstat(f.fileno()).st_size
                if offset >= end:  # nothing there yet; seek refuses offsets past the FS's limit
                    return offset, b""
                if max_lag and end - offset > max_lag:
                    offset = _line_start(f, end - max_lag, end)
                f.seek(offset)
                return offset, f.read(READ_CHUNK)
        except FileNotFoundError:
            return offset, b""

    async def _from_file(
        self, task_id: int, stream: str, offset: int, max_lag: int
    ) -> AsyncIterator[tuple[int, bytes]]:
        path = self.path(task_id, stream)
        loop = asyncio.get_running_loop()
        while True:
            offset, data = await loop.run_in_executor(
                self._readers, self._read, path, offset, max_lag
            )
            if not data:
                return
            yield offset, data
            offset += len(data)

    async def _follow(
        self, follower: Follower, task_id: int, stream: str, offset: int, max_lag: int
    ) -> AsyncIterator[tuple[int, bytes]]:
        """Live chunks as they are stored; from the file again whenever the follower fell
        behind (or a chunk left a gap, or it is more than ``max_lag`` behind the end), and
        once more at the end."""
        while True:
            if follower.lagging:
                follower.lagging = False
                follower.drop_queued()
                async for piece in self._from_file(task_id, stream, offset, max_lag):
                    yield piece
                    offset = piece[0] + len(piece[1])
                if follower.closed:
                    return
                continue
            item = await follower.take()
            if item is None:
                async for piece in self._from_file(task_id, stream, offset, max_lag):
                    yield piece
                return
            chunk_offset, data = item
            stored = self._sizes.get((task_id, stream), 0)
            if chunk_offset > offset or (max_lag and stored - offset > max_lag):
                follower.lagging = True
            elif chunk_offset + len(data) > offset:
                # In pieces of READ_CHUNK, as from the file: a stream's transport holds one
                # message while its reader is slow, so a piece bounds what it holds.
                for at in range(offset - chunk_offset, len(data), READ_CHUNK):
                    yield chunk_offset + at, data[at : at + READ_CHUNK]
                offset = chunk_offset + len(data)

    async def read(
        self,
        task_id: int,
        stream: str,
        offset: int,
        follow: bool,
        is_final: bool,
        max_lag: int = 0,
    ) -> AsyncIterator[tuple[int, bytes]]:
        """Yield (offset, data) from ``offset``; with follow, until the task is closed;
        with ``max_lag``, never more than that many bytes behind the stored end."""
        follower: Follower | None = None
        if follow and not is_final:
            follower = Follower()
            self._followers.setdefault((task_id, stream), set()).add(follower)
        try:
            async for piece in self._from_file(task_id, stream, offset, max_lag):
                yield piece
                offset = piece[0] + len(piece[1])
            if follower is not None:
                async for piece in self._follow(follower, task_id, stream, offset, max_lag):
                    yield piece
        finally:
            if follower is not None:
                self._followers.get((task_id, stream), set()).discard(follower)


def _line_start(f: BinaryIO, at: int, end: int) -> int:
    """The offset just past the first line end at or after ``at`` (looking LINE_PROBE bytes
    ahead), so a skip lands on a whole line; ``at`` itself when none is that near, or when
    the line end is the file's last byte (nothing would be left to read)."""
    f.seek(at)
    newline = f.read(LINE_PROBE).find(b"\n")
    if newline < 0 or at + newline + 1 >= end:
        return at
    return at + newline + 1
