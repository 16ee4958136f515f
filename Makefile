# The two commands of the README:
#   make demo   set everything up (first time: a few minutes) and run the main job
#   make test   set everything up, run the checks (ruff, mypy) and the whole test suite
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_OUT ?= demo-out

.PHONY: install demo check test bench clean help

help:
	@echo "make demo   set up and run the demo (outputs in $(DEMO_OUT)/)"
	@echo "make test   set up, run the checks (ruff, mypy) and the test suite"
	@echo "make check  set up and run ruff and mypy only"
	@echo "make bench  run the benchmarks in benchmarks/"

install:
	@VENV=$(VENV) PYTHON=$(PYTHON) bash scripts/setup-env.sh

demo: install
	@VENV=$(VENV) DEMO_OUT=$(DEMO_OUT) bash scripts/demo.sh

# Lint (pyflakes, pycodestyle, import order, complexity, statements per function) and type checks;
# settings in pyproject.toml.
check: install
	$(VENV)/bin/ruff check facerecon tests benchmarks scripts
	$(VENV)/bin/mypy

test: check
	$(PY) -m pytest -q

bench: install
	@for f in benchmarks/bench_*.py; do echo "== $$f"; $(PY) $$f || exit 1; done

clean:
	rm -rf $(DEMO_OUT) .pytest_cache build *.egg-info
