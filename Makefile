# All set-up happens here, so that `make demo` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
UV := $(BIN)/uv pip install --quiet --native-tls --compile-bytecode --python $(BIN)/python

.PHONY: install demo test lint lock bench deploy-check browser

$(STAMP): requirements.lock requirements-source.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# uv (its version pinned in requirements.lock) installs the lock in about 1 min where pip takes 3 min 40 s;
	# --compile-bytecode as pip does: with PYTHONDONTWRITEBYTECODE each process would otherwise compile torch anew (3 s)
	$(BIN)/pip install --quiet --disable-pip-version-check "$$(grep '^uv==' requirements.lock)"
	$(UV) -r requirements.lock
	# pyradiomics has no wheel: it builds against the numpy, setuptools and versioneer pinned above
	$(UV) --no-build-isolation --no-deps -r requirements-source.lock
	$(UV) --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

# The service on a fresh data dir with the bundled set and images dropped in; Ctrl-C stops it.
demo: $(STAMP)
	rm -rf demo-output
	$(BIN)/appliance demo --out demo-output

lint: $(STAMP)
	$(BIN)/ruff check appliance streamlit_app tests benchmarks docs
	$(BIN)/ruff format --check appliance streamlit_app tests benchmarks docs

deploy-check:
	bash scripts/check-deploy.sh

# Headless Chromium for the status page's browser test (Debian packages; needs root, as in CI).
browser:
	sh scripts/install-browser.sh

test: lint deploy-check browser
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python benchmarks/inference.py
	$(BIN)/python benchmarks/page.py

lock: $(STAMP)
	head -2 requirements.lock > requirements.lock.new
	$(BIN)/pip freeze --all --exclude-editable | grep -v -E '^(microscope-automl|pip==|pyradiomics==)' >> requirements.lock.new
	mv requirements.lock.new requirements.lock
	head -2 requirements-source.lock > requirements-source.lock.new
	$(BIN)/pip freeze | grep '^pyradiomics==' >> requirements-source.lock.new
	mv requirements-source.lock.new requirements-source.lock
