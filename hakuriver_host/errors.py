"""Domain errors of the Host core: what went wrong, in words that name the field.

The core raises these without knowing about gRPC; ``interceptors.py`` maps each class to
its status code in one place.
"""

from __future__ import annotations

from hakuriver_common.limits import truncated


class ApiError(Exception):
    """A request the Host refuses; ``message`` is shown to the caller as is."""

    def __init__(self, message: str) -> None:
        message = truncated(message)
        super().__init__(message)
        self.message = message


class InvalidArgument(ApiError):
    """The request itself is wrong (a bad value, a missing field)."""


def at_most(field: str, value: int, limit: int, unit: str = "") -> None:
    """InvalidArgument naming ``field`` and its limit when ``value`` is over it."""
    if value > limit:
        raise InvalidArgument(f"{field}: at most {limit}{unit} allowed, got {value}{unit}")


def between(field: str, value: int, low: int, high: int, which: str = "") -> None:
    """InvalidArgument naming ``field`` and the range it takes (``which``: for what, and
    what a bound means) when ``value`` is outside it."""
    if not low <= value <= high:
        raise InvalidArgument(f"{field}: must be between {low} and {high}{which}, got {value}")


class NotFound(ApiError):
    """The request names a task, node or environment that does not exist."""


class Hidden(NotFound):
    """Something exists but the caller may not see it (another user's task): answered
    exactly as a missing one, and audited as a refusal."""


class FailedPrecondition(ApiError):
    """The request is fine but the thing it acts on is in the wrong state."""


class Unavailable(ApiError):
    """A part the request needs (a Runner, Docker) cannot be reached now; retry later."""


class Unauthenticated(ApiError):
    """The call carries no valid credential (none, unknown, expired or revoked)."""


class PermissionDenied(ApiError):
    """The caller is known but their role does not allow this; the message names what."""


class WatcherBehind(ApiError):
    """A stream's reader fell too far behind the changes it watches; it was ended."""


class TooManyStreams(ApiError):
    """The caller holds as many streams open as ``auth.streams_per_caller`` allows."""
