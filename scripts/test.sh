#!/usr/bin/env bash
# The test command: lint and the generated-code drift check, then the two test tiers:
#   unit (tests/unit): in-process Host and FakeRunners, no Docker, no subprocess, two workers
#                      per core (pytest-xdist, tests/unit/conftest.py);
#   e2e  (tests/e2e):  real Hosts and Runners as processes on real Docker.
# The unit tier runs first, before anything else is installed but the Node packages the
# drift check generates TypeScript with; the e2e tier after the installs it needs (Docker,
# the base and sshd images, PostgreSQL, Chromium, the built dashboard, promtool, the C++
# gRPC toolchain).
# Extra arguments go to pytest in both tiers (e.g. -x, -k NAME); a tier where they select
# nothing is not a failure.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/python-env.sh

tier() {
    local status=0
    "$PY" -m pytest -p no:cacheprovider "$@" || status=$?
    # 5: no tests collected (the extra arguments select none in this tier).
    if [ "$status" -ne 0 ] && [ "$status" -ne 5 ]; then
        exit "$status"
    fi
}

echo "==> lint"
scripts/lint.sh
scripts/ensure-node.sh
echo "==> generated code up to date"
"$PY" scripts/check_protos.py

echo "==> unit tests (tests/unit)"
tier -n auto tests/unit "$@"

source scripts/lib/apt.sh
command -v numactl >/dev/null || apt_install numactl
command -v scp >/dev/null || apt_install openssh-client
command -v chromium >/dev/null || apt_install chromium
scripts/build-dashboard.sh
scripts/ensure-docker.sh
scripts/build-base-image.sh hakuriver-base
scripts/build-sshd-image.sh hakuriver-sshd
HAKURIVER_TEST_POSTGRES_URL="$(scripts/ensure-postgres.sh)"
export HAKURIVER_TEST_POSTGRES_URL
HAKURIVER_TEST_PROMTOOL="$(scripts/ensure-promtool.sh)"
export HAKURIVER_TEST_PROMTOOL
scripts/ensure-grpc-cpp.sh
command -v systemd-analyze >/dev/null || apt_install systemd  # the units' security score

echo "==> end-to-end tests (tests/e2e)"
tier tests/e2e "$@"
