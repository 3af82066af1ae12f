PY ?= python3

.PHONY: protos protos-check lint test bench quickstart

protos:  ## regenerate Python, gRPC and mypy stubs from protos/
	buf lint
	rm -rf hakuriver_common/proto
	buf generate

protos-check:  ## fail if generated code is out of date
	$(PY) scripts/check_protos.py

lint:  ## ruff and mypy
	./scripts/lint.sh

test:  ## the full suite, installing what it needs
	./scripts/test.sh

bench:  ## benchmarks; they print figures, they do not assert times
	./scripts/bench.sh

quickstart:  ## a one-machine cluster on 127.0.0.1
	./scripts/quickstart.sh
