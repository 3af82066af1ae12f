#!/usr/bin/env bash
# For the PostgreSQL test: make sure a local PostgreSQL runs (installing Debian's package and
# starting its cluster when needed, as root), with a role and database for the tests.
# Prints the SQLAlchemy URL on stdout.
set -euo pipefail
source "$(dirname "$0")/lib/apt.sh"
DB=hakuriver_test
if ! command -v pg_lsclusters >/dev/null; then
    apt_install postgresql >&2
fi
read -r VERSION CLUSTER PORT STATUS _ < <(pg_lsclusters --no-header | head -1)
if [ "$STATUS" != "online" ]; then
    pg_ctlcluster "$VERSION" "$CLUSTER" start >&2
fi
as_postgres() { su postgres -s /bin/sh -c "psql -p $PORT -qtA $*"; }
if [ "$(as_postgres "-c \"SELECT 1 FROM pg_roles WHERE rolname='$DB'\"")" != 1 ]; then
    as_postgres "-c \"CREATE ROLE $DB LOGIN PASSWORD '$DB'\"" >&2
fi
if [ "$(as_postgres "-c \"SELECT 1 FROM pg_database WHERE datname='$DB'\"")" != 1 ]; then
    as_postgres "-c \"CREATE DATABASE $DB OWNER $DB\"" >&2
fi
echo "postgresql+psycopg://$DB:$DB@127.0.0.1:$PORT/$DB"
