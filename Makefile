# Two commands for a newcomer: `make demo` and `make test`. Each installs what it needs.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Reinstall when pyproject.toml changes.
STAMP := $(VENV)/.installed-$(shell sha1sum pyproject.toml 2>/dev/null | cut -c1-12)
# dbt and SQLFluff in their own virtualenv: their pins clash with the main one.
DBT_VENV := .venv-dbt
DBT_REQS := "dbt-core~=1.11.0" "dbt-clickhouse~=1.10.0" "sqlfluff~=4.4" "sqlfluff-templater-dbt~=4.4"
DBT_STAMP := $(DBT_VENV)/.installed-$(shell echo '$(DBT_REQS)' | sha1sum | cut -c1-12)

# Airflow 3 and Cosmos in their own virtualenv, made only when used (make airflow, the DAG tests):
# their pins clash with dbt's, which stays in .venv-dbt.
AIRFLOW_VENV := .venv-airflow
AIRFLOW_REQS := "astronomer-cosmos~=1.15" "asyncpg>=0.29"
AIRFLOW_STAMP := $(AIRFLOW_VENV)/.installed-$(shell (sha1sum pyproject.toml; echo '$(AIRFLOW_REQS)') | sha1sum | cut -c1-12)

# Apache Superset in its own virtualenv, made only when used (make dashboards, the dashboard
# tests): SQLAlchemy 1.4 and its Flask pins clash with Airflow's and GX's.
SUPERSET_VENV := .venv-superset
SUPERSET_REQS := "apache-superset==6.1.0" "flask-caching==2.3.1" "clickhouse-connect[sqlalchemy]>=0.13" rich cachetools
SUPERSET_STAMP := $(SUPERSET_VENV)/.installed-$(shell echo '$(SUPERSET_REQS)' | sha1sum | cut -c1-12)

.PHONY: install demo test bench lint format datadict services gateway-bundle airflow-venv airflow superset-venv dashboards clean

install: $(STAMP) $(DBT_STAMP)

$(STAMP): pyproject.toml
	@bash scripts/system-deps.sh
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,warehouse]'
	@rm -f $(VENV)/.installed-*
	@touch $@

$(DBT_STAMP):
	@test -x $(DBT_VENV)/bin/python || $(PYTHON) -m venv $(DBT_VENV)
	$(DBT_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(DBT_VENV)/bin/python -m pip install --quiet $(DBT_REQS)
	@rm -f $(DBT_VENV)/.installed-*
	@touch $@

$(AIRFLOW_STAMP): pyproject.toml
	@test -x $(AIRFLOW_VENV)/bin/python || $(PYTHON) -m venv $(AIRFLOW_VENV)
	$(AIRFLOW_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(AIRFLOW_VENV)/bin/python -m pip install --quiet -e '.[dev,warehouse,airflow]' $(AIRFLOW_REQS)
	@rm -f $(AIRFLOW_VENV)/.installed-*
	@touch $@

airflow-venv: $(AIRFLOW_STAMP)

$(SUPERSET_STAMP):
	@test -x $(SUPERSET_VENV)/bin/python || $(PYTHON) -m venv $(SUPERSET_VENV)
	$(SUPERSET_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(SUPERSET_VENV)/bin/python -m pip install --quiet $(SUPERSET_REQS)
	@rm -f $(SUPERSET_VENV)/.installed-*
	@touch $@

superset-venv: $(SUPERSET_STAMP)

# Superset on 127.0.0.1:8088 over the demo's warehouse marts (docs/dashboards.md); run
# `make demo` first. EIOT_CLICKHOUSE_DSN names another warehouse (a ClickHouse server).
dashboards: install $(SUPERSET_STAMP)
	$(BIN)/python -m central.dashboards serve

# Airflow standalone on 127.0.0.1:8080 over the demo's data (docs/orchestration.md).
airflow: install $(AIRFLOW_STAMP) services
	$(AIRFLOW_VENV)/bin/python -m central.orchestration.launch

services:
	@bash scripts/services.sh

# `make demo AIRFLOW=1`: the central half through Airflow (warehouse_refresh).
demo: install $(if $(AIRFLOW),$(AIRFLOW_STAMP))
	$(BIN)/python -m central.demo $(if $(AIRFLOW),--airflow)

test: install services $(AIRFLOW_STAMP) $(SUPERSET_STAMP)
	$(BIN)/python -m pytest

bench: install services
	$(BIN)/python -m bench.buffer
	$(BIN)/python -m bench.e2e --meters 1000 --days 2 --gateways 2
	$(BIN)/python -m bench.e2e --meters 1000 --days 2 --gateways 2 --secure
	$(BIN)/python -m bench.hostile
	@# over a real 3G link (docs/links.md): network namespaces need root
	@if [ "$$(id -u)" = 0 ]; then $(BIN)/python -m bench.link --profile 3g; \
	else echo "bench.link skipped: network namespaces need root (sudo make bench)"; fi

# Offline install bundles for gateways (docs/gateway-install.md): var/gateway-bundle/*.tar.gz.
gateway-bundle: install
	$(BIN)/python -m central.gateway_bundle

# ruff (lint and format check) and mypy strict on edge_agent, central and ml (pyproject.toml).
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# docs/data-dictionary.md, from the stores themselves (tests/test_datadict.py keeps it current).
datadict: install services
	$(BIN)/python -m central.datadict

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf var .pytest_cache dbt/target dbt/logs
