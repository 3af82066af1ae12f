"""Host and runner log to a file when configured, else to the console (journald under
systemd). A log file is reopened when it was moved or removed, so logrotate (or any tool
that moves the file aside) rotates it without a restart or copytruncate."""

from __future__ import annotations

import logging
import logging.handlers
import sys
from pathlib import Path

from hakuriver_common.folders import make_folder


def setup_logging(log_file: Path | None, level: int = logging.INFO) -> None:
    handler: logging.Handler
    if log_file is not None:
        make_folder(log_file.expanduser().parent)
        handler = logging.handlers.WatchedFileHandler(log_file.expanduser())
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
