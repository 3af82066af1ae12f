"""The security benchmark of ``make bench``, shrunk to seconds, so a change that breaks it
(a Host config it no longer accepts, a token the Host no longer takes) shows in the suite.

It runs the benchmark's own code: a baseline Host process (plaintext, no authentication)
and a secured one (TLS, API tokens), FakeRunners, and clients sending the admin token.
Only that it measured and printed is checked; its times are the benchmark's business.
"""

from __future__ import annotations

import math

import pytest

from bench import bench_security


def test_security_benchmark_measures_baseline_and_secured(
    capsys: pytest.CaptureFixture[str],
) -> None:
    counts = bench_security.Counts(
        tasks=40, samples=5, rounds=1, pairs=1, warmup=5, runners=2, clients=2, in_flight=8
    )
    setups = [bench_security.BASELINE, bench_security.SECURED]
    outcome = bench_security.run(counts, setups)
    bench_security.report_all(outcome, counts)

    for results in (outcome.alone, outcome.side_by_side):
        base, secured = results
        assert (base.label, secured.label) == ("plaintext, no authentication", "TLS, API tokens")
        for result in results:
            [measured] = result.rounds
            assert len(measured.latencies) == len(measured.replies) == counts.samples
            figures = [measured.throughput, *measured.latencies, *measured.replies]
            assert all(math.isfinite(f) and f > 0 for f in figures), figures
            assert measured.host_cpu_per_task >= 0
    printed = capsys.readouterr().out
    assert printed.count("secured/baseline time per task, per round") == 2
    assert printed.count("secured/baseline median, per round") == 2
