"""Forgetting old rows every hour (``timing.forget_audit_days``, ``timing.forget_tasks_days``):
the same loop for the audit log and for ended tasks."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime

from hakuriver_host.models import cutoff_before
from hakuriver_host.store import log_refusal

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
    A failure is put off to the next hour, said on ``log`` (``log_refusal``: one line for
    the database away for now, else a traceback). ``so_far``: what a run had done when it
    stopped, said in that line."""
    while days > 0:
        try:
            await forget(cutoff_before(days))
        except Exception as exc:
            done = f" (so far: {so_far()})" if so_far is not None else ""
            log_refusal(log, exc, "forgetting %s put off%s", what, done)
        await asyncio.sleep(FORGET_EVERY_SECONDS)
