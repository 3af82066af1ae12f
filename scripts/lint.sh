#!/usr/bin/env bash
# ruff (lint and format) and mypy over the packages; buf lint over the protos, and buf breaking
# against the newest released API image in protos-released/ (a change that would break a
# client of that release fails here).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/python-env.sh
"$PY" -m ruff check .
"$PY" -m ruff format --check .
"$PY" -m mypy
buf lint
released="$(ls protos-released/hakuriver-*.binpb | sort -V | tail -n 1)"
buf breaking --against "$released"
