# One command each: `make test` and `make demo` work on a fresh machine with
# Python 3.11+ and make; the first run creates .venv and installs '.[dev]'.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# Nothing may reach the internet at run time: litellm reads its bundled cost map.
export LITELLM_LOCAL_MODEL_COST_MAP := True

.PHONY: test lint format typecheck pytest bench demo clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ is required"'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

test: lint typecheck pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

# Three test processes on two cores: most tests wait on servers and worker processes,
# not on the CPU (1266 tests: 458 s in one process, 224 s in three).
PYTEST_WORKERS ?= 3

pytest: $(STAMP)
	$(BIN)/pytest -n $(PYTEST_WORKERS)

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: $(STAMP)
	$(BIN)/python -m bench

demo: $(STAMP)
	$(BIN)/budget-worker demo

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
