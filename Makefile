# Two entry points, each installing everything first: `make run` and `make test`.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint lock bench clean

$(STAMP): requirements.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.lock
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $@

## run: install, then build everything (data, checkpoints, metrics, figures, report)
run: $(STAMP)
	$(BIN)/snakemake --cores all

## test: install, then run the test suite
test: $(STAMP)
	$(BIN)/python -m pytest

## lint: the static checks CI runs before the tests (ruff, ruff format, snakefmt, Snakemake's linter)
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/snakefmt --check Snakefile rules
	$(BIN)/snakemake --lint

## lock: re-pin every dependency for all platforms (needs uv: pip install uv)
lock:
	uv pip compile pyproject.toml --all-extras --universal --python-version 3.11 -o requirements.lock

## bench: speed and memory measurements, printed as tables
bench: $(STAMP)
	$(BIN)/python benchmarks/bench_gradcam.py
	$(BIN)/python benchmarks/bench_explain.py
	$(BIN)/python benchmarks/bench_train.py
	$(BIN)/python benchmarks/bench_imports.py

## clean: remove everything the build generated (datasets you put under data/raw/ stay)
clean:
	find data -mindepth 1 -maxdepth 1 ! -name raw -exec rm -rf {} + 2>/dev/null || true
	rm -rf results figures logs benchmarks/results report/_output report/_generated report/_variables.yml report/.quarto .snakemake
