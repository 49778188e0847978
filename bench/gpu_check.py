"""Check every CUDA path in one short run (`make gpu-check`): the CUDA-marked tests, then the factorize
benches (throughput, and the blocks simulation at the schema defaults to its plateau), Geneformer and SAE
benches with their CUDA rows, then Tahoe-x1's flash attention against its torch path
(bench/tahoe_attention.py, run by --tahoe-python: an interpreter with tahoe-x1 and flash-attn, e.g. the
Tahoe container's; skipped, and said so, where it has neither). Prints one table; at most about 10 minutes.

    python bench/gpu_check.py              # on a machine with a CUDA GPU
    python bench/gpu_check.py --budget 300 # seconds for all steps together
    python bench/gpu_check.py --tahoe-python /path/to/tahoe/env/bin/python

Without a CUDA device it says so and exits 0. Exit status 1 when a step failed (tests or a bench).
Each bench's own figures are printed in full after the table.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable

# (name, command, share of the budget); sizes keep each step to a minute or two on one GPU
STEPS = [
    ("CUDA tests", [PY, "-m", "pytest", "-m", "cuda", "-q", "-p", "no:cacheprovider", "tests/test_cuda.py"], 0.3),
    ("factorize bench", [PY, "bench/bench_factorize.py", "--quick", "--no-demo"], 0.15),
    # the scale bench's rows at the schema defaults (n_factors 4), trained to the plateau on the GPU
    ("factorize at the defaults", [PY, "bench/bench_factorize.py", "--patterns", "--device", "cuda", "--pattern-names",
                                   "blocks", "--variants", "pnmf", "svgp", "--side", "100", "--genes", "500"], 0.15),
    ("Geneformer bench", [PY, "bench/bench_geneformer.py", "--cells", "4000", "--genes", "20000", "--repeats", "1",
                          "--extract-cells", "256", "--batch-sizes", "32", "128"], 0.15),
    ("SAE bench", [PY, "bench/bench_sae.py", "--device", "cuda", "--tokens", "200000", "--steps", "30"], 0.15),
    ("Tahoe flash vs torch", ["{tahoe_python}", "bench/tahoe_attention.py"], 0.1),
]


def summary(name: str, out: str) -> str:
    """One line of what the step printed: pytest's closing line, or the number of CUDA rows of a bench."""
    if name == "CUDA tests":
        lines = [ln for ln in out.splitlines() if re.search(r"\d+ (passed|failed|skipped|error)", ln)]
        return lines[-1].strip("= ") if lines else "no pytest summary"
    if name.startswith("Tahoe"):
        lines = [ln for ln in out.splitlines() if ln.startswith(("tahoe-attention:", "skipped:"))]
        return lines[-1] if lines else "no result line"
    rows = [ln for ln in out.splitlines() if "cuda" in ln.lower()]
    return f"{len(rows)} CUDA rows" if rows else "no CUDA rows"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", type=float, default=540.0, help="seconds for all steps together")
    parser.add_argument("--tahoe-python", default=PY, help="python of a Tahoe stack with flash-attn (default: this one)")
    args = parser.parse_args(argv)

    import torch

    if not torch.cuda.is_available():
        print("gpu-check: no CUDA device on this machine (torch.cuda.is_available() is False); nothing to check")
        return 0
    print(f"gpu-check: {torch.cuda.get_device_name(0)}, torch {torch.__version__}, CUDA {torch.version.cuda}", flush=True)
    rows, outputs, failed = [], [], False
    for name, cmd, share in STEPS:
        cmd = [c.format(tahoe_python=args.tahoe_python) for c in cmd]
        start = time.perf_counter()
        try:
            proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=max(30.0, share * args.budget))
            out, status = proc.stdout + proc.stderr, ("ok" if proc.returncode == 0 else f"exit {proc.returncode}")
        except subprocess.TimeoutExpired as exc:
            partial = exc.stdout or b""  # bytes even with text=True
            out, status = partial.decode(errors="replace") if isinstance(partial, bytes) else partial, "timeout"
        failed |= status != "ok"
        rows.append((name, status, time.perf_counter() - start, summary(name, out)))
        outputs.append((name, out))
    print("\n| step | status | seconds | result |\n|---|---|---:|---|")
    for name, status, seconds, note in rows:
        print(f"| {name} | {status} | {seconds:.0f} | {note} |")
    for name, out in outputs:
        print(f"\n===== {name} =====\n{out[-6000:]}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
