# bcd-node: the two commands a new machine needs are `make run` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip --disable-pip-version-check --quiet
CONSTRAINTS := constraints.txt
PYTEST_ARGS ?=

.PHONY: run install install-test deps-debian lint test test-quick clean help

help:
	@echo "make run         install into $(VENV) and start the node (SQLite, bundled model, local ports)"
	@echo "make test        install test extras and Debian test peers, then run the whole suite"
	@echo "make lint        ruff, mypy (strict) and the import contracts (docs/architecture.md)"
	@echo "make test-quick  unit tests only (no DCMTK/Orthanc/PostgreSQL/Chromium, nothing slow)"
	@echo "make clean       remove the virtual environment and caches (keeps ./data)"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip

$(VENV)/.installed: setup.cfg pyproject.toml $(CONSTRAINTS) | $(BIN)/python
	$(PIP) install -c $(CONSTRAINTS) -e .
	touch $@

$(VENV)/.installed-test: setup.cfg pyproject.toml $(CONSTRAINTS) | $(BIN)/python
	$(PIP) install -c $(CONSTRAINTS) -e '.[test]'
	touch $@ $(VENV)/.installed

install: $(VENV)/.installed

install-test: $(VENV)/.installed-test

run: install
	$(BIN)/bcd-node db upgrade
	exec $(BIN)/bcd-node serve

deps-debian:
	@scripts/install-debian-deps

lint: install-test
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/mypy

test: install-test deps-debian lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-quick: install-test
	$(BIN)/python -m pytest -m "not integration and not browser and not slow" $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
