"""The scheduler benchmark of ``make bench`` (bench/bench_scheduler.py), shrunk to seconds: a
Host process, 3 simulated Runners, the floor's calls and a few single submits to the Host and
to a bare grpc.aio server (with Runners of its own), two arrays of 200 tasks, and 5 lone tasks
from the probe process with no load, during the submits and during the arrays. Only that it
measured and printed is checked; its figures are the benchmark's business."""

from __future__ import annotations

import math

import pytest

from bench import bench_scheduler


def test_scheduler_benchmark_measures_submits_arrays_and_lone_tasks(
    capsys: pytest.CaptureFixture[str],
) -> None:
    counts = bench_scheduler.Counts(
        runners=3,
        tasks=30,
        tasks_max=2000,
        in_flight=8,
        array=200,
        array_rounds=2,
        array_rounds_max=4,
        lone=5,
        timeout=60,
    )
    result = bench_scheduler.run(counts)
    bench_scheduler.report(result, counts)

    assert len(result.floor_rounds) == bench_scheduler.FLOOR_ROUNDS
    assert all(math.isfinite(r) and r > 0 for r in result.floor_rounds)
    assert result.floor == max(result.floor_rounds)
    assert len(result.ceiling_rounds) == bench_scheduler.FLOOR_ROUNDS
    assert all(math.isfinite(r) and r > 0 for r in result.ceiling_rounds)
    bare = result.ceiling_singles
    assert bare.tasks == counts.tasks and len(bare.to_dispatch) == bare.tasks
    assert 0 < bare.submit_seconds <= bare.total_seconds and bare.cpu.host > 0
    singles = result.singles
    assert counts.tasks <= singles.tasks <= counts.tasks_max
    assert 0 < singles.submit_seconds <= singles.total_seconds
    assert len(singles.to_dispatch) == singles.tasks
    assert counts.array_rounds <= len(result.arrays) <= counts.array_rounds_max
    for rnd in result.arrays:
        assert rnd.size == counts.array
        assert 0 < rnd.accepted <= rnd.total and rnd.get_batch > 0
        assert rnd.cpu.host > 0
    assert len(result.lone_idle.running) == counts.lone
    # Under load: as many as fitted while the load ran (the load goes on until it has them,
    # up to its bound, so at least one).
    for lone in (result.lone_idle, result.lone_singles, result.lone_own, result.lone_arrays):
        assert 1 <= len(lone.running) == len(lone.answered) <= counts.lone
        for running, answered in zip(lone.running, lone.answered, strict=True):
            assert 0 < answered <= running and math.isfinite(running), lone
    printed = capsys.readouterr().out
    for figure in (
        "floor:",
        "grpc.aio alone:",
        "grpc.aio alone, a task's messages:",
        "x grpc.aio alone's task messages",
        "of the server's CPU per task",
        "of the Host's CPU per task",
        "end to end",
        "accepted in",
        "during singles",
        "sweeper's own",
        "during arrays",
    ):
        assert figure in printed, figure
