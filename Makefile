# Two entry points for a fresh machine: `make demo` and `make test`.
# Each creates .venv if missing and installs torch==2.13.0 before anything else, so that no package
# drags in another torch build (pip's configured index decides which: a CPU wheel on our CI machines;
# docs/installation.md says how to get one elsewhere).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $(STAMP)

FLOORS := .venv-floors
FLOORS_PYTHON ?= python3.11

.PHONY: install demo test test-all test-floors bench coverage
install: $(STAMP)

demo: $(STAMP)
	$(BIN)/vidbooth demo

# the tests on every core (pytest-xdist), at most 4 processes
PARALLEL := -n auto --maxprocesses 4

test: $(STAMP)
	$(BIN)/python -m pytest -q $(PARALLEL)

test-all: $(STAMP)
	RUN_SLOW=1 $(BIN)/python -m pytest -q $(PARALLEL)

# Which lines of vidbooth no test runs, in the commands the tests launch too (tests/coverage_hook/sitecustomize.py):
# the fast suite with coverage.py in every process, then the lines missed per file. Not part of CI. Processes
# that a test starts with its own sitecustomize.py (some multi-process tests) are not measured.
coverage: $(STAMP)
	$(BIN)/python -m pip install -q coverage
	rm -rf .coverage-data
	-VIDBOOTH_COVERAGE=$(CURDIR) PYTHONPATH=$(CURDIR)/tests/coverage_hook $(BIN)/python -m pytest -q $(PARALLEL)
	$(BIN)/python -m coverage combine -q --data-file=.coverage-data/.coverage .coverage-data
	$(BIN)/python -m coverage report --data-file=.coverage-data/.coverage -m --skip-covered

# The suite on the oldest versions pyproject.toml allows (tests/floors.txt), in a venv of its own, on Python 3.11
# (some floors have no wheels for 3.13). Not part of CI: on x86_64 PyPI's torch 2.12 is a CUDA build of several GB.
test-floors:
	test -x $(FLOORS)/bin/python || $(FLOORS_PYTHON) -m venv $(FLOORS)
	$(FLOORS)/bin/python -m pip install -q -c tests/floors.txt torch
	$(FLOORS)/bin/python -m pip install -q -c tests/floors.txt -e ".[test]"
	$(FLOORS)/bin/python -m pytest -q $(PARALLEL)

bench: $(STAMP)
	for f in $(filter-out benchmarks/bench_demo.py,$(sort $(wildcard benchmarks/bench_*.py))) benchmarks/bench_demo.py; do \
		echo "== $$f"; $(BIN)/python $$f || exit 1; done
