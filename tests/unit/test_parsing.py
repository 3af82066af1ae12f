"""Sizes, targets, mounts, task ids and reconnect backoff."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, strategies as st

from hakuriver_common.ids import EPOCH_MS, IdGenerator, id_timestamp_ms, parse_task_id
from hakuriver_common.mounts import MountSpec, parse_mount
from hakuriver_common.targets import TargetSpec, format_target, parse_target
from hakuriver_common.units import format_size, parse_size
from hakuriver_runner.backoff import backoff_delay


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("512M", 512_000_000),
        ("4G", 4_000_000_000),
        ("4g", 4_000_000_000),
        ("1.5G", 1_500_000_000),
        ("2Gi", 2 * 1024**3),
        ("100", 100),
        ("10KB", 10_000),
        (" 3T ", 3_000_000_000_000),
    ],
)
def test_parse_size(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["12X", "", "G", "-5M", "1.2.3G", "4 G B", "i"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="cannot parse size"):
        parse_size(text)


def test_format_size() -> None:
    assert format_size(512) == "512B"
    assert format_size(4_000_000_000) == "4.0G"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("node1", TargetSpec("node1")),
        ("node1:0", TargetSpec("node1", 0)),
        ("node1::0,2", TargetSpec("node1", None, (0, 2))),
        ("node1:1::3", TargetSpec("node1", 1, (3,))),
    ],
)
def test_parse_target(text: str, expected: TargetSpec) -> None:
    assert parse_target(text) == expected
    assert format_target(expected) == text


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "missing host name"),
        (":1", "missing host name"),
        ("n:x", "NUMA id must be a non-negative integer"),
        ("n:-1", "NUMA id must be a non-negative integer"),
        ("n::", "expected GPU ids"),
        ("n::1,,2", "expected GPU ids"),
        ("n::a", "GPU id must be a non-negative integer"),
        ("n::1,1", "GPU ids repeat"),
        ("n::2147483648", "GPU id must be at most 2147483647"),
        ("n:2147483648", "NUMA id must be at most 2147483647"),
        ("n::\u00b2", "GPU id must be a non-negative integer"),  # isdigit(), yet no int
    ],
)
def test_parse_target_rejects(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_target(text)


def test_parse_mount() -> None:
    assert parse_mount("/a:/b") == MountSpec("/a", "/b", False)
    assert parse_mount("/a:/b:ro") == MountSpec("/a", "/b", True)
    for bad in ("/a", "a:/b", "/a:b", "/a:/b:/c", ":/b"):
        with pytest.raises(ValueError):
            parse_mount(bad)


def test_ids_increase_and_carry_time() -> None:
    clock = iter([1_800_000_000_000] * 5000 + [1_799_999_999_000] * 10)
    gen = IdGenerator(clock_ms=lambda: next(clock))
    ids = [gen.next_id() for _ in range(5010)]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert all(0 < i < 2**63 for i in ids)
    assert id_timestamp_ms(ids[0]) == 1_800_000_000_000


@given(st.lists(st.integers(min_value=0, max_value=9000), min_size=1, max_size=6))
def test_id_blocks_continue_one_sequence(counts: list[int]) -> None:
    """Blocks of ids, and single ids between them, go on with one sequence: the next
    millisecond's starts once one's 4096 are used up (the clock standing still)."""
    clock_ms = 1_800_000_000_000
    gen = IdGenerator(generator_id=5, clock_ms=lambda: clock_ms)
    got: list[int] = []
    for count in counts:
        got += gen.next_ids(count)
        got.append(gen.next_id())
    start = clock_ms - EPOCH_MS
    assert got == [((start + k // 4096) << 22) | (5 << 12) | (k % 4096) for k in range(len(got))]


def test_parse_task_id() -> None:
    assert parse_task_id(" 42 ") == 42
    for bad in ("abc", "-1", "0", "1.5", str(2**63)):
        with pytest.raises(ValueError):
            parse_task_id(bad)
    # Not int()'s own words about its 4,300-digit limit.
    with pytest.raises(ValueError, match="task id of 5,000 digits is out of range"):
        parse_task_id("9" * 5000)


@given(st.integers(min_value=0, max_value=200))
def test_backoff_is_capped_and_jittered(attempt: int) -> None:
    rng = random.Random(attempt)
    delay = backoff_delay(attempt, base=0.2, cap=10.0, rng=rng)
    ceiling = min(10.0, 0.2 * 2 ** min(attempt, 30))
    assert ceiling / 2 <= delay <= ceiling


def test_backoff_grows() -> None:
    rng = random.Random(1)
    delays = [backoff_delay(n, base=0.2, cap=10.0, rng=rng) for n in range(8)]
    assert delays[0] <= 0.2 and delays[-1] >= 5.0
