# The two commands a newcomer needs: `make demo` and `make test`. Each builds its own
# virtual environment (.venv) from nothing but python3 and the package registry.

PYTHON ?= python3
VENV   := .venv
BIN    := $(CURDIR)/$(VENV)/bin
# __init__.py holds the version, which the installed command's metadata carries (`--version`, pip).
STAMP  := $(VENV)/.installed-$(shell cat requirements-dev.txt functions/requirements.txt pyproject.toml functions/cloudmap_reactor/__init__.py | cksum | cut -d' ' -f1)

# Only what the Lambda functions import: cold-import times are measured in here by `make bench`.
RUNTIME_VENV := .venv-runtime
RUNTIME_STAMP := $(RUNTIME_VENV)/.installed-$(shell cat functions/requirements.txt | cksum | cut -d' ' -f1)

# checkov (static security scan of the template) pins packages that clash with the SAM CLI's.
SCAN_VENV := .venv-scan
SCAN_STAMP := $(SCAN_VENV)/.installed-checkov-3.3.30

# What `make package` writes: template.yaml translated to plain CloudFormation (no Transform), for
# service-managed StackSets. FROM=the output of `sam package` makes it deployable (artefacts in S3).
PACKAGED := build/packaged/cloudmap-reactor.cfn.yaml
FROM ?= template.yaml
VERSION = $(shell sed -n 's/^__version__ = "\([^"]*\)".*/\1/p' functions/cloudmap_reactor/__init__.py)

# Python 3.11 or newer, checked before any venv is made, with one line that says so.
CHECK_PYTHON = @$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null || { \
	echo "cloudmap-reactor needs Python 3.11 or newer; $(PYTHON) is $$($(PYTHON) --version 2>&1 || echo missing): run make PYTHON=python3.12 $(MAKECMDGOALS)" >&2; exit 1; }

export SAM_CLI_TELEMETRY := 0
export CHECKOV := $(CURDIR)/$(SCAN_VENV)/bin/checkov
export PATH := $(BIN):$(PATH)

.PHONY: help venv lint typecheck unit validate test demo demo-server bench bench-probes redrive doctor plan build package release-tag clean

help:  ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(STAMP):
	$(CHECK_PYTHON)
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	$(BIN)/python -m pip install --quiet --no-deps --editable .  # the cloudmap-reactor command
	touch $@

venv: $(STAMP)  ## Create .venv with everything below (only when the requirements changed)

$(SCAN_STAMP):
	$(CHECK_PYTHON)
	rm -rf $(SCAN_VENV)
	$(PYTHON) -m venv $(SCAN_VENV)
	$(SCAN_VENV)/bin/python -m pip install --quiet checkov==3.3.30
	touch $@

$(RUNTIME_STAMP):
	$(CHECK_PYTHON)
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

demo: venv  ## Replay events/, then three poller invocations, through the real handlers against a local emulator
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

.PHONY: status undo
status: venv  ## One screen on the deployed stack: version, switches, quarantine, dead letters, alarms (STACK=name)
	$(BIN)/cloudmap-reactor status --stack $(or $(STACK),cloudmap-reactor) $(ARGS)

undo: venv  ## Put back what the quarantine took out (STACK=name, ARGS="--since 30m", dry run unless --apply)
	$(BIN)/cloudmap-reactor undo --stack $(or $(STACK),cloudmap-reactor) $(ARGS)

build: venv  ## sam build (no Docker needed)
	$(BIN)/sam build

package: venv $(SCAN_STAMP)  ## Plain-CloudFormation template for StackSets -> build/packaged/ (FROM=sam package output), cfn-lint and checkov
	$(BIN)/python -m devtools.package --template $(FROM) --output $(PACKAGED)
	$(BIN)/cfn-lint $(PACKAGED)
	$(CHECKOV) -f $(PACKAGED) --framework cloudformation --compact --quiet --skip-download

release-tag:  ## Tag HEAD vX.Y.Z (the package version) once CHANGELOG.md has its section; never pushes
	@grep -q '^## \[$(VERSION)\]' CHANGELOG.md || { echo "CHANGELOG.md has no section ## [$(VERSION)]" >&2; exit 1; }
	@test -z "$$(git status --porcelain)" || { echo "the work tree has uncommitted changes" >&2; exit 1; }
	git tag -a v$(VERSION) -m "cloudmap-reactor $(VERSION)"
	@echo "tagged v$(VERSION); push it yourself: git push origin v$(VERSION)"

clean:  ## Remove the virtual environment and build output
	rm -rf $(VENV) $(RUNTIME_VENV) $(SCAN_VENV) .aws-sam build .pytest_cache .mypy_cache .ruff_cache
