#!/usr/bin/env bash
# Start a working one-machine HakuRiver cluster on 127.0.0.1: a Host and one Runner, SQLite,
# shared storage in a local folder, the base environment built if missing; then run a sample
# task and show its output. `scripts/quickstart.sh stop` stops the cluster again.
# Secure as any cluster: TLS with its own CA (in $DIR/tls), a random join token for the
# Runner, and the first admin's API token, which the Host writes to $DIR/credentials (0600).
#
# Settings (environment): HAKURIVER_QUICKSTART_DIR (default .quickstart in the checkout),
# HAKURIVER_QUICKSTART_PORT (gRPC, default 8000; /metrics is the next port, the SSH proxy the
# one after, the dashboard the one after that), so two quickstart clusters on one machine
# need ports at least 4 apart.
set -euo pipefail
cd "$(dirname "$0")/.."
DIR="$(realpath -m "${HAKURIVER_QUICKSTART_DIR:-.quickstart}")"
PORT="${HAKURIVER_QUICKSTART_PORT:-8000}"
CONFIG="$DIR/config.toml"
# The stop command as the user types it: naming the folder when it is not the default, so
# that the printed command stops this cluster and not the checkout's .quickstart.
STOP="scripts/quickstart.sh stop"
if [ -n "${HAKURIVER_QUICKSTART_DIR:-}" ]; then
    STOP="HAKURIVER_QUICKSTART_DIR=$(printf %q "$DIR") $STOP"
fi

# Whether the process in $DIR/ROLE.pid is this cluster's Host or Runner: a pid file left
# by a cluster that ended without `stop` (a reboot) may name a process that has its number
# now, which is never signalled.
ours() {
    local pid
    pid="$(cat "$DIR/$1.pid" 2>/dev/null)" || return 1
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    [[ "$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)" == *"-m hakuriver_$1 "* ]] || return 1
    local environ
    environ="$(tr '\0' '\n' <"/proc/$pid/environ" 2>/dev/null)" || return 1
    [[ $'\n'$environ$'\n' == *$'\n'"HAKURIVER_CONFIG=$CONFIG"$'\n'* ]]
}

stop() {
    local stopped=""
    for role in runner host; do
        if ours "$role"; then
            kill "$(cat "$DIR/$role.pid")" 2>/dev/null && stopped=yes
        fi
        rm -f "$DIR/$role.pid"
    done
    if [ -n "$stopped" ]; then
        echo "stopped the quickstart cluster in $DIR"
    else
        echo "no quickstart cluster is running in $DIR"
    fi
}

if [ "${1:-}" = "stop" ]; then
    stop
    exit 0
fi

source scripts/lib/python-env.sh
scripts/ensure-docker.sh
scripts/build-base-image.sh hakuriver-base
scripts/build-dashboard.sh

if ours host; then
    echo "a quickstart cluster is already running in $DIR (stop it: $STOP)"
    exit 1
fi
mkdir -p "$DIR/shared" "$DIR/local_temp"
# The admin token in $DIR/credentials belongs to the database it was made for: without that
# database the Host makes a new admin and token on its first start, written there.
if [ ! -f "$DIR/cluster.db" ]; then
    rm -f "$DIR/credentials"
fi
JOIN_TOKEN="$("$PY" -c 'import secrets
from hakuriver_common.roles import JOIN_TOKEN_PREFIX
print(JOIN_TOKEN_PREFIX + secrets.token_urlsafe(32))')"
# The config holds the join token: created 0600, never readable by others.
rm -f "$CONFIG"
(umask 077 && cat >"$CONFIG") <<TOML
[network]
host_bind_ip = "127.0.0.1"
host_reachable_address = "127.0.0.1"
host_port = $PORT
metrics_port = $((PORT + 1))
host_ssh_proxy_port = $((PORT + 2))

[dashboard]
port = $((PORT + 3))
# Plain HTTP on 127.0.0.1 (browsers treat loopback as a secure origin); off loopback the
# dashboard speaks HTTPS with the Host's certificate.
plaintext = true

[paths]
shared_dir = "$DIR/shared"
local_temp_dir = "$DIR/local_temp"
host_log_file = "$DIR/host.log"
runner_log_file = "$DIR/runner.log"

[database]
db_file = "$DIR/cluster.db"

[runner]
name = "$(hostname)"
state_dir = "$DIR/runner-state"

[tls]
ca_file = "$DIR/tls/ca.pem"
cert_file = "$DIR/tls/host.pem"
key_file = "$DIR/tls/host.key"

[auth]
credentials_file = "$DIR/credentials"
join_token = "$JOIN_TOKEN"
TOML
export HAKURIVER_CONFIG="$CONFIG"
# The cluster's CA (kept from an earlier run) and a Host certificate for 127.0.0.1.
"$PY" -m hakuriver_cli.init tls --output-dir "$DIR/tls" >"$DIR/tls.out"

nohup "$PY" -m hakuriver_host >>"$DIR/host.out" 2>&1 &
echo $! >"$DIR/host.pid"
nohup "$PY" -m hakuriver_runner >>"$DIR/runner.out" 2>&1 &
echo $! >"$DIR/runner.pid"

# The whole answer is read before matching: `| grep -q` would close the pipe at the first
# match, and the client's broken pipe would fail the pipeline under pipefail. The CLI uses
# the admin token the Host writes on its first start.
node_online() {
    local nodes
    [ -f "$DIR/credentials" ] || return 1
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
TLS with the CA $DIR/tls/ca.pem; you are its admin (API token in $DIR/credentials, 0600).

Dashboard: http://127.0.0.1:$((PORT + 3))/
    sign in with your API token: cat $DIR/credentials
Submit more:
    export HAKURIVER_CONFIG=$CONFIG
    export PATH=$(dirname "$PY"):\$PATH
    hakuriver.task submit --wait -- sh -c 'echo hi'
    hakuriver.task list
    hakuriver.client nodes
Add a user and give them a token (shown once; --save writes it to a new 0600 file):
    hakuriver.admin user add alice --role user
    hakuriver.admin token create --user alice --save alice.token
  alice keeps it in ~/.hakuriver/credentials (chmod 600) or in \$HAKURIVER_TOKEN, with a
  config like $CONFIG without [auth] (tls.ca_file pointing at a copy of ca.pem).
Stop it:
    $STOP
MSG
