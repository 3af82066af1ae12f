"""The output-path benchmark of ``make bench`` (bench/bench_output.py), shrunk to seconds:
2 MB, one round. Only that it measured and printed is checked (the benchmark itself fails
when the output stored is not all of it); its figures are the benchmark's business."""

from __future__ import annotations

import math

import pytest

from bench import bench_output

pytestmark = pytest.mark.docker


def test_output_benchmark_measures_the_raw_read_and_ours(
    docker_ready: None, capsys: pytest.CaptureFixture[str]
) -> None:
    result = bench_output.run(megabytes=2, rounds=1)
    bench_output.report(result)

    assert result.size == 2_000_000
    for figures in (result.raw_mb_s, result.ours_mb_s, result.ran_seconds):
        assert len(figures) == 1 and all(math.isfinite(f) and f > 0 for f in figures)
    assert len(result.exit_to_final) == 1 and math.isfinite(result.exit_to_final[0])
    printed = capsys.readouterr().out
    assert "x of the raw read" in printed and "exit -> final" in printed
