"""Turns per caller: at most ``limit`` unary calls of one caller are served at once; the
rest wait for a turn, in the order they came.

The Host serves every call on one event loop, first come first served at each step. One
user's script with 64 calls in flight then makes everybody's call wait behind its 64 (a
lone task's submit took ~40 ms while a sweep of single submits ran). With turns, the
sweep's calls past the limit wait here, costing the loop nothing, and another user's call
is served next to at most ``limit`` of them. The sweep itself goes no slower: 16 turns keep
the Host as busy as 64 did. Which calls take turns is the interceptor's to say.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from dataclasses import dataclass, field


@dataclass
class _Line:
    serving: int = 0
    waiting: deque[asyncio.Future[None]] = field(default_factory=deque)


# Calls that take no turn: they mostly wait for a Runner or for Docker (a kill for its
# grace and the Runner's confirmation, an environment's container), not for the Host's loop,
# and holding a turn through that wait would hold back the caller's other calls.
UNTURNED = frozenset(
    f"/hakuriver.v1.{method}"
    for method in (
        "TaskService/KillTask",
        "TaskService/PauseTask",
        "TaskService/ResumeTask",
        "TaskService/KillBatch",
        "TaskService/PauseBatch",
        "TaskService/ResumeBatch",
        "EnvironmentService/CreateContainer",
        "EnvironmentService/StartContainer",
        "EnvironmentService/StopContainer",
        "EnvironmentService/DeleteContainer",
    )
)


class CallerTurns:
    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"CallerTurns: limit must be at least 1, got {limit}")
        self.limit = limit
        # Only callers with a call served or waiting have a line.
        self._lines: dict[str, _Line] = {}

    def waiting(self) -> int:
        """Calls waiting for a turn, every caller's."""
        return sum(len(line.waiting) for line in self._lines.values())

    async def take(self, caller: str) -> bool:
        """Return once one of ``caller``'s turns is this call's (True if it had to wait for
        it); ``give_back`` it after."""
        line = self._lines.get(caller)
        if line is None:
            line = self._lines[caller] = _Line()
        if line.serving < self.limit and not line.waiting:
            line.serving += 1
            return False
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        line.waiting.append(turn)
        try:
            await turn
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():
                self.give_back(caller)  # handed over just as the call was cancelled
            else:
                with contextlib.suppress(ValueError):
                    line.waiting.remove(turn)
            raise
        return True

    def give_back(self, caller: str) -> None:
        """End a turn ``take`` gave: it passes to the caller's next waiting call."""
        line = self._lines[caller]
        while line.waiting:
            turn = line.waiting.popleft()
            if not turn.done():
                turn.set_result(None)
                return
        line.serving -= 1
        if line.serving == 0:
            del self._lines[caller]
