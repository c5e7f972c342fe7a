# The README's commands. Each creates .venv itself on a fresh machine.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: env demo test lint bench clean-env

env: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev,report]"
	touch $(STAMP)

demo: $(STAMP)
	CURATE_OFFLINE=1 $(BIN)/curate demo --out demo-run

test: $(STAMP)
	$(BIN)/python -m pytest -q -ra tests

lint: $(STAMP)
	$(BIN)/ruff check curate tests benchmarks scripts examples

bench: $(STAMP)
	$(BIN)/python benchmarks/embed_throughput.py --quick

clean-env:
	rm -rf $(VENV)
