"""The Runner strips Docker's frame headers itself so that it can read output in large
blocks: complete frames come out joined, an incomplete one waits for the rest."""

from __future__ import annotations

import struct

from hakuriver_runner.docker_logs import payloads


def _frame(data: bytes, stream: int = 1) -> bytes:
    return struct.pack(">BxxxL", stream, len(data)) + data


def test_complete_frames_come_out_joined_and_a_partial_one_waits() -> None:
    stream = _frame(b"one\n") + _frame(b"") + _frame(b"two\n") + _frame(b"three\n")
    buffer = bytearray(stream[:-3])
    assert payloads(buffer) == b"one\ntwo\n"
    assert payloads(buffer) == b""  # still incomplete
    buffer += stream[-3:]
    assert payloads(buffer) == b"three\n"
    assert buffer == bytearray()


def test_a_header_split_across_reads_waits_for_the_rest() -> None:
    frame = _frame(b"x" * 70_000)
    buffer = bytearray(frame[:5])
    assert payloads(buffer) == b""
    buffer += frame[5:]
    assert payloads(buffer) == b"x" * 70_000
