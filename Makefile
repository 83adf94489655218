# Two commands on a fresh machine: `make run` (install + whole flow on the demo data) and `make test`.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# pip on this kind of machine warns about optional local indexes that are absent; keep the output readable.
QUIET_PIP := grep -v 'is ignored: it is neither a file nor a directory' || true

.PHONY: install run test test-all lint repro clean-state help services services-down

help:
	@echo "make run       create .venv, install, run the whole flow on the demo data"
	@echo "make test      install and run the test suite (slow tests excluded)"
	@echo "make test-all  also the slow tests (real MiniLM, real data sets)"
	@echo "make lint      ruff check, ruff format --check, mypy (CI runs it before the tests)"
	@echo "make repro     dvc repro (the same stages, through DVC)"
	@echo "make services  MLflow + Prefect servers on PostgreSQL (make services-down stops them)"

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip 2>&1 | $(QUIET_PIP)
	$(BIN)/python -m pip install -q -r requirements-dev.txt 2>&1 | $(QUIET_PIP)
	PYTHONWARNINGS=ignore $(BIN)/python -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | $(QUIET_PIP)
	$(BIN)/python -m pip check
	touch $(STAMP)

install: $(STAMP)

# The demo data ships in demo/; the pipeline reads the DVC-versioned copy in data/raw/.
data/raw/reviews.csv: demo/reviews.csv | $(STAMP)
	$(BIN)/nlpops data add demo/reviews.csv

run: install data/raw/reviews.csv
	$(BIN)/nlpops run

test: install
	$(BIN)/python -m pytest -m "not slow" -q -n 2 --dist loadfile --durations=15

# Everything, the slow tests too (real MiniLM fine-tune, real data sets), in parallel like `make test`.
test-all: install
	$(BIN)/python -m pytest -m "slow or not slow" -q -n 2 --dist loadfile --durations=15

lint: install
	$(BIN)/ruff check pipelines flows tests benchmarks
	$(BIN)/ruff format --check pipelines flows tests benchmarks
	$(BIN)/mypy pipelines

repro: install data/raw/reviews.csv
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/dvc repro

clean-state:
	rm -rf .nlpops artifacts

services: install
	$(BIN)/nlpops services up

services-down: install
	$(BIN)/nlpops services down
