"""How many of something (open streams, connections in their handshake) each key (a user,
an address) holds at once, bounded per key: one count, given back as each ends, shared by
the API's stream bounds and the SSH proxy's."""

from __future__ import annotations


class Holdings:
    def __init__(self) -> None:
        # Only keys holding something have an entry.
        self._held: dict[str, int] = {}

    def take(self, key: str, limit: int) -> bool:
        """One more for ``key``, unless it holds ``limit`` already (False: not taken)."""
        held = self._held.get(key, 0)
        if held >= limit:
            return False
        self._held[key] = held + 1
        return True

    def give(self, key: str) -> None:
        """Give back one that ``take`` took."""
        held = self._held.pop(key) - 1
        if held:
            self._held[key] = held
