"""Hypothesis strategies typed from protobuf descriptors: any message of a given type, with
hostile values, and corrupt encodings of it.

``messages(descriptor)`` draws a message of that type: every field may be set or not, each
scalar with its type's edge values mixed into ordinary ones (ints at 0, +-1 and their
type's limits and a few huge claims; floats NaN and infinities; strings empty, with NUL,
U+202E, emoji, path traversal, format specifiers, and long ones bounded at
``LONG_TEXT``), enums with values the enum lacks, repeated fields of a few elements (some
long), maps, oneofs (one member chosen), nested messages to ``MAX_DEPTH`` and Timestamps
outside years 1..9999. ``hints`` (field name -> strategy) mix realistic values in (task
ids that exist, hostnames that are registered) so requests get past the first lookups.

``encodings(descriptor)`` draws request bytes: a valid message's encoding, or a corrupt
one (random bytes, a valid encoding truncated or with bits flipped, a varint or length
that overflows, unmatched groups, deep nesting, invalid UTF-8 in a string field).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from hypothesis import strategies as st

MAX_DEPTH = 3
MAX_REPEATED = 4
LONG_TEXT = 100_000
MANY = 1_000

INT32 = (0, 1, -1, 2, 7, 100, 2**31 - 1, -(2**31), 2**31 - 2, 65_536, 5_000_000)
INT64 = (0, 1, -1, 2, 4096, 2**31 - 1, 2**32, 2**40, 2**62, 2**63 - 1, -(2**63), -(2**40))
UINT32 = (0, 1, 2**31, 2**32 - 1)
UINT64 = (0, 1, 2**63, 2**64 - 1)
FLOATS = (0.0, -0.0, 1.0, -1.0, 1e308, -1e308, float("inf"), float("-inf"), float("nan"), 5e-324)
TEXT = (
    "",
    " ",
    "\x00",
    "a\x00b",
    "\u202e",
    "abc\u202edef",
    "\U0001f680",
    "\U0001f469\u200d\U0001f4bb",
    "../../../../tmp/x",
    "/etc/passwd",
    "%s%n%x",
    "{}{0}",
    "${HOME}",
    "' OR 1=1 --",
    "\n\r\t",
    "*",
    "-",
    "--help",
    "admin",
    "hakuriver-base",
    "512M",
    "-1",
    "9" * 40,
    "1e400",
    "\u00e9" * 1000,
    "x" * LONG_TEXT,
)
SHORT_TEXT = (*(t for t in TEXT if len(t) <= 64), "node-1", "a" * 64)
BYTES = (b"", b"\x00", b"\xff" * 16, b"\x00" * 4096, bytes(range(256)), b"x" * LONG_TEXT)
SHORT_BYTES = tuple(b for b in BYTES if len(b) <= 256)
# The well-known Timestamp: in range, at the edges of years 1..9999 and beyond them.
TIMESTAMP_SECONDS = (
    0,
    1_700_000_000,
    -62_135_596_800,
    -62_135_596_801,
    253_402_300_799,
    253_402_300_800,
    2**62,
    -(2**62),
    2**63 - 1,
    -(2**63),
)
TIMESTAMP_NANOS = (0, 1, 999_999_999, 1_000_000_000, -1, 2**31 - 1, -(2**31))

_T = FieldDescriptor
INTEGERS: dict[int, tuple[tuple[int, ...], int, int]] = {
    _T.TYPE_INT32: (INT32, -(2**31), 2**31 - 1),
    _T.TYPE_SINT32: (INT32, -(2**31), 2**31 - 1),
    _T.TYPE_SFIXED32: (INT32, -(2**31), 2**31 - 1),
    _T.TYPE_INT64: (INT64, -(2**63), 2**63 - 1),
    _T.TYPE_SINT64: (INT64, -(2**63), 2**63 - 1),
    _T.TYPE_SFIXED64: (INT64, -(2**63), 2**63 - 1),
    _T.TYPE_UINT32: (UINT32, 0, 2**32 - 1),
    _T.TYPE_FIXED32: (UINT32, 0, 2**32 - 1),
    _T.TYPE_UINT64: (UINT64, 0, 2**64 - 1),
    _T.TYPE_FIXED64: (UINT64, 0, 2**64 - 1),
}

Hints = Mapping[str, st.SearchStrategy[Any]]


def message_class(descriptor: Descriptor) -> type[Message]:
    return message_factory.GetMessageClass(descriptor)


def _integers(edges: tuple[int, ...], low: int, high: int) -> st.SearchStrategy[int]:
    return st.one_of(
        st.sampled_from(edges),
        st.integers(-3, 100).filter(lambda v: low <= v <= high),
        st.integers(low, high),
    )


def _scalar(field: FieldDescriptor) -> st.SearchStrategy[Any]:
    kind = field.type
    if kind in INTEGERS:
        return _integers(*INTEGERS[kind])
    if kind == _T.TYPE_BOOL:
        return st.booleans()
    if kind in (_T.TYPE_DOUBLE, _T.TYPE_FLOAT):
        width = 32 if kind == _T.TYPE_FLOAT else 64
        return st.one_of(st.sampled_from(FLOATS), st.floats(width=width))
    if kind == _T.TYPE_STRING:
        return st.one_of(st.sampled_from(TEXT), st.text(max_size=40))
    if kind == _T.TYPE_BYTES:
        return st.one_of(st.sampled_from(BYTES), st.binary(max_size=256))
    if kind == _T.TYPE_ENUM:
        known = [v.number for v in field.enum_type.values]
        unknown = [max(known) + 1, 99, -1, 2**31 - 1, -(2**31)]
        return st.one_of(st.sampled_from(known), st.sampled_from(unknown))
    raise TypeError(f"no strategy for field {field.full_name} of type {kind}")


def _value(field: FieldDescriptor, depth: int, hints: Hints) -> st.SearchStrategy[Any]:
    """One value of the field (an element, for a repeated field)."""
    if field.type in (_T.TYPE_MESSAGE, _T.TYPE_GROUP):
        value = messages(field.message_type, depth - 1, hints)
    else:
        value = _scalar(field)
    hint = hints.get(field.name)
    return value if hint is None else st.one_of(hint, value)


def _is_map(field: FieldDescriptor) -> bool:
    return (
        field.type == _T.TYPE_MESSAGE
        and field.is_repeated
        and field.message_type.GetOptions().map_entry
    )


def _repeated(field: FieldDescriptor, depth: int, hints: Hints) -> st.SearchStrategy[list[Any]]:
    """A few elements; for scalars sometimes ``MANY`` (a claimed count), made of two
    drawn values (a thousand draws would overrun hypothesis's buffer) and, for text, of
    short ones (a thousand long strings would only test the message size limit)."""
    few = st.lists(_value(field, depth, hints), max_size=MAX_REPEATED)
    if field.type in (_T.TYPE_MESSAGE, _T.TYPE_GROUP):
        return few
    element = _value(field, depth, hints)
    if field.type in (_T.TYPE_STRING, _T.TYPE_BYTES):
        element = st.sampled_from(SHORT_TEXT if field.type == _T.TYPE_STRING else SHORT_BYTES)
    many = st.tuples(element, element).map(lambda pair: list(pair) * (MANY // 2))
    return st.one_of(few, few, many)


_CACHE: dict[tuple[str, int, int], st.SearchStrategy[Message]] = {}


def messages(
    descriptor: Descriptor, depth: int = MAX_DEPTH, hints: Hints | None = None
) -> st.SearchStrategy[Message]:
    """Any message of ``descriptor``'s type, nested messages to ``depth`` levels."""
    hints = hints or {}
    key = (descriptor.full_name, depth, id(hints))
    found = _CACHE.get(key)
    if found is None:
        found = _CACHE[key] = st.deferred(lambda: _messages(descriptor, depth, hints))
    return found


def _messages(descriptor: Descriptor, depth: int, hints: Hints) -> st.SearchStrategy[Message]:
    cls = message_class(descriptor)
    if descriptor.full_name == "google.protobuf.Timestamp":
        return st.builds(
            cls,
            seconds=st.one_of(st.sampled_from(TIMESTAMP_SECONDS), st.integers(0, 2**34)),
            nanos=st.one_of(st.sampled_from(TIMESTAMP_NANOS), st.integers(0, 999_999_999)),
        )
    if depth <= 0:
        return st.just(cls())
    fields: dict[str, st.SearchStrategy[Any]] = {}
    for field in descriptor.fields:
        if _is_map(field):
            entry = field.message_type
            key, value = entry.fields_by_name["key"], entry.fields_by_name["value"]
            fields[field.name] = st.dictionaries(
                _value(key, depth, hints), _value(value, depth, hints), max_size=MAX_REPEATED
            )
        elif field.is_repeated:
            fields[field.name] = _repeated(field, depth, hints)
        else:
            fields[field.name] = _value(field, depth, hints)
    # One member of each oneof at most (setting several keeps only the last anyway).
    oneofs = {
        oneof.name: [f.name for f in oneof.fields]
        for oneof in descriptor.oneofs
        if not (len(oneof.fields) == 1 and oneof.fields[0].name.startswith(oneof.name[1:]))
    }

    @st.composite
    def draw_message(draw: st.DrawFn) -> Message:
        message = cls()
        skip: set[str] = set()
        for members in oneofs.values():
            chosen = draw(st.sampled_from([None, *members]))
            skip.update(m for m in members if m != chosen)
        for field in descriptor.fields:
            if field.name in skip or not draw(st.booleans()):
                continue
            _assign(message, field, draw(fields[field.name]))
        return message

    return draw_message()


def _assign(message: Message, field: FieldDescriptor, value: Any) -> None:
    target = getattr(message, field.name)
    if _is_map(field):
        message_values = field.message_type.fields_by_name["value"].type == _T.TYPE_MESSAGE
        for key, item in value.items():
            if message_values:
                target[key].CopyFrom(item)
            else:
                target[key] = item
    elif field.is_repeated:
        if field.type == _T.TYPE_MESSAGE:
            for item in value:
                target.add().CopyFrom(item)
        else:
            target.extend(value)
    elif field.type == _T.TYPE_MESSAGE:
        target.CopyFrom(value)
    else:
        setattr(message, field.name, value)


# ----- corrupt encodings ------------------------------------------------------------------


def _varint(value: int) -> bytes:
    out = bytearray()
    value &= (1 << 64) - 1
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _tag(number: int, wire_type: int) -> bytes:
    return _varint(number << 3 | wire_type)


def hostile_encodings(descriptor: Descriptor) -> list[bytes]:
    """Encodings a parser must refuse (or survive): each aimed at the message's fields."""
    found = [
        b"\x08" + b"\xff" * 10 + b"\x01",  # a varint of 11 bytes
        _tag(1, 2) + _varint(2**31),  # a length far past the end
        _tag(1, 2) + b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01",  # a length of 2^64-1
        _tag(1, 3) * 200,  # groups that never end
        _tag(1, 4),  # an end-group with no start
        _tag(1, 6),  # wire type 6 does not exist
        _tag(0, 0) + b"\x00",  # field number 0
        _tag(2**29 - 1, 5) + b"\x00\x00\x00",  # a fixed32 cut short
    ]
    for field in descriptor.fields:
        if field.type == _T.TYPE_STRING:
            found.append(_tag(field.number, 2) + b"\x03\xff\xfe\xfd")  # invalid UTF-8
        if field.type == _T.TYPE_MESSAGE:
            nested = b""
            for _ in range(150):  # deeper than the parser's recursion limit
                nested = _tag(field.number, 2) + _varint(len(nested)) + nested
            found.append(nested)
        if field.type in (_T.TYPE_INT32, _T.TYPE_INT64, _T.TYPE_ENUM):
            found.append(_tag(field.number, 2) + b"\x01\x00")  # the wrong wire type
    return found


@st.composite
def _truncated(draw: st.DrawFn, valid: st.SearchStrategy[bytes]) -> bytes:
    data = draw(valid.filter(lambda b: len(b) > 1))
    return data[: draw(st.integers(1, len(data) - 1))]


@st.composite
def _bit_flipped(draw: st.DrawFn, valid: st.SearchStrategy[bytes]) -> bytes:
    data = bytearray(draw(valid.filter(bool)))
    for _ in range(draw(st.integers(1, 3))):
        bit = draw(st.integers(0, len(data) * 8 - 1))
        data[bit // 8] ^= 1 << (bit % 8)
    return bytes(data)


def corrupt(descriptor: Descriptor, hints: Hints | None = None) -> st.SearchStrategy[bytes]:
    """Bytes that are mostly not a valid encoding of ``descriptor`` (some happen to be)."""
    valid = messages(descriptor, hints=hints).map(lambda m: m.SerializeToString())
    return st.one_of(
        st.binary(min_size=1, max_size=512),
        _truncated(valid),
        _bit_flipped(valid),
        st.sampled_from(hostile_encodings(descriptor)),
    )


def encodings(
    descriptor: Descriptor, hints: Hints | None = None
) -> st.SearchStrategy[tuple[str, bytes]]:
    """("valid", a message's bytes) or, one time in three, ("corrupt", bytes that are
    probably not one)."""
    valid = messages(descriptor, hints=hints).map(lambda m: m.SerializeToString())
    as_valid = valid.map(lambda data: ("valid", data))
    return st.one_of(as_valid, as_valid, corrupt(descriptor, hints).map(lambda d: ("corrupt", d)))
