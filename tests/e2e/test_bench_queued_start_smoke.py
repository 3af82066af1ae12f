"""The queued-start benchmark of ``make bench`` (bench/bench_queued_start.py), shrunk to
seconds: 6 tasks, one round. Only that it measured and printed is checked; its figures are
the benchmark's business."""

from __future__ import annotations

import math

import pytest

from bench import bench_queued_start

pytestmark = pytest.mark.docker


def test_queued_start_benchmark_measures_both_sides(
    docker_ready: None, capsys: pytest.CaptureFixture[str]
) -> None:
    result = bench_queued_start.run(tasks=6, rounds=1)
    bench_queued_start.report(result)

    assert len(result.baseline_seconds) == len(result.our_seconds) == 1
    for seconds in (*result.baseline_seconds, *result.our_seconds):
        assert math.isfinite(seconds) and seconds > 0
    assert result.cpu["Host"] > 0 and result.cpu["Runner"] > 0
    assert result.cpu["docker (ours)"] > 0 and result.cpu["docker (baseline)"] > 0
    printed = capsys.readouterr().out
    assert "x of the docker-py threads" in printed and "CPU per task (ms): Host" in printed
