#!/usr/bin/env bash
# Run in the tahoe_cpu env after it is created (Snakemake's post-deploy script; tests/helpers/stacks.py too).
# tahoe-x1 1.0.0 requires llm-foundry[gpu], i.e. flash-attn, which needs CUDA to build; everything it
# imports is already in tahoe_cpu.yaml, so it goes in without its dependencies.
set -euo pipefail
python -m pip install --no-deps tahoe-x1==1.0.0
