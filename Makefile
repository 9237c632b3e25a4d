# paystream: two commands for a new user — `make demo` and `make test`.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test unit integration lint stack-up stack-down stack-status bench chaos clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	@$(BIN)/pip install -q --upgrade pip
	@$(BIN)/pip install -q -e '.[dev,bench]'
	@touch $(STAMP)

install: $(STAMP)

stack-up: install
	@$(BIN)/paystream stack up

stack-down:
	@test -x $(BIN)/paystream && $(BIN)/paystream stack down || true

stack-status: install
	@$(BIN)/paystream stack status

demo: stack-up
	@$(BIN)/paystream demo

# Throughput, latency, recovery and the sink against a raw Kafka loop and a textbook faust agent
# (docs/performance.md).
# rocksdict (faust's persistent store, in the bench extra) lets recovery be measured with RocksDB too.
bench: stack-up
	@$(BIN)/python -m bench $(BENCH_ARGS)

lint: install
	@$(BIN)/ruff check .
	@$(BIN)/mypy paystream streams agents tables sinks gateway_clients

unit: install
	@$(BIN)/python -m pytest tests/unit -q

# The whole suite on the real stack. Exit code 5 (no tests collected) is a failure.
test: stack-up
	@$(BIN)/ruff check .
	@$(BIN)/mypy paystream streams agents tables sinks gateway_clients
	@$(BIN)/python -m pytest tests -q -p no:cacheprovider

integration: stack-up
	@$(BIN)/python -m pytest tests/integration -q

# Every fault-injection scenario at full size, checked from outside; prints the summary table
# (docs/reliability.md). CHAOS_ARGS="--short" or "--payments N" for smaller runs.
chaos: stack-up
	@$(BIN)/python -m chaos run all $(CHAOS_ARGS)

clean: stack-down
	rm -rf .stack
