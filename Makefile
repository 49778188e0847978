# tissuelens: `make demo` runs the built-in demo; `make test` is the fast tier (unit tests and one small workflow
# run, ~10 min on 2 cores), `make test-all` runs every tier (workflow runs, the local SLURM cluster, the rule
# stacks, the size run) and is what .ci/run calls. All set up .venv first. Tiers are pytest markers (pyproject.toml).
VENV ?= .venv
PYTHON ?= python3
BIN := $(abspath $(VENV))/bin
export PATH := $(BIN):$(PATH)

.PHONY: setup demo test test-all lint clean install-profile gpu-check

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.txt
	$(BIN)/pip install --quiet --no-deps -e .
	touch $@

demo: setup
	snakemake

# the fast tier: every test but the workflow, cluster, stack, size and slow ones, plus the `smoke` workflow run
FAST_TIER := smoke or not (workflow or cluster or stack or size or slow)
test: setup
	python -m pytest -m "$(FAST_TIER)"

# two workers: the workflow runs wait on Snakemake, SLURM and subprocesses for a good part of their time, so
# a second worker fills the idle core (tests/conftest.py keeps files and shared runs on one worker and puts the
# heavy ones first; --no-loadscope-reorder keeps that order instead of xdist's largest-file-first)
test-all: setup
	python -m pytest -n 2 --dist loadgroup --no-loadscope-reorder

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
