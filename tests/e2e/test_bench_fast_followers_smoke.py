"""The fast-followers benchmark of ``make bench`` (bench/bench_fast_followers.py), shrunk to
seconds: a 1-second writer, 2 followers a round. Checked: it measured and printed every
round, and what every follower must have got whatever the timings (every byte when it asked
for every byte; the end of the output, within what it got, when it asked to stay near the
end); its figures are the benchmark's business."""

from __future__ import annotations

import math

import pytest

from bench import bench_fast_followers

pytestmark = pytest.mark.docker


def test_fast_followers_benchmark_measures_each_round(
    docker_ready: None, capsys: pytest.CaptureFixture[str]
) -> None:
    counts = bench_fast_followers.Counts(seconds=1, mb_per_second=2, followers=2)
    result = bench_fast_followers.run(counts)
    bench_fast_followers.report(result)

    _, every, near = result.rounds
    assert [len(r.readers) for r in result.rounds] == [0, 2, 2]
    for r in result.rounds:
        assert r.stored == counts.seconds * counts.mb_per_second * 1_000_000
        assert math.isfinite(r.stored_mb_s) and r.stored_mb_s > 0
    assert all(x.received == every.stored and x.skips == 0 for x in every.readers)
    assert all(x.offset == near.stored and x.received <= near.stored for x in near.readers)
    assert 0 < result.rss_before <= result.rss_peak
    printed = capsys.readouterr().out
    assert "every byte" in printed and "near the end" in printed and "Host RSS" in printed
