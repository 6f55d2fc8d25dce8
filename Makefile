# `make demo` and `make test` work on a fresh machine: each creates .venv on first use.
# Another torch build: `make TORCH_SPEC="torch==2.5.1" test` (installed before the package).
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
DEMO_ARGS ?=
PYTEST_ARGS ?= -n 2

.PHONY: demo test lint clean

$(BIN)/.myvae-installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

demo: $(BIN)/.myvae-installed
	$(BIN)/python -m myvae demo $(DEMO_ARGS)

test: $(BIN)/.myvae-installed
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(BIN)/.myvae-installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) myvae-demo .pytest_cache build dist
