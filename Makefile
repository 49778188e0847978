# tissuelens: `make demo` runs the built-in demo, `make test` runs the test suite; both set up .venv first.
VENV ?= .venv
PYTHON ?= python3
BIN := $(abspath $(VENV))/bin
export PATH := $(BIN):$(PATH)

.PHONY: setup demo test lint clean install-profile gpu-check

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.txt
	$(BIN)/pip install --quiet --no-deps -e .
	touch $@

demo: setup
	snakemake

test: setup
	python -m pytest

lint: setup
	snakemake --lint

# every CUDA path (tests marked cuda, the benches' CUDA rows) in one run; says so and exits 0 without a GPU.
# TAHOE_PYTHON: python of a Tahoe stack with flash-attn (the container's) for its flash-vs-torch step
gpu-check: setup
	python bench/gpu_check.py $(if $(TAHOE_PYTHON),--tahoe-python $(TAHOE_PYTHON))

# `snakemake --profile slurm` from any directory: link profiles/slurm into Snakemake's user profile folder
PROFILE_HOME ?= $(or $(XDG_CONFIG_HOME),$(HOME)/.config)/snakemake
install-profile:
	mkdir -p $(PROFILE_HOME)
	ln -sfn $(abspath profiles/slurm) $(PROFILE_HOME)/slurm
	@echo "$(PROFILE_HOME)/slurm -> $(abspath profiles/slurm)"

clean:
	rm -rf results resources logs benchmarks .snakemake
