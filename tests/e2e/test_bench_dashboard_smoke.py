"""The dashboard benchmark of ``make bench``, shrunk to seconds: a few renders and lines in
the suite's Chromium against a cluster of its own. Only that it measured and printed is
checked; its figures are the benchmark's business."""

from __future__ import annotations

import math

import pytest
from playwright.sync_api import Browser

from bench import bench_dashboard


@pytest.mark.docker
def test_dashboard_benchmark_measures_size_render_and_log_delay(
    docker_ready: None, browser: Browser, capsys: pytest.CaptureFixture[str]
) -> None:
    sizes, render, delays = bench_dashboard.run(renders=2, lines=6, browser=browser)
    bench_dashboard.report(sizes, render, delays)
    assert sizes.files > 0 and 0 < sizes.first_load_gzipped <= sizes.total_gzipped
    assert all(math.isfinite(v) and v > 0 for v in render), render
    assert len(delays.page) == len(delays.cli) == 6
    assert all(math.isfinite(d) and d > -0.05 for d in delays.page + delays.cli)
    printed = capsys.readouterr().out
    assert "all JS+CSS gzipped" in printed and "Home with cluster data" in printed
