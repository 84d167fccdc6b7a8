# Two commands on a fresh machine:
#   make demo   train on BasicMotions (or reuse), start Kafka and the service, replay, report
#   make test   install everything, start Kafka, lint, type-check and run every test
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: all install kafka-start kafka-stop lint typecheck test test-unit demo demo-frames bench tools clean

all: test

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)
	deploy/local/kafka.sh status >/dev/null 2>&1 || true
	@test -n "$$(ls -A deploy/local/target/libs 2>/dev/null)" || \
	  mvn -q -B -f deploy/local/pom.xml dependency:copy-dependencies -DoutputDirectory=target/libs -DincludeScope=runtime

tools:
	deploy/tools/install.sh

kafka-start: install
	deploy/local/kafka.sh start

kafka-stop:
	deploy/local/kafka.sh stop

LINT_PATHS := stream_infer engines benchmarks tests deploy/tools examples

lint: install
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/ruff format --check $(LINT_PATHS)

typecheck: install
	$(BIN)/mypy

test-unit: install
	$(BIN)/pytest -m "not integration" -q

# The decode property tests with the nightly profile: ten times the examples `make test` runs.
.PHONY: test-fuzz
test-fuzz: install
	HYPOTHESIS_PROFILE=nightly $(BIN)/pytest -q tests/pipeline/test_decode_fuzz.py

# The broker is started by the test session itself (tests/conftest.py) and stopped when it ends
# if the session started it. Everything runs with the default Kafka client (confluent-kafka),
# then the broker suites (integration, durability, security) again with kafka-python.
test: install tools lint typecheck
	$(BIN)/pytest -q
	KAFKA_CLIENT=kafka-python $(BIN)/pytest -q -m integration

demo: install
	$(BIN)/stream-infer demo

demo-frames: install
	$(BIN)/stream-infer demo --kind frame

bench: install
	$(BIN)/python -m benchmarks all

# Build the CPU image with podman on a local Debian (mmdebstrap) base and run it as its non-root
# user, read-only, against the local broker: /healthz, /readyz, predictions, SIGTERM (docs/image.md).
.PHONY: image-test
image-test: install
	deploy/image/test.sh

# The serving image's dependencies, pinned with hashes (deploy/docker/requirements.lock), from
# pyproject.toml's core dependencies; rerun after changing them (tests/deploy checks they match).
.PHONY: lock audit
lock: install
	$(BIN)/pip-compile --quiet --generate-hashes --allow-unsafe --strip-extras --no-emit-index-url --no-emit-find-links \
	  --output-file deploy/docker/requirements.lock pyproject.toml

# Known vulnerabilities in the locked serving dependencies (pip-audit, PyPI's advisory data);
# says so and passes when the advisory source cannot be reached.
audit: install
	$(BIN)/python deploy/tools/audit.py deploy/docker/requirements.lock

clean:
	deploy/local/kafka.sh stop || true
	rm -rf .local artifacts
