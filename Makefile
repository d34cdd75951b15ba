# Two commands for a newcomer: `make demo` and `make test`. Each installs what it needs.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Reinstall when pyproject.toml changes.
STAMP := $(VENV)/.installed-$(shell sha1sum pyproject.toml 2>/dev/null | cut -c1-12)

.PHONY: install demo test bench lint format services clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@bash scripts/system-deps.sh
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,warehouse]'
	@rm -f $(VENV)/.installed-*
	@touch $@

services:
	@bash scripts/services.sh

demo: install
	$(BIN)/python -m central.demo

test: install services
	$(BIN)/python -m pytest

bench: install services
	$(BIN)/python -m bench.buffer
	$(BIN)/python -m bench.e2e --meters 1000 --days 2 --gateways 2

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check edge_agent central bench simulator ml
	$(BIN)/mypy

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format edge_agent central bench simulator ml tests

clean:
	rm -rf var .pytest_cache
