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

.PHONY: install demo test test-all bench
install: $(STAMP)

demo: $(STAMP)
	$(BIN)/vidbooth demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-all: $(STAMP)
	RUN_SLOW=1 $(BIN)/python -m pytest -q

bench: $(STAMP)
	for f in $(filter-out benchmarks/bench_demo.py,$(sort $(wildcard benchmarks/bench_*.py))) benchmarks/bench_demo.py; do \
		echo "== $$f"; $(BIN)/python $$f || exit 1; done
