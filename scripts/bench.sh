#!/usr/bin/env bash
# Benchmarks: they print figures against baselines measured in the same run; no assertions.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/python-env.sh
scripts/ensure-docker.sh
scripts/build-base-image.sh hakuriver-base
scripts/build-sshd-image.sh hakuriver-sshd
scripts/build-dashboard.sh
source scripts/lib/apt.sh
command -v chromium >/dev/null || apt_install chromium
"$PY" -m bench.bench_dispatch
"$PY" -m bench.bench_cli
"$PY" -m bench.bench_scheduler
"$PY" -m bench.bench_queued_start
HAKURIVER_BENCH_QUEUED_SLEEP=0.3 HAKURIVER_BENCH_QUEUED_TASKS=40 "$PY" -m bench.bench_queued_start
"$PY" -m bench.bench_security
"$PY" -m bench.bench_heartbeats
"$PY" -m bench.bench_restart
"$PY" -m bench.bench_slow_followers
"$PY" -m bench.bench_fast_followers
"$PY" -m bench.bench_output
"$PY" -m bench.bench_footprint
"$PY" -m bench.bench_ssh
"$PY" -m bench.bench_dashboard
