# cupixfs — every target installs what it needs first.
VENV   ?= .venv
PYTHON ?= python3
BIN    := $(VENV)/bin

.PHONY: install test demo bench lint format clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml scripts/system-deps.sh
	./scripts/system-deps.sh
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

test: install
	$(BIN)/pytest -q

demo: install
	$(BIN)/cupixfs demo

bench: install
	./scripts/system-deps.sh --bench
	$(BIN)/python bench/run.py

lint: install
	$(BIN)/ruff check cupixfs tests bench
	$(BIN)/ruff format --check cupixfs tests bench
	$(BIN)/mypy cupixfs

format: install
	$(BIN)/ruff format cupixfs tests bench
	$(BIN)/ruff check --fix cupixfs tests bench

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache .mypy_cache
