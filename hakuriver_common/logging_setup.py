"""Host and runner log to a file when configured, else to the console."""

from __future__ import annotations

import logging
import sys
from pathlib import Path


def setup_logging(log_file: Path | None, level: int = logging.INFO) -> None:
    handler: logging.Handler
    if log_file is not None:
        log_file.expanduser().parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(log_file.expanduser())
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
