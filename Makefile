# firecron: the README's two commands are `make dev` and `make test`.
# Every target creates the virtualenv and installs what it needs first.

SHELL := /bin/bash
# The first Python 3.11+ on PATH; override with `make test PYTHON=python3.12`.
PYTHON ?= $(shell for p in python3.13 python3.12 python3.11 python3; do \
	command -v $$p >/dev/null 2>&1 && $$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null \
	&& { echo $$p; break; }; done)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
PORT ?= 8080
CODE := functions tests $(wildcard bench)

.PHONY: help dev test lint fmt bench requirements clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -n "$(PYTHON)" || { echo "error: Python 3.11 or newer is required (none found on PATH)" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP) ## create the virtualenv and install firecron with its dev tools

dev: $(STAMP) ## run the local stack: SQLite store, workers, dispatcher, example schedules
	FIRECRON_ALLOW_PRIVATE_TARGETS=1 $(BIN)/firecron dev --schedules schedules.yaml --port $(PORT)

test: $(STAMP) lint ## lint, type-check and run the whole test suite (starts the emulators itself)
	$(BIN)/python -m pytest

lint: $(STAMP) ## ruff and mypy
	$(BIN)/ruff check $(CODE)
	$(BIN)/ruff format --check $(CODE)
	$(BIN)/mypy

fmt: $(STAMP) ## format the code
	$(BIN)/ruff format $(CODE)
	$(BIN)/ruff check --fix $(CODE)

bench: $(STAMP) ## run the benchmarks; prints a table and writes bench/results/*.json
	$(BIN)/python -m bench

requirements: $(STAMP) ## regenerate functions/requirements.txt from pyproject
	$(BIN)/python -m firecron._requirements > functions/requirements.txt

clean: ## remove the virtualenv and caches
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
