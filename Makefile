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

lint: install
	@$(BIN)/ruff check .
	@$(BIN)/mypy paystream streams agents tables sinks gateway_clients

unit: install
	@$(BIN)/python -m pytest tests/unit -q

# The whole suite on the real stack. Exit code 5 (no tests collected) is a failure.
test: stack-up
	@$(BIN)/ruff check .
	@$(BIN)/python -m pytest tests -q -p no:cacheprovider

integration: stack-up
	@$(BIN)/python -m pytest tests/integration -q

clean: stack-down
	rm -rf .stack
