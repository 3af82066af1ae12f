"""Words shared by the tools' and the daemons' messages."""

from __future__ import annotations


def counted(count: int, noun: str) -> str:
    """ "1 task", "2 tasks", "0 nodes": a count and its noun, plural unless one."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"
