#!/usr/bin/env bash
# For the monitoring tests: Prometheus's promtool, which checks and unit-tests the alert rules.
# The one on PATH, else the one taken out of Debian's prometheus package into .cache/promtool
# (extracted, not installed: installing would start a Prometheus server). Prints its path.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/apt.sh
if command -v promtool >/dev/null; then
    command -v promtool
    exit 0
fi
CACHED=.cache/promtool/usr/bin/promtool
if [ ! -x "$CACHED" ]; then
    download="$(mktemp -d)"
    trap 'rm -rf "$download"' EXIT
    chmod 755 "$download"
    apt_download prometheus "$download"
    rm -rf .cache/promtool
    mkdir -p .cache/promtool
    dpkg-deb -x "$download"/prometheus_*.deb .cache/promtool
fi
echo "$PWD/$CACHED"
