"""Memory sizes as users write them: 512M, 4G (1000-based), 2Gi (1024-based)."""

from __future__ import annotations

import re

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgtp]?)(i?)b?\s*$", re.IGNORECASE)
_POWERS = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4, "p": 5}


def parse_size(text: str) -> int:
    """Bytes in ``text``; ValueError with the accepted forms otherwise."""
    match = _SIZE_RE.match(text)
    if not match:
        raise ValueError(
            f"cannot parse size {text!r}: use a number with an optional K, M, G or T suffix "
            "(1000-based; Ki, Mi, Gi, Ti are 1024-based), e.g. 512M or 4G"
        )
    number, unit, binary = match.groups()
    base = 1024 if binary else 1000
    if binary and not unit:
        raise ValueError(f"cannot parse size {text!r}: 'i' needs a unit such as Mi or Gi")
    return int(float(number) * base ** _POWERS[unit.lower()])


def format_size(num_bytes: int) -> str:
    """Short 1000-based rendering, e.g. 4.0G."""
    value = float(num_bytes)
    for unit in ("B", "K", "M", "G", "T"):
        if abs(value) < 1000 or unit == "T":
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1000
    raise AssertionError("unreachable")
