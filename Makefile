# Two commands for a fresh machine (README.md): `make demo` and `make test`.
VENV ?= .venv
BIN := $(VENV)/bin
PYTHON ?= python3

.PHONY: setup demo test lint format browser bench-cpu

setup: $(VENV)/.installed

# torch is pinned through constraints.txt: 2.13.0 is the CPU build that installs from a local file
# here; an unpinned torch would pull the registry's multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -c constraints.txt "torch==2.13.0"
	$(BIN)/pip install -q -c constraints.txt -e ".[dev]"
	touch $@

demo: setup
	$(BIN)/tokenreel demo

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# The console's browser tests drive the system's Chromium (Debian's package, run headless by
# Playwright from its path; no browser download). Installed here only when missing (needs root).
CHROMIUM ?= /usr/bin/chromium
browser:
	@test -x $(CHROMIUM) || (apt-get update -q && apt-get install -y -q chromium)

test: lint browser
	$(BIN)/python -m pytest -q
