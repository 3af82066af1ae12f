#!/usr/bin/env bash
# Start a working one-machine HakuRiver cluster on 127.0.0.1: a Host and one Runner, SQLite,
# shared storage in a local folder, the base environment built if missing; then run a sample
# task and show its output. `scripts/quickstart.sh stop` stops the cluster again.
#
# Settings (environment): HAKURIVER_QUICKSTART_DIR (default .quickstart in the checkout),
# HAKURIVER_QUICKSTART_PORT (gRPC, default 8000; /metrics is the next port, the SSH proxy the
# one after), so two quickstart clusters on one machine need ports at least 3 apart.
set -euo pipefail
cd "$(dirname "$0")/.."
DIR="$(realpath -m "${HAKURIVER_QUICKSTART_DIR:-.quickstart}")"
PORT="${HAKURIVER_QUICKSTART_PORT:-8000}"
CONFIG="$DIR/config.toml"

stop() {
    for role in runner host; do
        if [ -f "$DIR/$role.pid" ]; then
            kill "$(cat "$DIR/$role.pid")" 2>/dev/null || true
            rm -f "$DIR/$role.pid"
        fi
    done
    echo "stopped the quickstart cluster in $DIR"
}

if [ "${1:-}" = "stop" ]; then
    stop
    exit 0
fi

source scripts/lib/python-env.sh
scripts/ensure-docker.sh
scripts/build-base-image.sh hakuriver-base

if [ -f "$DIR/host.pid" ] && kill -0 "$(cat "$DIR/host.pid")" 2>/dev/null; then
    echo "a quickstart cluster is already running (stop it: scripts/quickstart.sh stop)"
    exit 1
fi
mkdir -p "$DIR/shared" "$DIR/local_temp"
cat >"$CONFIG" <<TOML
[network]
host_bind_ip = "127.0.0.1"
host_reachable_address = "127.0.0.1"
host_port = $PORT
metrics_port = $((PORT + 1))
host_ssh_proxy_port = $((PORT + 2))

[paths]
shared_dir = "$DIR/shared"
local_temp_dir = "$DIR/local_temp"
host_log_file = "$DIR/host.log"
runner_log_file = "$DIR/runner.log"

[database]
db_file = "$DIR/cluster.db"

[runner]
name = "$(hostname)"
TOML
export HAKURIVER_CONFIG="$CONFIG"

nohup "$PY" -m hakuriver_host >>"$DIR/host.out" 2>&1 &
echo $! >"$DIR/host.pid"
nohup "$PY" -m hakuriver_runner >>"$DIR/runner.out" 2>&1 &
echo $! >"$DIR/runner.pid"

# The whole answer is read before matching: `| grep -q` would close the pipe at the first
# match, and the client's broken pipe would fail the pipeline under pipefail.
node_online() {
    local nodes
    nodes="$("$PY" -m hakuriver_cli.client nodes --json 2>/dev/null)" || return 1
    [[ $nodes == *'"status": "online"'* ]]
}
for _ in $(seq 1 100); do
    if node_online; then
        break
    fi
    sleep 0.2
done
if ! node_online; then
    echo "error: the cluster did not come up; logs: $DIR/host.log $DIR/runner.log" >&2
    tail -n 3 "$DIR/host.out" "$DIR/runner.out" >&2 2>/dev/null || true
    stop
    exit 1
fi
"$PY" -m hakuriver_cli.client nodes

echo
echo "==> sample task"
SUBMITTED="$("$PY" -m hakuriver_cli.task submit --wait -- sh -c 'echo "Hello from HakuRiver, task $HAKURIVER_TASK_ID"; uname -sr')"
echo "$SUBMITTED"
TASK_ID="$(echo "$SUBMITTED" | sed -n 's/^submitted task \([0-9]*\).*/\1/p' | head -1)"
echo "==> its output (hakuriver.task stdout $TASK_ID)"
"$PY" -m hakuriver_cli.task stdout "$TASK_ID"

cat <<MSG

The cluster is running (Host on 127.0.0.1:$PORT, metrics on http://127.0.0.1:$((PORT + 1))/metrics,
SSH proxy on 127.0.0.1:$((PORT + 2))).
Submit more:
    export HAKURIVER_CONFIG=$CONFIG
    export PATH=$(dirname "$PY"):\$PATH
    hakuriver.task submit --wait -- sh -c 'echo hi'
    hakuriver.task list
    hakuriver.client nodes
Stop it:
    scripts/quickstart.sh stop
MSG
