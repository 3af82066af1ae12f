"""The CLI start-up benchmark of ``make bench`` (bench/bench_cli.py), shrunk to seconds: a
Host process, a FakeRunner, and each figure timed twice. Only that it measured and printed
every figure is checked; its times are the benchmark's business. No Docker."""

from __future__ import annotations

import math

import pytest

from bench import bench_cli


def test_cli_benchmark_measures_start_up_and_round_trips(
    capsys: pytest.CaptureFixture[str],
) -> None:
    counts = bench_cli.Counts(runs=2, warmup=1)
    result = bench_cli.run(counts)
    bench_cli.report(result, counts)

    assert result.label == "TLS, API tokens"
    for name in (
        bench_cli.FLOOR,
        bench_cli.TASK_HELP,
        bench_cli.CLIENT_HELP,
        bench_cli.TASK_SUBMIT,
        bench_cli.TASK_SUBMIT_GRPC,
        bench_cli.API_SUBMIT_NEW,
        bench_cli.API_SUBMIT_WARM,
        bench_cli.CLIENT_NODES,
        bench_cli.API_NODES_NEW,
        bench_cli.GRPC_IMPORT,
    ):
        times = result.seconds[name]
        assert len(times) == counts.runs, name
        assert all(math.isfinite(t) and t > 0 for t in times), (name, times)
    printed = capsys.readouterr().out
    assert "CLI overhead (wall - API round trip on a new channel - floor)" in printed
    assert printed.count("(target < 100 ms)") == 5
    assert "hakuriver.task submit --wait -- true" in printed
    assert "importing grpc and the task stubs alone" in printed
