#!/usr/bin/env bash
# Build the dashboard's static files into hakuriver_host/dashboard/dist (served by the Host
# on dashboard.port). Installs Node.js and the Node packages first (scripts/ensure-node.sh);
# skips the build when nothing under the dashboard's sources changed since the last one.
set -euo pipefail
cd "$(dirname "$0")/.."
DASHBOARD=hakuriver_host/dashboard
scripts/ensure-node.sh
STAMP="$DASHBOARD/dist/.built"
if [ -f "$STAMP" ] && [ -z "$(find "$DASHBOARD/src" "$DASHBOARD/index.html" "$DASHBOARD/package-lock.json" \
        "$DASHBOARD/vite.config.ts" "$DASHBOARD/tsconfig.json" -newer "$STAMP" -print -quit)" ]; then
    exit 0
fi
echo "==> building the dashboard (vite)" >&2
(cd "$DASHBOARD" && npm run --silent build >&2)
touch "$STAMP"
