#!/usr/bin/env bash
# Node.js 20.19+ with npm, and the Node packages (dashboard, example client) installed from
# their lockfiles (npm ci, only when a lockfile changed since the last install). Installs
# Debian's nodejs and npm as root when node is missing; Debian 12's own Node.js (18) is too
# old for the dashboard's build tools, which this says in one line.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/apt.sh
DASHBOARD=hakuriver_host/dashboard

if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    apt_install nodejs npm
fi
if ! node -e 'const [a, b] = process.versions.node.split(".").map(Number);
              process.exit(a > 20 || (a === 20 && b >= 19) ? 0 : 1)'; then
    echo "error: the dashboard's build needs Node.js 20.19 or newer; this machine has $(node --version)" >&2
    exit 1
fi
# The dashboard's packages, and the Node.js example client's (examples/node-client).
for project in "$DASHBOARD" examples/node-client; do
    MARKER="$project/node_modules/.hakuriver-installed"
    if [ ! -f "$MARKER" ] || [ "$project/package-lock.json" -nt "$MARKER" ]; then
        echo "==> installing the Node packages of $project (npm ci)" >&2
        (cd "$project" && npm ci --no-audit --no-fund --loglevel=error >&2)
        touch "$MARKER"
    fi
done
