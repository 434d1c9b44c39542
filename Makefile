# Two commands for a fresh machine:  `make run` (the default pipeline) and `make test`.
# Both create the local virtual environment .venv first and install the project into it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# Training runs with tcmalloc (else jemalloc) preloaded where the machine has it (`make allocator`
# installs Debian's tcmalloc): ~17% off the default search's epochs on 2 cores (README).
# ALLOCATOR=system keeps glibc's malloc; tcmalloc, jemalloc or a library path insist on one.
ALLOCATOR ?= auto
# An allocator asked for by name that is not installed stops the target with the reason.
PRELOAD = preload="$$($(BIN)/python -m pnfs_pipeline.engine.allocator --ld-preload $(ALLOCATOR))" && LD_PRELOAD="$$preload"

.PHONY: setup run test lint viz benchmark allocator clean

# A .venv that cannot run pip (a venv made without Debian's python3-venv, or by a Python older
# than 3.10) is made anew.
$(STAMP): pyproject.toml
	$(BIN)/python -c 'import sys, pip; assert sys.version_info >= (3, 10)' 2>/dev/null || $(PYTHON) -m venv --clear $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

run: $(STAMP)
	$(PRELOAD) $(BIN)/kedro run

benchmark: $(STAMP)
	$(PRELOAD) $(BIN)/python -m pnfs_pipeline.benchmarks --allocator $(ALLOCATOR) $(BENCHMARK_ARGS)

allocator:
	@command -v apt-get >/dev/null || { echo "no apt-get here: install gperftools' tcmalloc or jemalloc with the system's package manager"; exit 1; }
	sudo=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	$$sudo apt-get install -y libtcmalloc-minimal4 || { $$sudo apt-get update && $$sudo apt-get install -y libtcmalloc-minimal4; }

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .

viz: $(STAMP)
	$(BIN)/kedro viz run

clean:
	rm -rf $(VENV) mlflow.db mlruns .pytest_cache
