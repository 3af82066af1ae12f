PY ?= python3

.PHONY: protos protos-check lint lock migration test test-unit bench quickstart fuzz

protos:  ## regenerate the Python, gRPC, Connect and mypy stubs and the TypeScript (dashboard, Node example)
	scripts/ensure-node.sh
	buf lint
	rm -rf hakuriver_common/proto hakuriver_host/dashboard/src/gen examples/node-client/src/gen
	buf generate

protos-check:  ## fail if generated code is out of date
	$(PY) scripts/check_protos.py

lint:  ## ruff, mypy, buf lint, buf breaking
	./scripts/lint.sh

lock:  ## write constraints.txt anew: the newest releases pyproject.toml allows, installed into a fresh virtualenv
	bash -c 'set -euo pipefail; fresh="$$(mktemp -d)"; trap "rm -rf $$fresh" EXIT; \
		python3 -m venv "$$fresh/venv"; \
		"$$fresh/venv/bin/pip" install --disable-pip-version-check -q --upgrade pip; \
		"$$fresh/venv/bin/pip" install --disable-pip-version-check -q -e ".[dev]"; \
		{ sed -n "/^#/p" constraints.txt; \
		  "$$fresh/venv/bin/pip" freeze --all --exclude-editable | grep -v "^pip=="; } \
		> constraints.txt.new; \
		mv constraints.txt.new constraints.txt'

migration:  ## draft the next schema migration from the models: make migration MESSAGE="what changed"
	.venv/bin/python scripts/new_migration.py "$(MESSAGE)"

test:  ## lint, then the unit tier, then the e2e tier (installing what it needs)
	./scripts/test.sh

test-unit:  ## the unit tier only: in-process, no Docker, two workers per core
	bash -c 'set -euo pipefail; source scripts/lib/python-env.sh; \
		exec "$$PY" -m pytest -p no:cacheprovider -n auto tests/unit'

bench:  ## benchmarks; they print figures, they do not assert times
	./scripts/bench.sh

quickstart:  ## a one-machine cluster on 127.0.0.1
	./scripts/quickstart.sh

.PHONY: chaos
chaos:  ## the chaos suite at full scale (docs/reliability.md): faults against a real cluster, a table of outcomes
	bash -c 'set -euo pipefail; source scripts/lib/python-env.sh; scripts/ensure-docker.sh; \
		scripts/build-base-image.sh hakuriver-base; exec "$$PY" -m tests.chaos'

FUZZ_REQUESTS ?= 10000
ifndef FUZZ_SEED
FUZZ_SEED := $(shell od -An -N4 -tu4 /dev/urandom | tr -d ' ')
endif
fuzz:  ## the fuzz tier: 10,000 requests to every RPC (FUZZ_SEED=n replays a run)
	@echo "fuzz: $(FUZZ_REQUESTS) requests, --hypothesis-seed=$(FUZZ_SEED) (make fuzz FUZZ_SEED=$(FUZZ_SEED) replays it)"
	bash -c 'set -euo pipefail; source scripts/lib/python-env.sh; \
		HAKURIVER_FUZZ_REQUESTS=$(FUZZ_REQUESTS) exec "$$PY" -m pytest -p no:cacheprovider \
		-s -q --hypothesis-seed=$(FUZZ_SEED) tests/unit/test_fuzz.py'
