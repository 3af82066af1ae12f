"""The heartbeat benchmark of ``make bench`` (bench/bench_heartbeats.py), shrunk to seconds:
20 simulated Runners every 0.5 s against grpc.aio alone and the Host. Only that it measured
and printed both is checked; its figures are the benchmark's business."""

from __future__ import annotations

import math

import pytest

from bench import bench_heartbeats


def test_heartbeat_benchmark_measures_grpc_alone_and_the_host(
    capsys: pytest.CaptureFixture[str],
) -> None:
    outcome = bench_heartbeats.run(runners=20, interval=0.5, window=2)
    bench_heartbeats.report(outcome)

    for load in (outcome.bare, outcome.host):
        assert load.rate > 0
        assert math.isfinite(load.per_heartbeat)
        assert load.rss > 0
    printed = capsys.readouterr().out
    assert "grpc.aio alone (a bare server" in printed
    assert "x grpc.aio alone" in printed
    assert "at 20,000 runners every 5 s" in printed
