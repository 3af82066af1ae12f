#!/usr/bin/env bash
# The test command: installs what the tests need (Python packages, Docker, the base image,
# PostgreSQL), then runs lint, the generated-code drift check and the test suite.
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/python-env.sh

echo "==> lint"
scripts/lint.sh
echo "==> generated code up to date"
"$PY" scripts/check_protos.py

source scripts/lib/apt.sh
command -v numactl >/dev/null || apt_install numactl
command -v scp >/dev/null || apt_install openssh-client
scripts/ensure-docker.sh
scripts/build-base-image.sh hakuriver-base
scripts/build-sshd-image.sh hakuriver-sshd
HAKURIVER_TEST_POSTGRES_URL="$(scripts/ensure-postgres.sh)"
export HAKURIVER_TEST_POSTGRES_URL

echo "==> tests"
exec "$PY" -m pytest -p no:cacheprovider "$@"
