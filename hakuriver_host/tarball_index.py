"""Which environments have a tarball in the shared folder.

Asked on the event loop at every submission and answered from memory: the folder is read
off the loop, every few seconds, right after the Host removes a tarball, and when a
submission names an environment not known yet (one just made, or copied in by hand), so a
hung or slow shared mount never stalls the Host (a submission waits at most MISS_SECONDS).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

log = logging.getLogger(__name__)

REFRESH_SECONDS = 2.0
# How long the Host's start waits for the first reading before it serves without it.
FIRST_READ_SECONDS = 10.0
# How long a submission naming an environment not known yet waits for a new reading.
MISS_SECONDS = 2.0


class TarballIndex:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._names: frozenset[str] = frozenset()
        self._read = asyncio.Event()

    def names(self) -> frozenset[str]:
        return self._names

    def refresh(self) -> None:
        """Read the folder again; blocking: call off the event loop."""
        try:
            self._names = frozenset(
                t.stem.rsplit("-", 1)[0] for t in self.directory.glob("*-*.tar")
            )
        except OSError as exc:
            log.warning("cannot read the environment tarballs in %s: %s", self.directory, exc)

    async def read_again(self) -> None:
        """Refresh now, waiting at most MISS_SECONDS: for a name not (yet) known."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(asyncio.to_thread(self.refresh)), MISS_SECONDS)

    async def keep_fresh(self) -> None:
        """Refresh until cancelled (a refresh stuck on a hung mount holds one thread and
        delays only the next refresh)."""
        while True:
            await asyncio.to_thread(self.refresh)
            self._read.set()
            await asyncio.sleep(REFRESH_SECONDS)

    async def first_read(self) -> None:
        """Wait for the first reading, for at most FIRST_READ_SECONDS."""
        try:
            await asyncio.wait_for(self._read.wait(), FIRST_READ_SECONDS)
        except TimeoutError:
            log.warning(
                "the shared folder %s did not answer in %.0f s: serving without its tarballs "
                "until it does",
                self.directory,
                FIRST_READ_SECONDS,
            )
