"""Job arrays: Slurm's ``--array`` syntax, and what an array task's index becomes.

``1-1000%10`` is indices 1 to 1000, at most 10 holding resources at once; ``0-15:4`` is
0, 4, 8, 12; ``1,3,5-7`` is 1, 3, 5, 6, 7. The Host replaces the variables below in an
array task's command, arguments and mount paths, and sets them in its environment, so the
same text works with a shell (which would expand them itself) and without one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from hakuriver_common import limits
from hakuriver_common.proto.hakuriver.v1 import task_service_pb2 as tpb

SYNTAX = "START-END[:STEP][,...][%MAX_RUNNING]"
ARRAY_ID_VAR = "HAKURIVER_ARRAY_ID"
ARRAY_INDEX_VAR = "HAKURIVER_ARRAY_INDEX"

_RANGE = re.compile(r"([0-9]+)(?:-([0-9]+)(?::([0-9]+))?)?")  # ASCII digits only
_VARIABLE = re.compile(r"\$(?:\{(HAKURIVER_ARRAY_(?:ID|INDEX))\}|(HAKURIVER_ARRAY_(?:ID|INDEX))\b)")


@dataclass(frozen=True)
class ArraySpec:
    indices: tuple[int, ...]
    max_running: int = 0

    def pb(self) -> tpb.TaskArray:
        return tpb.TaskArray(indices=self.indices, max_running=self.max_running)


# The most a request's ``max_running`` (an int32) holds.
MAX_CAP = 2**31 - 1


def _number(text: str, what: str, whole: str, most: int = limits.MAX_ARRAY_INDEX) -> int:
    """``text`` (ASCII digits) as a number up to ``most``; its length is checked first, so
    a thousand digits are refused by this message, not by Python's limit on conversions."""
    digits = text.lstrip("0") or "0"
    if len(digits) > len(str(most)) or int(digits) > most:
        shown = text if len(text) <= 20 else f"of {len(text):,} digits"
        raise ValueError(f"--array {whole!r}: {what} {shown} is above {most:,}")
    return int(digits)


def parse_array(text: str) -> ArraySpec:
    """Parse one --array value; ValueError names what is malformed."""
    whole = text if len(text) <= 60 else f"{text[:40]}... ({len(text):,} characters)"
    ranges, sep, cap = text.partition("%")
    max_running = 0
    if sep:
        if not (cap.isascii() and cap.isdigit()) or not cap.strip("0"):  # none, or 0
            raise ValueError(f"--array {whole!r}: expected a positive number after '%'")
        max_running = _number(cap, "the cap", whole, MAX_CAP)
    indices: list[int] = []
    for part in ranges.split(","):
        match = _RANGE.fullmatch(part)
        if match is None:
            raise ValueError(f"--array {whole!r}: {part!r} is not N, N-M or N-M:STEP ({SYNTAX})")
        start = _number(match[1], "index", whole)
        end = _number(match[2], "index", whole) if match[2] else start
        step = _number(match[3], "step", whole) if match[3] else 1
        if end < start or step < 1:
            raise ValueError(f"--array {whole!r}: {part!r} must go upwards by at least 1")
        if len(indices) + (end - start) // step + 1 > limits.MAX_ARRAY_TASKS:
            raise ValueError(f"--array {whole!r}: more than {limits.MAX_ARRAY_TASKS:,} tasks")
        indices.extend(range(start, end + 1, step))
    if len(set(indices)) != len(indices):
        raise ValueError(f"--array {whole!r}: an index is given twice")
    return ArraySpec(tuple(sorted(indices)), max_running)


def substitute(text: str, array_id: int, index: int) -> str:
    """``text`` with the array's variables replaced by their values."""
    if "$" not in text:
        return text
    values = {ARRAY_ID_VAR: str(array_id), ARRAY_INDEX_VAR: str(index)}
    return _VARIABLE.sub(lambda m: values[m[1] or m[2]], text)
