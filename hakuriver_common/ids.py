"""Time-ordered 64-bit task ids, printed as decimal strings.

Layout: 41 bits of milliseconds since 2024-01-01 UTC, 10 bits of generator id, 12 bits of
sequence. Ids from one generator strictly increase, even if the clock steps back.
"""

from __future__ import annotations

import threading
import time

EPOCH_MS = 1_704_067_200_000
GENERATOR_BITS = 10
SEQUENCE_BITS = 12
MAX_SEQUENCE = (1 << SEQUENCE_BITS) - 1


class IdGenerator:
    def __init__(self, generator_id: int = 0, clock_ms: object = None) -> None:
        if not 0 <= generator_id < (1 << GENERATOR_BITS):
            raise ValueError(f"generator_id must be in [0, {1 << GENERATOR_BITS})")
        self._generator_id = generator_id
        self._clock = clock_ms or (lambda: time.time_ns() // 1_000_000)
        self._last_ms = -1
        self._sequence = 0
        self._lock = threading.Lock()

    def next_id(self) -> int:
        return self.next_ids(1)[0]

    def next_ids(self, count: int) -> list[int]:
        """``count`` consecutive ids under one lock: a job array's thousands cost a few
        range steps, not a call each."""
        ids: list[int] = []
        with self._lock:
            now = max(int(self._clock()) - EPOCH_MS, self._last_ms)  # type: ignore[operator]
            sequence = self._sequence + 1 if now == self._last_ms else 0
            while len(ids) < count:
                if sequence > MAX_SEQUENCE:
                    now += 1
                    sequence = 0
                take = min(count - len(ids), MAX_SEQUENCE + 1 - sequence)
                base = (now << (GENERATOR_BITS + SEQUENCE_BITS)) | (
                    self._generator_id << SEQUENCE_BITS
                )
                ids.extend(range(base + sequence, base + sequence + take))
                sequence += take
            self._last_ms = now
            self._sequence = sequence - 1
        return ids


def id_timestamp_ms(task_id: int) -> int:
    """Unix milliseconds at which an id was generated."""
    return (task_id >> (GENERATOR_BITS + SEQUENCE_BITS)) + EPOCH_MS


def parse_task_id(text: str) -> int:
    """Parse a decimal task id; ValueError names the problem."""
    stripped = text.strip()
    if not stripped.isdigit():
        raise ValueError(f"task id must be a decimal integer, got {text!r}")
    if len(stripped.lstrip("0")) > 19:  # before int(), which refuses 4,300 digits its own way
        raise ValueError(f"task id of {len(stripped):,} digits is out of range")
    value = int(stripped)
    if value <= 0 or value >= 1 << 63:
        raise ValueError(f"task id {text} is out of range")
    return value
