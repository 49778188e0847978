# tissuelens: `make demo` runs the built-in demo, `make test` runs the test suite; both set up .venv first.
VENV ?= .venv
PYTHON ?= python3
BIN := $(abspath $(VENV))/bin
export PATH := $(BIN):$(PATH)

.PHONY: setup demo test lint clean

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.txt
	$(BIN)/pip install --quiet --no-deps -e .
	touch $@

demo: setup
	snakemake --profile profiles/local

test: setup
	python -m pytest

lint: setup
	snakemake --lint

clean:
	rm -rf results resources logs benchmarks .snakemake
