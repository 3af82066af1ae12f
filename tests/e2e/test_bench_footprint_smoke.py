"""The footprint benchmark of ``make bench`` (bench/bench_footprint.py), shrunk to seconds:
3 tasks, 1 s windows. Only that it measured and printed both processes is checked; its
figures are the benchmark's business."""

from __future__ import annotations

import pytest

from bench import bench_footprint

pytestmark = pytest.mark.docker


def test_footprint_benchmark_measures_host_and_runner_before_and_after(
    docker_ready: None, capsys: pytest.CaptureFixture[str]
) -> None:
    result = bench_footprint.run(tasks=3, window=1, settle=0.5)
    bench_footprint.report(result, window=1)

    assert result.completed == 3
    for figures in (result.before, result.after):
        assert set(figures) == {"Host", "Runner"}
        assert all(idle.rss > result.bare_rss for idle in figures.values())
    printed = capsys.readouterr().out
    assert "the 3 tasks: 3 completed" in printed
    assert printed.count("before: RSS") == 2
