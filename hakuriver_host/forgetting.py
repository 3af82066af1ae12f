"""Forgetting old rows every hour (``timing.forget_audit_days``, ``timing.forget_tasks_days``):
the same loop for the audit log and for ended tasks."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime

from hakuriver_host.models import cutoff_before
from hakuriver_host.store import database_unavailable

# How often old rows are looked for.
FORGET_EVERY_SECONDS = 3600.0


async def forget_every_hour(
    days: float,
    forget: Callable[[datetime], Awaitable[object]],
    what: str,
    log: logging.Logger,
    so_far: Callable[[], str] | None = None,
) -> None:
    """``forget`` what is older than ``days`` now and then every hour, forever (0: never).
    A database away for now (``database_unavailable``) is no bug: one line on ``log``
    saying it is put off, and the next hour tries again; anything else is logged with its
    traceback. ``so_far``: what a run had done when it stopped, said in those lines."""
    while days > 0:
        try:
            await forget(cutoff_before(days))
        except Exception as exc:
            why = database_unavailable(exc)
            done = f" (so far: {so_far()})" if so_far is not None else ""
            if why is None:
                log.exception("could not forget %s%s", what, done)
            else:
                log.warning("forgetting %s put off%s: %s", what, done, why)
        await asyncio.sleep(FORGET_EVERY_SECONDS)
