"""The slow-followers benchmark of ``make bench`` (bench/bench_slow_followers.py), shrunk to
seconds: floods of 0.3 s (alone, then read by 3 slow followers), a second task's 10 lines
(staying 1 s after them, not 5), the Host's RSS "after" 0.5 s after the floods, not 3.
Only that it measured and printed is checked; its figures are the benchmark's business."""

from __future__ import annotations

import math

import pytest

from bench import bench_slow_followers

pytestmark = pytest.mark.docker


def test_slow_followers_benchmark_measures_latency_and_memory(
    docker_ready: None, capsys: pytest.CaptureFixture[str]
) -> None:
    counts = bench_slow_followers.Counts(
        flood_seconds=0.3,
        followers=3,
        tick_lines=10,
        tick_linger=1.0,
        flood_bound=120,
        settle_seconds=0.5,
    )
    result = bench_slow_followers.run(counts)
    bench_slow_followers.report(result, counts)

    for latencies in (result.quiet, result.alone.latencies, result.flooded):
        assert len(latencies.uptime) == counts.tick_lines
        assert len(latencies.docker) <= counts.tick_lines  # Docker's log may be gone
        assert all(math.isfinite(x) for x in [*latencies.docker, *latencies.uptime])
    assert 0 < result.rss_before <= result.rss_peak
    assert result.rss_after > 0
    assert result.alone.stored_bytes > 0 and result.followed.stored_bytes > 0
    assert result.alone.follower_bytes == []
    assert len(result.followed.follower_bytes) == counts.followers
    assert all(received > 0 for received in result.followed.follower_bytes)
    printed = capsys.readouterr().out
    assert "flood, 3 followers" in printed and "Host RSS: before" in printed
