"""The Runner strips Docker's frame headers itself so that it can read output in large
blocks, stdout and stderr from one stream: complete frames of one output in a row come out
joined, in the order written, and an incomplete one waits for the rest."""

from __future__ import annotations

import struct

from hakuriver_runner.backend import LogFollow, emit_past
from hakuriver_runner.docker_logs import payloads

STDOUT, STDERR = 1, 2


def _frame(data: bytes, stream: int = STDOUT) -> bytes:
    return struct.pack(">BxxxL", stream, len(data)) + data


def test_complete_frames_come_out_joined_and_a_partial_one_waits() -> None:
    stream = _frame(b"one\n") + _frame(b"") + _frame(b"two\n") + _frame(b"three\n")
    buffer = bytearray(stream[:-3])
    assert payloads(buffer) == [(0, b"one\ntwo\n")]
    assert payloads(buffer) == []  # still incomplete
    buffer += stream[-3:]
    assert payloads(buffer) == [(0, b"three\n")]
    assert buffer == bytearray()


def test_a_header_split_across_reads_waits_for_the_rest() -> None:
    frame = _frame(b"x" * 70_000, STDERR)
    buffer = bytearray(frame[:5])
    assert payloads(buffer) == []
    buffer += frame[5:]
    assert payloads(buffer) == [(1, b"x" * 70_000)]


def test_stdout_and_stderr_keep_their_order_and_their_own_offsets() -> None:
    stream = (
        _frame(b"a", STDOUT)
        + _frame(b"b", STDOUT)
        + _frame(b"E1", STDERR)
        + _frame(b"c", STDOUT)
        + _frame(b"E2", STDERR)
    )
    assert payloads(bytearray(stream)) == [(0, b"ab"), (1, b"E1"), (0, b"c"), (1, b"E2")]
    got: dict[int, list[tuple[int, bytes]]] = {0: [], 1: []}
    # Resumed where the Host has them: stdout from byte 1, stderr from byte 3.
    sizes = emit_past(
        payloads(bytearray(stream)),
        (1, 3),
        (lambda o, d: got[0].append((o, d)), lambda o, d: got[1].append((o, d))),
        LogFollow(),
    )
    assert sizes == (3, 4)
    assert got == {0: [(1, b"b"), (2, b"c")], 1: [(3, b"2")]}
