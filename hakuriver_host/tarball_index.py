"""Which environments have a tarball in the shared folder, re-read only when the folder
changes (one stat per question instead of a directory listing per submission)."""

from __future__ import annotations

from pathlib import Path


class TarballIndex:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._seen: tuple[int, frozenset[str]] | None = None

    def names(self) -> frozenset[str]:
        try:
            mtime = self.directory.stat().st_mtime_ns
        except OSError:
            return frozenset()
        if self._seen is None or self._seen[0] != mtime:
            found = frozenset(t.stem.rsplit("-", 1)[0] for t in self.directory.glob("*-*.tar"))
            self._seen = (mtime, found)
        return self._seen[1]
