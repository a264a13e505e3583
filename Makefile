# Two entry points for a fresh machine: `make run` and `make test` (see README.md).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SYSTEM_PACKAGES := dcmtk dicom3tools orthanc redis-server postgresql chromium chromium-driver
PYTEST_ARGS ?=
# What `make run` runs after installing (README.md, "What `make run` shows");
# tests/e2e/test_first_use.py runs `make run` and checks what this prints.
RUN_COMMAND := $(BIN)/triage serve --demo

.PHONY: run test install system-deps lint typecheck unit integration clean

$(STAMP): pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# CPU torch first, so the project's torch range never pulls a CUDA build.
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

system-deps:
	@missing=""; for p in $(SYSTEM_PACKAGES); do \
	  dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  echo "installing Debian packages:$$missing"; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq \
	    --no-install-recommends $$missing >/dev/null; \
	fi

run: install
	$(RUN_COMMAND)

lint: install
	$(BIN)/ruff check triage workers tests benchmarks migrations setup.py

typecheck: install
	$(BIN)/mypy

# pytest exits 5 when a selection holds no test: that is not a failure here.
define pytest
	@start=$$(date +%s); $(BIN)/python -m pytest $(1) $(PYTEST_ARGS); rc=$$?; \
	echo "phase $(2): $$(( $$(date +%s) - start ))s (pytest exit $$rc)"; \
	if [ $$rc -ne 0 ] && [ $$rc -ne 5 ]; then exit $$rc; fi
endef

unit: install
	$(call pytest,tests/unit -q -p no:cacheprovider,unit)

integration: install system-deps
	$(call pytest,tests/integration tests/e2e -q -p no:cacheprovider,integration+e2e)

test:
	@start=$$(date +%s); $(MAKE) --no-print-directory install system-deps; \
	echo "phase install: $$(( $$(date +%s) - start ))s"
	$(MAKE) --no-print-directory lint typecheck unit integration

clean:
	rm -rf $(VENV) triage-data .mypy_cache .ruff_cache .pytest_cache
