"""Log lines an outsider can trigger, at most one per cause per interval.

A client that sends a thousand corrupt requests, or a request that hits the same bug a
thousand times, must not write a thousand lines (or tracebacks) to the Host's log. A
``LimitedLog`` logs the first occurrence of each cause at once; later occurrences within
``interval`` seconds are only counted, and when the interval is over one summary line
gives the count ("... (and 1130 more like it in the last 60 s)"). The summary is written
by a timer on the running event loop, or at the next occurrence of any cause, or by
``flush`` (the Host calls it when it stops); so nothing counted is lost.

Causes are keys chosen by the caller (a method and the message type, an exception's type
and where it was raised); their number is bounded (``max_causes``): past it, the oldest
cause whose interval is over is forgotten, and if none is, new causes share one
"other causes" counter.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

# Where a line goes: (cause, level, message, args); by default the logger's log.
Emit = Callable[[Hashable, int, str, tuple[Any, ...]], None]
DEFAULT_INTERVAL = 60.0
DEFAULT_MAX_CAUSES = 1024
OVERFLOW: Hashable = ("log_limits", "other causes")


@dataclass
class _Cause:
    since: float
    level: int
    message: str
    suppressed: int = 0
    args: tuple[Any, ...] = field(default_factory=tuple)


class LimitedLog:
    """One logger's lines, limited per cause; ``emit`` writes them elsewhere (the audit
    log's rows). ``clock`` is for tests."""

    def __init__(
        self,
        logger: logging.Logger,
        interval: float = DEFAULT_INTERVAL,
        max_causes: int = DEFAULT_MAX_CAUSES,
        clock: Callable[[], float] = time.monotonic,
        emit: Emit | None = None,
    ) -> None:
        self.logger = logger
        self._emit = emit
        self.interval = interval
        self.max_causes = max_causes
        self.clock = clock
        self._causes: dict[Hashable, _Cause] = {}
        self._timer: asyncio.TimerHandle | None = None

    def log(
        self,
        cause: Hashable,
        level: int,
        message: str,
        *args: Any,
        exc_info: BaseException | None = None,
    ) -> bool:
        """Log ``message % args`` if ``cause`` was not logged in the current interval,
        else count it; True when it was logged. ``exc_info`` (a traceback) goes with the
        logged line only, never with the summaries."""
        now = self.clock()
        self._summarise(now)
        known = self._causes.get(cause)
        if known is not None:
            known.suppressed += 1
            self._arm()
            return False
        if len(self._causes) >= self.max_causes:
            self._forget(now)
        if len(self._causes) >= self.max_causes:
            cause = OVERFLOW
            known = self._causes.get(cause)
            if known is not None:
                known.suppressed += 1
                self._arm()
                return False
            message, args = "%s", ("more log lines of other causes",)
        self._causes[cause] = _Cause(now, level, message, args=args)
        if self._emit is None:
            self.logger.log(level, message, *args, exc_info=exc_info)
        else:
            self._emit(cause, level, message, args)
        return True

    def flush(self) -> None:
        """Write the summary of every cause with occurrences not yet reported."""
        self._summarise(None)

    def _summarise(self, now: float | None) -> None:
        """Summaries for the causes whose interval is over (every cause when ``now`` is
        None); a cause reported in a summary starts a new interval, one without anything
        to report is forgotten."""
        for key, cause in list(self._causes.items()):
            if now is not None and now - cause.since < self.interval:
                continue
            if cause.suppressed:
                seconds = (now if now is not None else self.clock()) - cause.since
                message = cause.message + " (and %d more like it in the last %.0f s)"
                args = (*cause.args, cause.suppressed, seconds)
                if self._emit is None:
                    self.logger.log(cause.level, message, *args)
                else:
                    self._emit(key, cause.level, message, args)
                cause.suppressed = 0
                cause.since = now if now is not None else self.clock()
            else:
                del self._causes[key]

    def _forget(self, now: float) -> None:
        for key, cause in list(self._causes.items()):
            if now - cause.since >= self.interval and not cause.suppressed:
                del self._causes[key]

    def _arm(self) -> None:
        """Make sure a summary is written when the interval ends even if nothing else
        happens (a timer on the running loop; without one, the next call or ``flush``)."""
        if self._timer is not None and not self._timer.cancelled():
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        oldest = min(c.since for c in self._causes.values() if c.suppressed)
        delay = max(0.0, oldest + self.interval - self.clock())
        self._timer = loop.call_later(delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._summarise(self.clock())
        if any(c.suppressed for c in self._causes.values()):
            self._arm()

    def close(self) -> None:
        """Flush and stop the timer (the Host stops)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.flush()
