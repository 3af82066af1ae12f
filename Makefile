PY ?= python3

.PHONY: protos protos-check lint test test-unit bench quickstart

protos:  ## regenerate the Python, gRPC, Connect and mypy stubs and the dashboard's TypeScript
	scripts/ensure-node.sh
	buf lint
	rm -rf hakuriver_common/proto hakuriver_host/dashboard/src/gen
	buf generate

protos-check:  ## fail if generated code is out of date
	$(PY) scripts/check_protos.py

lint:  ## ruff and mypy
	./scripts/lint.sh

test:  ## lint, then the unit tier, then the e2e tier (installing what it needs)
	./scripts/test.sh

test-unit:  ## the unit tier only: in-process, no Docker, under a minute
	bash -c 'set -euo pipefail; source scripts/lib/python-env.sh; \
		exec "$$PY" -m pytest -p no:cacheprovider tests/unit'

bench:  ## benchmarks; they print figures, they do not assert times
	./scripts/bench.sh

quickstart:  ## a one-machine cluster on 127.0.0.1
	./scripts/quickstart.sh

.PHONY: chaos
chaos:  ## the chaos suite at full scale (docs/reliability.md): faults against a real cluster, a table of outcomes
	bash -c 'set -euo pipefail; source scripts/lib/python-env.sh; scripts/ensure-docker.sh; \
		scripts/build-base-image.sh hakuriver-base; exec "$$PY" -m tests.chaos'
