# The README's two commands are the contract: `make demo` and `make test`, from a fresh clone.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
DEMO_DATA ?= data/synthetic
DEMO_OUT ?= results/demo
# pip's extra local indexes print a warning per package; keep real errors visible.
PIP_QUIET := grep -v "is ignored: it is neither a file nor a directory" || true

.PHONY: venv demo test test-fast lint bench ui clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || python3 -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip 2>&1 | $(PIP_QUIET)
	$(BIN)/pip install -q -e '.[test]' 2>&1 | $(PIP_QUIET)
	$(BIN)/python -c "import runner, models, ray, mlflow, timm, torch"
	touch $(STAMP)

venv: $(STAMP)

# The smoke grid on built-in synthetic data, local Ray and local MLflow (./mlruns), then the best
# in-budget trial registered as `smoke@champion`, a submission written from it and scored.
demo: $(STAMP)
	$(BIN)/runner data prepare synthetic $(DEMO_DATA) --overwrite
	$(BIN)/runner run experiments/smoke.yaml --data $(DEMO_DATA) --register smoke --submission $(DEMO_OUT)/submission.csv --tta 2
	$(BIN)/runner score $(DEMO_OUT)/submission.csv $(DEMO_DATA)/solution.csv
	$(BIN)/runner report smoke

# Two pytest workers, a test file each at a time (tests/conftest.py sends the files that start Ray first):
# a Ray test leaves a core idle ~40% of its time (process start-up, polls), which the other worker fills.
TEST_WORKERS ?= 2
test: $(STAMP)
	$(BIN)/ruff check runner models tests bench
	$(BIN)/pytest -q -ra --durations=15 -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

test-fast: $(STAMP)
	$(BIN)/pytest -q -m "not ray and not slow" -n $(TEST_WORKERS)

lint: $(STAMP)
	$(BIN)/ruff check runner models tests bench

bench: $(STAMP)
	$(BIN)/python bench/augment.py
	$(BIN)/python bench/ray_overhead.py
	$(BIN)/python bench/tune_overhead.py
	$(BIN)/python bench/gpu.py --quick
	$(BIN)/python bench/verify.py
	$(BIN)/python bench/logged_model_cost.py

# MLflow UI on loopback only; on a cluster, port-forward it (see docs/cluster.md).
ui: $(STAMP)
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlruns/mlflow.db --host 127.0.0.1 --port 5000

clean:
	rm -rf results mlruns data/synthetic .pytest_cache
