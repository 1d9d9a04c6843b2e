# The two commands a newcomer needs: `make demo` and `make test`. Each builds its own
# virtual environment (.venv) from nothing but python3 and the package registry.

PYTHON ?= python3
VENV   := .venv
BIN    := $(CURDIR)/$(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat requirements-dev.txt functions/requirements.txt pyproject.toml | cksum | cut -d' ' -f1)

# Only what the Lambda functions import: cold-import times are measured in here by `make bench`.
RUNTIME_VENV := .venv-runtime
RUNTIME_STAMP := $(RUNTIME_VENV)/.installed-$(shell cat functions/requirements.txt | cksum | cut -d' ' -f1)

# checkov (static security scan of the template) pins packages that clash with the SAM CLI's.
SCAN_VENV := .venv-scan
SCAN_STAMP := $(SCAN_VENV)/.installed-checkov-3.3.30

export SAM_CLI_TELEMETRY := 0
export CHECKOV := $(CURDIR)/$(SCAN_VENV)/bin/checkov
export PATH := $(BIN):$(PATH)

.PHONY: help venv lint typecheck unit validate test demo demo-server bench bench-probes redrive doctor plan build clean

help:  ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(STAMP):
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	$(BIN)/python -m pip install --quiet --no-deps --editable .  # the cloudmap-reactor command
	touch $@

venv: $(STAMP)  ## Create .venv with everything below (only when the requirements changed)

$(SCAN_STAMP):
	rm -rf $(SCAN_VENV)
	$(PYTHON) -m venv $(SCAN_VENV)
	$(SCAN_VENV)/bin/python -m pip install --quiet checkov==3.3.30
	touch $@

$(RUNTIME_STAMP):
	rm -rf $(RUNTIME_VENV)
	$(PYTHON) -m venv $(RUNTIME_VENV)
	$(RUNTIME_VENV)/bin/python -m pip install --quiet -r functions/requirements.txt
	touch $@

lint: venv  ## ruff: lint and formatting
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: venv  ## mypy --strict over the functions, devtools and tests
	$(BIN)/mypy

unit: venv $(SCAN_STAMP)  ## pytest: handlers against the emulator, template and security scan, sam build
	$(BIN)/python -m pytest

validate: venv  ## sam validate --lint (cfn-lint) on template.yaml
	$(BIN)/sam validate --lint --region us-east-1

test: lint typecheck unit validate  ## Everything CI runs

demo: venv  ## Replay events/ and one poll through the real handlers against a local emulator
	$(BIN)/python -m devtools.demo

demo-server: venv  ## Seed the local emulator on 127.0.0.1:5000 and keep it up for sam local invoke
	$(BIN)/python -m devtools.demo --serve --port 5000

bench: venv $(RUNTIME_STAMP)  ## Measure passes at 1k/5k/10k/50k tasks vs the floor, CPU per 100 tasks, detection, imports, probes -> docs/benchmarks*
	$(BIN)/python -m devtools.bench --runtime-python $(RUNTIME_VENV)/bin/python $(if $(NOTE),--note "$(NOTE)")
	$(BIN)/python -m devtools.bench_probes

bench-probes: venv  ## Measure one pass of HTTP probes (1k/5k instances, hanging ones) -> docs/benchmarks-probes.md
	$(BIN)/python -m devtools.bench_probes

redrive: venv  ## Replay the dead-letter queue through the reactor (STACK=name, ARGS="--dry-run" …)
	$(BIN)/cloudmap-reactor redrive --stack-name $(or $(STACK),cloudmap-reactor) $(ARGS)

doctor: venv  ## Read-only check of your AWS account (your profile/region; ARGS="--cluster prod --json")
	$(BIN)/cloudmap-reactor doctor $(ARGS)

plan: venv  ## What one poller pass would deregister in your account, and why (read-only)
	$(BIN)/cloudmap-reactor plan $(ARGS)

build: venv  ## sam build (no Docker needed)
	$(BIN)/sam build

clean:  ## Remove the virtual environment and build output
	rm -rf $(VENV) $(RUNTIME_VENV) $(SCAN_VENV) .aws-sam .pytest_cache .mypy_cache .ruff_cache
