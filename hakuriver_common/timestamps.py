"""protobuf Timestamp to and from datetime, keeping 'unset' unset.

A Timestamp holds seconds from year 0001 to 9999 only if its sender checked it; one from
the wire may hold any int64 seconds and nanos, which ``ToDatetime`` refuses with a bare
ValueError (or OverflowError). ``from_timestamp`` turns that into an error naming the field.
"""

from __future__ import annotations

from datetime import UTC, datetime

from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

# What a datetime (and so the API) holds: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59Z.
MIN_SECONDS = -62_135_596_800
MAX_SECONDS = 253_402_300_799
MAX_NANOS = 999_999_999


def to_timestamp(value: datetime | None) -> Timestamp | None:
    if value is None:
        return None
    stamp = Timestamp()
    stamp.FromDatetime(value)
    return stamp


def check_timestamp(
    message: Message, field: str, error: type[Exception] = ValueError
) -> Timestamp | None:
    """``message.<field>`` (None when unset), once its seconds and nanos are known to make a
    datetime (``from_timestamp``'s range check, without building the datetime)."""
    if not message.HasField(field):
        return None
    stamp: Timestamp = getattr(message, field)
    if not (MIN_SECONDS <= stamp.seconds <= MAX_SECONDS and 0 <= stamp.nanos <= MAX_NANOS):
        raise error(
            f"{field}: must be between 0001-01-01T00:00:00Z and 9999-12-31T23:59:59Z "
            f"(seconds {MIN_SECONDS}..{MAX_SECONDS}, nanos 0..{MAX_NANOS}), got seconds "
            f"{stamp.seconds}, nanos {stamp.nanos}"
        )
    return stamp


def from_timestamp(
    message: Message, field: str, error: type[Exception] = ValueError
) -> datetime | None:
    """``message.<field>`` as an aware UTC datetime; None when unset. A value outside years
    1..9999 or with nanos outside 0..999,999,999 raises ``error`` (e.g. the Host's
    InvalidArgument) with a message that names the field:
    ``submitted_after: must be between 0001-01-01T00:00:00Z and 9999-12-31T23:59:59Z``."""
    stamp = check_timestamp(message, field, error)
    if stamp is None:
        return None
    try:
        return stamp.ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError) as exc:  # anything the range check above missed
        raise error(f"{field}: not a valid time ({exc})") from None
