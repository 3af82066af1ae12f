"""Folders the daemons make for their logs, database and state.

``mkdir`` says "File exists" when a file stands where the last folder of the path should
be, which reads as if the folder were fine; what is wrong is that the path runs through a
file, as the system says for a file earlier in the path ("Not a directory").
"""

from __future__ import annotations

import errno
import os
from pathlib import Path


def make_folder(folder: Path, mode: int = 0o777) -> None:
    """``folder`` and its parents, made if missing; NotADirectoryError when a file stands
    in the way, wherever in the path."""
    try:
        folder.mkdir(parents=True, exist_ok=True, mode=mode)
    except FileExistsError:
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(folder)) from None
