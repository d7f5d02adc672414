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

.PHONY: help dev test lint fmt hooks bench chaos requirements clean flaky chromium tasks-emulator

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

# Test processes (pytest-xdist); each starts its own emulators. TEST_WORKERS=0 runs in one.
TEST_WORKERS ?= 2

test: $(STAMP) lint chromium tasks-emulator ## lint, type-check and run the whole test suite (starts the emulators itself; TEST_WORKERS=2 processes)
	$(BIN)/python -m pytest -n $(TEST_WORKERS)

# The Cloud Tasks delivery tests run gcloud-tasks-emulator (PyPI), which pins an old
# protobuf: it gets a virtualenv of its own (tests/_tasks_emulator.py starts it).
TASKS_VENV := .venv-tasks-emulator
TASKS_EMULATOR := $(TASKS_VENV)/bin/gcloud-tasks-emulator

$(TASKS_EMULATOR):
	@test -n "$(PYTHON)" || { echo "error: Python 3.11 or newer is required (none found on PATH)" >&2; exit 1; }
	$(PYTHON) -m venv $(TASKS_VENV)
	$(TASKS_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(TASKS_VENV)/bin/python -m pip install --quiet 'gcloud-tasks-emulator>=0.6,<0.7'

tasks-emulator: $(TASKS_EMULATOR) ## the Cloud Tasks emulator's own virtualenv (for tests/test_cloud_tasks.py)

# The web console's browser tests (tests/test_browser.py) drive Debian's chromium with
# Playwright (no browser download). Missing, it is installed when apt-get can (as root,
# or with passwordless sudo), saying so; otherwise those tests are skipped, except under
# CI=true, where a chromium that cannot be had fails the run here, loudly.
CHROMIUM ?= $(or $(FIRECRON_CHROMIUM),$(shell command -v chromium 2>/dev/null),/usr/bin/chromium)

chromium: ## install chromium for the browser tests when it is missing (apt-get)
	@if [ -x "$(CHROMIUM)" ]; then exit 0; fi; \
	sudo=""; can=no; \
	if command -v apt-get >/dev/null 2>&1; then \
		if [ "$$(id -u)" = 0 ]; then can=yes; elif sudo -n true 2>/dev/null; then can=yes; sudo="sudo -n"; fi; \
	fi; \
	if [ $$can = yes ]; then \
		echo "$@: $(CHROMIUM) is missing; installing Debian's chromium for the browser tests (apt-get install -y chromium)"; \
		$$sudo apt-get update -qq && $$sudo apt-get install -y -qq chromium >/dev/null || exit 1; \
	elif [ "$$CI" = true ]; then \
		echo "error: $(CHROMIUM) is missing and apt-get cannot install it here; CI must run the browser tests: install chromium (or set FIRECRON_CHROMIUM)" >&2; exit 1; \
	else \
		echo "$@: $(CHROMIUM) is missing and apt-get cannot install it here; tests/test_browser.py will be skipped (apt-get install -y chromium, or set FIRECRON_CHROMIUM)"; \
	fi

# The tests with real worker processes, sinks and emulators: the ones timing could break.
FLAKY_TESTS := tests/test_end_to_end.py tests/test_worker.py tests/test_notifications.py tests/test_notify.py tests/test_orchestration_workers.py tests/test_chains.py tests/test_pipelines.py tests/test_waits.py tests/test_state_cli.py tests/test_continuous.py tests/test_continuous_processes.py tests/test_continuous_cli.py tests/test_operations.py tests/test_logs.py tests/test_api.py tests/test_browser.py tests/test_cloud_tasks.py tests/test_dispatch_scale_http.py tests/test_shards_dispatch.py tests/test_continuation.py tests/test_leases.py tests/test_tls_resumption.py tests/test_notify_sinks.py tests/test_client.py tests/test_notify_probe.py
ROUNDS ?= 20

flaky: $(STAMP) chromium tasks-emulator ## run the end-to-end, worker, notification and orchestration tests ROUNDS times (default 20); report every failure
	@failures=0; \
	for round in $$(seq 1 $(ROUNDS)); do \
		out=$$($(BIN)/python -m pytest -q -rfE -p no:cacheprovider -n $(TEST_WORKERS) $(FLAKY_TESTS) 2>&1); rc=$$?; \
		if [ $$rc -eq 0 ]; then \
			echo "round $$round/$(ROUNDS): $$(tail -n 1 <<<"$$out")"; \
		else \
			lines=$$(grep -E '^(FAILED|ERROR) ' <<<"$$out"); \
			[ -n "$$lines" ] || lines="pytest exited with $$rc: $$(tail -n 1 <<<"$$out")"; \
			while IFS= read -r line; do echo "round $$round/$(ROUNDS): $$line"; done <<<"$$lines"; \
			failures=$$((failures + $$(wc -l <<<"$$lines"))); \
		fi; \
	done; \
	echo "flaky: $$failures failures in $(ROUNDS) rounds"; \
	[ $$failures -eq 0 ]

# mypy's scope (the package and tests/) is [tool.mypy] files in pyproject.toml.
lint: $(STAMP) ## ruff and mypy --strict, on the code and the tests
	$(BIN)/ruff check $(CODE)
	$(BIN)/ruff format --check $(CODE)
	$(BIN)/mypy

fmt: $(STAMP) ## format the code
	$(BIN)/ruff format $(CODE)
	$(BIN)/ruff check --fix $(CODE)

hooks: $(STAMP) ## install the git pre-commit hook: ruff, ruff format and mypy (.pre-commit-config.yaml)
	$(BIN)/pre-commit install

bench: $(STAMP) ## run the benchmarks; prints a table and writes bench/results/*.json
	$(BIN)/python -m bench

chaos: $(STAMP) ## run the chaos suite (about 15 min, 127.0.0.1 only); prints a table and writes bench/results/chaos.json
	$(BIN)/python -m bench.chaos

requirements: $(STAMP) ## pin functions/requirements.txt from pyproject with uv (needs the registry; keeps pins that still fit)
	$(BIN)/python -m firecron._requirements functions/requirements.txt

clean: ## remove the virtualenv and caches
	rm -rf $(VENV) $(TASKS_VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis

# --- Google Cloud (infra/) -------------------------------------------------------------
# make deploy PROJECT=my-project REGION=europe-west1   (TF_ARGS=-auto-approve to skip the prompt)
.PHONY: deploy plan destroy schedules-apply logs infra-check smoke

TF := terraform -chdir=infra
TF_VARS = -var project_id=$(PROJECT) -var region=$(REGION)$(if $(DATABASE), -var 'firestore_database=$(DATABASE)')
TF_ARGS ?=
SCHEDULES ?= schedules.yaml
FUNCTION ?= dispatch
LIMIT ?= 50
ADC_HINT := it uses gcloud application-default credentials: run gcloud auth application-default login first
TF_HINT := install Terraform 1.11 or newer: https://developer.hashicorp.com/terraform/install
GCLOUD_HINT := install the Google Cloud CLI (https://cloud.google.com/sdk/docs/install) and run gcloud auth application-default login

# DATABASE (optional): the Firestore database firecron uses, (default) when empty.
FIRESTORE_DATABASE = $(or $(DATABASE),(default))
STORE_URL = firestore://$(PROJECT)$(if $(filter-out (default),$(FIRESTORE_DATABASE)),/$(FIRESTORE_DATABASE))
# A shell snippet printing -var create_firestore_database=false when the database exists
# (Firebase and App Engine projects have a (default) one; creating it again fails with
# ALREADY_EXISTS), nothing when gcloud says NOT_FOUND, and one line of advice otherwise.
# Skipped when TF_ARGS sets create_firestore_database itself.
DB_CHECK = $(if $(findstring create_firestore_database,$(TF_ARGS)),,$$(if out=$$(gcloud firestore databases describe --database='$(FIRESTORE_DATABASE)' --project=$(PROJECT) --format='value(name)' 2>&1); then \
	echo "$@: Firestore database $(FIRESTORE_DATABASE) exists; reusing it (-var create_firestore_database=false)" >&2; \
	echo "-var create_firestore_database=false"; \
	elif ! grep -q NOT_FOUND <<<"$$out"; then \
	echo "$@: could not tell whether Firestore database $(FIRESTORE_DATABASE) exists ($$(head -n 1 <<<"$$out")); if it does, add TF_ARGS=\"-var create_firestore_database=false\"" >&2; \
	fi))

# $(call need-var,NAME,usage): one clear line and exit 2 when the make variable NAME is empty.
need-var = @test -n "$($(1))" || { echo "error: $(1) is required: make $@ $(2)" >&2; exit 2; }
# $(call need-tool,COMMAND,hint): one clear line and exit 1 when COMMAND is not on PATH.
need-tool = @command -v $(1) >/dev/null 2>&1 || { echo "error: $(1) not found on PATH; $(2)" >&2; exit 1; }

deploy: ## build and deploy to Google Cloud: make deploy PROJECT=my-project REGION=europe-west1
	$(call need-var,PROJECT,PROJECT=my-project REGION=europe-west1)
	$(call need-var,REGION,PROJECT=$(or $(PROJECT),my-project) REGION=europe-west1)
	$(call need-tool,terraform,$(TF_HINT))
	$(call need-tool,gcloud,$(GCLOUD_HINT))
	$(MAKE) --no-print-directory requirements
	$(TF) init -input=false
	$(TF) apply $(TF_VARS) $(DB_CHECK) $(TF_ARGS)

plan: ## show what deploy would change (PROJECT, REGION)
	$(call need-var,PROJECT,PROJECT=my-project REGION=europe-west1)
	$(call need-var,REGION,PROJECT=$(or $(PROJECT),my-project) REGION=europe-west1)
	$(call need-tool,terraform,$(TF_HINT))
	$(call need-tool,gcloud,$(GCLOUD_HINT))
	$(MAKE) --no-print-directory requirements
	$(TF) init -input=false
	$(TF) plan $(TF_VARS) $(DB_CHECK) $(TF_ARGS)

destroy: ## delete what deploy created; a created Firestore database and its data stay (PROJECT, REGION)
	$(call need-var,PROJECT,PROJECT=my-project REGION=europe-west1)
	$(call need-var,REGION,PROJECT=$(or $(PROJECT),my-project) REGION=europe-west1)
	$(call need-tool,terraform,$(TF_HINT))
	$(call need-tool,gcloud,$(GCLOUD_HINT))
	$(TF) init -input=false
	$(TF) destroy $(TF_VARS) $(TF_ARGS)

schedules-apply: ## load schedules.yaml into the deployed store (PROJECT; SCHEDULES, DATABASE, FIRECRON_NAMESPACE optional)
	$(call need-var,PROJECT,PROJECT=my-project [SCHEDULES=schedules.yaml]; $(ADC_HINT))
	@test -f "$(SCHEDULES)" || { echo "error: $(SCHEDULES) not found: make $@ PROJECT=$(PROJECT) SCHEDULES=path/to/schedules.yaml" >&2; exit 2; }
	@$(MAKE) --no-print-directory venv
	@# The deployed functions' timeouts, when this checkout deployed them: a continuous
	@# window that does not fit its function's timeout is refused (exit 2).
	FIRECRON_FUNCTION_TIMEOUTS="$$($(TF) output -json function_timeouts 2>/dev/null || true)" \
	$(if $(FIRECRON_NAMESPACE),FIRECRON_NAMESPACE=$(FIRECRON_NAMESPACE) )$(BIN)/firecron apply $(SCHEDULES) --store firestore://$(PROJECT)$(if $(DATABASE),/$(DATABASE))

logs: ## recent logs of a function: make logs PROJECT=p REGION=r [FUNCTION=dispatch] [LIMIT=50]
	$(call need-var,PROJECT,PROJECT=my-project REGION=europe-west1 [FUNCTION=dispatch])
	$(call need-var,REGION,PROJECT=$(or $(PROJECT),my-project) REGION=europe-west1 [FUNCTION=dispatch])
	$(call need-tool,gcloud,$(GCLOUD_HINT))
	gcloud functions logs read $(FUNCTION) --project $(PROJECT) --region $(REGION) --gen2 --limit $(LIMIT)

# The scheduler job infra/main.tf names "<namespace>-tick"; dispatch's logs are its Cloud
# Run service's, and the job's own attempt logs show the calls that never reached it.
SMOKE_JOB = $(subst _,-,$(or $(FIRECRON_NAMESPACE),firecron))-tick
SMOKE_FILTER = (resource.type="cloud_run_revision" AND resource.labels.service_name="dispatch") OR (resource.type="cloud_scheduler_job" AND resource.labels.job_id="$(SMOKE_JOB)")
SMOKE := $(BIN)/python -m firecron._smoke

smoke: ## after deploy, prove it works: a forced tick, its logs, a hello run (PROJECT, REGION; DATABASE, FIRECRON_NAMESPACE optional)
	$(call need-var,PROJECT,PROJECT=my-project REGION=europe-west1 [DATABASE=(default)])
	$(call need-var,REGION,PROJECT=$(or $(PROJECT),my-project) REGION=europe-west1 [DATABASE=(default)])
	$(call need-tool,gcloud,$(GCLOUD_HINT))
	@$(MAKE) --no-print-directory venv
	$(SMOKE) scheduler -- gcloud scheduler jobs run $(SMOKE_JOB) --location $(REGION) --project $(PROJECT)
	$(SMOKE) logs -- gcloud logging read '$(SMOKE_FILTER)' --project $(PROJECT) --freshness 5m --order desc --limit 50 --format json
	$(if $(FIRECRON_NAMESPACE),FIRECRON_NAMESPACE=$(FIRECRON_NAMESPACE) )$(SMOKE) hello --store '$(STORE_URL)' --firecron $(BIN)/firecron

infra-check: $(STAMP) ## terraform fmt -check (when terraform is installed) and the offline infra tests
	@if command -v terraform >/dev/null 2>&1; then \
		terraform fmt -check -recursive -diff infra; \
	else \
		echo "infra-check: terraform not on PATH; skipping terraform fmt -check" >&2; \
	fi
	$(BIN)/python -m pytest -q tests/test_infra.py
