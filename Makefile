# Outbox: `make run` (development: services, worker, webhooks, local sinks) and `make test`.
# Works on a fresh Debian 12 machine as root: installs what is missing first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# prometheus: Debian ships promtool in it; the tests check the alerting rules with it
# opendkim-tools: opendkim-testmsg, the independent DKIM verifier of tests/dkim_verifiers.py
# ripmime: a MIME parser in C, the second reader of attachments (tests/integration/test_attachments.py)
DEBS := rabbitmq-server redis-server postfix prometheus chromium opendkim-tools fonts-noto-cjk \
	ripmime

.PHONY: run test lint bench services stop-services deps clean definitions

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { apt-get update -qq && apt-get install -y -qq python3; }
	@$(PYTHON) -m venv --help >/dev/null 2>&1 && $(PYTHON) -c 'import ensurepip' 2>/dev/null || \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,lint]'
	touch $(STAMP)

deps: $(STAMP)
	@missing=""; for p in $(DEBS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

services: deps
	$(PYTHON) scripts/services.py start dev

stop-services:
	$(PYTHON) scripts/services.py stop dev

run: services $(STAMP)
	mkdir -p var/mail
	$(VENV)/bin/outbox run --dev

test: deps $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

# ruff (E, F, W, I, B, UP, ASYNC) on everything; mypy --strict on the product packages
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

bench: deps $(STAMP)
	$(PY) -m pip install -q -e '.[test,bench]'
	$(PY) -m benchmarks $(BENCH_ARGS)

definitions: $(STAMP)
	$(PY) -c 'import json; from sender.topology import definitions; from config.settings import DEFAULT_RETRY_TIERS as T; print(json.dumps(definitions(T), indent=2))' > deploy/rabbitmq/definitions.json

clean:
	rm -rf $(VENV) var
