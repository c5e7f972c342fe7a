# The README's commands. Each creates .venv itself on a fresh machine (Python >= 3.10, ~5 GB, a few minutes).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: env demo test lint bench gpu-check clean-env

env: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev,report,ray]"
	# open_clip's trainer (tests/test_trainer_loop.py runs examples/open_clip_rounds.sh with it) needs the
	# webdataset its training requirements pin; kept apart from curate's and used only by that trainer
	$(BIN)/python -m pip install --quiet --no-deps --upgrade --target $(VENV)/open_clip_train-deps webdataset==0.2.86
	touch $(STAMP)

# The main job on the embedded sample shards and tiny model, offline: embed → select → export →
# SCAN rounds with the reference trainer → report (demo-run/reports/report.html).
demo: $(STAMP)
	HF_HUB_OFFLINE=1 CURATE_OFFLINE=1 $(BIN)/curate demo --out demo-run

# All tests on CPU (GPU tests skip themselves). pytest's exit code 5 (no tests collected) fails too.
test: $(STAMP)
	@scripts/ensure_chromium.sh
	HF_HUB_OFFLINE=1 OMP_WAIT_POLICY=PASSIVE $(BIN)/python -m pytest -q -ra tests; rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "error: pytest collected no tests" >&2; fi; exit $$rc

lint: $(STAMP)
	$(BIN)/ruff check curate tests benchmarks scripts examples

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py --quick

# On a GPU machine (docs/gpu_check.md): every CUDA path and the GPU figures in ~8 minutes, results in $OUT.
# It uses the machine's Python and torch, plus the wheels of scripts/gpu_wheels.sh in .whl/; no venv.
# Its CPU run, `bash scripts/gpu_check.sh --cpu`, is part of make test (tests/test_gpu_check.py).
gpu-check:
	bash scripts/gpu_check.sh

clean-env:
	rm -rf $(VENV)
