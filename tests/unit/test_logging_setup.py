"""A daemon's log: its file survives rotation (moved aside, as logrotate does, the next record
goes to a new file at the configured path, the old one keeps what it had), and a console
that takes nothing for a while costs lines, counted, not a wait."""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
from pathlib import Path

import pytest

from hakuriver_common import logging_setup
from hakuriver_common.logging_setup import setup_logging


def test_a_moved_log_file_is_reopened(tmp_path: Path, restored_logging: None) -> None:
    path = tmp_path / "logs" / "host.log"
    setup_logging(path)
    log = logging.getLogger("hakuriver_host.test")
    log.info("before rotation")
    logging.getLogger().handlers[0].flush()
    rotated = path.with_name("host.log.1")
    path.rename(rotated)
    log.info("after rotation")
    logging.getLogger().handlers[0].flush()
    assert "before rotation" in rotated.read_text()
    assert "after rotation" not in rotated.read_text()
    assert "after rotation" in path.read_text()


def test_lines_a_stalled_console_cannot_take_are_counted_then_said(
    monkeypatch: pytest.MonkeyPatch, restored_logging: None
) -> None:
    """While the console takes nothing, logging does not wait: past QUEUE_LINES waiting,
    lines are dropped; once it takes lines again, how many were dropped is said before the
    next line. Every line is either written or counted."""
    monkeypatch.setattr(logging_setup, "QUEUE_LINES", 5)
    unread, console_fd = os.pipe()
    console = os.fdopen(console_fd, "w")
    monkeypatch.setattr(sys, "stderr", console)
    setup_logging(None)
    log = logging.getLogger("hakuriver_host.test")
    log.info("x" * 200_000)  # more than the pipe holds: the writer waits inside this line
    for index in range(20):
        log.info("line %d", index)
    written = bytearray()

    def read_all() -> None:
        while b"after\n" not in written:
            written.extend(os.read(unread, 65536))

    reader = threading.Thread(target=read_all, daemon=True)
    reader.start()
    logging.getLogger().handlers[0].flush()  # the console took every line not dropped
    log.info("after")
    reader.join(10)
    console.close()
    os.close(unread)
    text = written.decode()
    [dropped] = [int(n) for n in re.findall(r"(\d+) log lines dropped", text)]
    lines = re.findall(r"line \d+$", text, re.MULTILINE)
    assert dropped > 0 and len(lines) + dropped == 20
    assert text.index("log lines dropped") < text.index("after")
