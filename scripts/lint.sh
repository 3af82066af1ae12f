#!/usr/bin/env bash
# ruff (lint and format) and mypy over the packages.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/python-env.sh
"$PY" -m ruff check .
"$PY" -m ruff format --check .
"$PY" -m mypy
