# All set-up happens here, so that `make demo` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test lint lock bench

$(STAMP): requirements.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.lock
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/appliance demo --out demo-output

lint: $(STAMP)
	$(BIN)/ruff check appliance tests benchmarks docs
	$(BIN)/ruff format --check appliance tests benchmarks docs

test: lint
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python benchmarks/inference.py

lock: $(STAMP)
	head -2 requirements.lock > requirements.lock.new
	$(BIN)/pip freeze --exclude-editable | grep -v '^microscope-automl' >> requirements.lock.new
	mv requirements.lock.new requirements.lock
