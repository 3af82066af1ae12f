#!/usr/bin/env bash
# Make sure a Docker daemon answers: install Debian's docker.io and start dockerd when absent.
# Needs root for the install and the start; otherwise it only checks.
set -euo pipefail
source "$(dirname "$0")/lib/apt.sh"

if docker info >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "error: no Docker daemon answers and this is not root: start Docker yourself" >&2
    exit 1
fi
if ! command -v dockerd >/dev/null; then
    apt_install docker.io
fi
if ! docker info >/dev/null 2>&1; then
    echo "==> starting dockerd (log: /var/log/hakuriver-dockerd.log)"
    nohup dockerd >/var/log/hakuriver-dockerd.log 2>&1 &
    for _ in $(seq 1 60); do
        docker info >/dev/null 2>&1 && break
        sleep 1
    done
fi
if ! docker info >/dev/null 2>&1; then
    echo "error: dockerd did not come up; see /var/log/hakuriver-dockerd.log" >&2
    tail -20 /var/log/hakuriver-dockerd.log >&2 || true
    exit 1
fi
