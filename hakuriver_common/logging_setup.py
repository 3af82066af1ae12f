"""Host and runner log to a file when configured, else to the console (journald under
systemd). A log file is reopened when it was moved or removed, so logrotate (or any tool
that moves the file aside) rotates it without a restart or copytruncate.

Lines are written by a thread of their own, never by the caller: a record is handed over
at once, so a log destination that stalls (a full disk, journald behind, a console pipe
nobody reads) does not stall the event loop that logged it. A writer ``QUEUE_LINES``
behind drops lines instead of waiting, counts them, and says how many once it catches up.
At exit the writer gets ``EXIT_WAIT_SECONDS`` to write what is queued; a console or a file
that still takes nothing then does not hold the exit.
"""

from __future__ import annotations

import atexit
import logging
import logging.handlers
import os
import queue
import sys
import threading
import time
from pathlib import Path

from hakuriver_common.folders import make_folder

# Records the writer may be behind before new ones are dropped (~3 MB of lines).
QUEUE_LINES = 10_000
# How long the process's exit waits for the writer to write what is queued.
EXIT_WAIT_SECONDS = 2.0


class _Writer(threading.Thread):
    """Writes the records handed to it through ``handler``, in order."""

    def __init__(self, handler: logging.Handler) -> None:
        super().__init__(name="log-writer", daemon=True)
        self.handler = handler
        self.records: queue.Queue[logging.LogRecord | None] = queue.Queue(QUEUE_LINES)
        self.stopped = False

    def run(self) -> None:
        # Only this thread writes through the handler: its lock is not taken, so a write
        # the destination does not take holds nobody else (logging's shutdown takes it).
        while (record := self.records.get()) is not None:
            try:
                if self.handler.filter(record):
                    self.handler.emit(record)
            finally:
                self.records.task_done()
        self.records.task_done()

    def stop(self) -> None:
        """Write what is queued (for ``EXIT_WAIT_SECONDS`` at most: a stalled destination
        does not hold the exit), then end."""
        deadline = time.monotonic() + EXIT_WAIT_SECONDS
        try:
            self.records.put(None, timeout=EXIT_WAIT_SECONDS)
            self.join(max(0.0, deadline - time.monotonic()))
        except queue.Full:
            pass
        self.stopped = True


class _Descriptor(logging.Handler):
    """Each line written straight to a descriptor: a write the destination does not take
    waits in the kernel holding none of Python's locks (through a file object its
    buffer's lock would be held, and logging's shutdown and the interpreter's exit wait
    for that lock)."""

    fd: int | None = None

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.write(self.format(record) + "\n")
        except Exception:
            self.handleError(record)

    def write(self, line: str) -> None:
        assert self.fd is not None
        data = line.encode(errors="backslashreplace")
        while data:
            data = data[os.write(self.fd, data) :]


class _Console(_Descriptor):
    """The standard error's descriptor; a standard error with none (replaced by a stream in
    memory) is written to."""

    def __init__(self) -> None:
        super().__init__()
        self.stream = sys.stderr
        try:
            self.fd = self.stream.fileno()
        except (OSError, ValueError):
            self.fd = None

    def write(self, line: str) -> None:
        if self.fd is not None:
            super().write(line)
            return
        self.stream.write(line)
        self.stream.flush()


class _File(_Descriptor):
    """A log file, appended to, and opened again when it was moved or removed. Its
    descriptor is only ever closed by the writer (to open the file again) or by the
    process's exit: closed under a write that waits, its number could be reused by a file
    the Host opens next (its database), and the write would land there."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path
        self._open()

    def _open(self) -> None:
        self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o666)

    def write(self, line: str) -> None:
        assert self.fd is not None
        try:
            now = os.stat(self.path)
        except FileNotFoundError:
            now = None
        held = os.fstat(self.fd)
        if now is None or (now.st_dev, now.st_ino) != (held.st_dev, held.st_ino):
            os.close(self.fd)
            self._open()
        super().write(line)


class _HandOver(logging.handlers.QueueHandler):
    """Hands each record to the writer without waiting; when the writer is full, the record
    is dropped and counted, and the count goes ahead of the next record it takes."""

    def __init__(self, writer: _Writer) -> None:
        super().__init__(writer.records)
        self.writer = writer
        self.dropped = 0
        self._lock_dropped = threading.Lock()

    def enqueue(self, record: logging.LogRecord) -> None:
        with self._lock_dropped:
            try:
                if self.dropped:
                    self.queue.put_nowait(self._dropped_record())
                    self.dropped = 0
                self.queue.put_nowait(record)
            except queue.Full:
                self.dropped += 1

    def _dropped_record(self) -> logging.LogRecord:
        return logging.LogRecord(
            "hakuriver.logging",
            logging.WARNING,
            __file__,
            0,
            "%d log lines dropped: the log's destination did not keep up",
            (self.dropped,),
            None,
        )

    def flush(self) -> None:
        """Wait until every record handed over is written (``EXIT_WAIT_SECONDS`` at most,
        and not once the writer was stopped: logging's shutdown flushes every handler)."""
        if self.writer.stopped:
            return
        records = self.writer.records
        deadline = time.monotonic() + EXIT_WAIT_SECONDS
        with records.all_tasks_done:
            while records.unfinished_tasks and (left := deadline - time.monotonic()) > 0:
                records.all_tasks_done.wait(left)


def setup_logging(log_file: Path | None, level: int = logging.INFO) -> None:
    handler: logging.Handler
    if log_file is not None:
        make_folder(log_file.expanduser().parent)
        handler = _File(log_file.expanduser())
    else:
        handler = _Console()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    writer = _Writer(handler)
    writer.start()
    atexit.register(writer.stop)
    root = logging.getLogger()
    root.handlers[:] = [_HandOver(writer)]
    root.setLevel(level)
