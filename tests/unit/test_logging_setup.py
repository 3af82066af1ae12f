"""A daemon's log file survives rotation: moved aside (as logrotate does), the next record
goes to a new file at the configured path, the old one keeps what it had."""

from __future__ import annotations

import logging
from pathlib import Path

from hakuriver_common.logging_setup import setup_logging


def test_a_moved_log_file_is_reopened(tmp_path: Path, restored_logging: None) -> None:
    path = tmp_path / "logs" / "host.log"
    setup_logging(path)
    log = logging.getLogger("hakuriver_host.test")
    log.info("before rotation")
    rotated = path.with_name("host.log.1")
    path.rename(rotated)
    log.info("after rotation")
    assert "before rotation" in rotated.read_text()
    assert "after rotation" not in rotated.read_text()
    assert "after rotation" in path.read_text()
