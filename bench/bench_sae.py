"""Benchmark: SAE training throughput and peak memory (SAELens TopK), and memmap streaming rate.

    python bench/bench_sae.py                      # d_in 256, expansion 16, k 32, batch 4096, on CPU
    python bench/bench_sae.py --threads 4 --steps 60 --tokens 1000000

Streaming: tokens/s of the shuffled minibatch iterator over a float16 memmap (every token once per epoch),
against two baselines: contiguous slices of the same memmap, and random batches from an in-RAM float32
array. The file was just written, so reads come from the page cache (a warm-cache figure).

Training: each configuration runs in a fresh process; tokens/s is measured after `--warmup` steps;
peak memory is the process's peak RSS (ru_maxrss), shown with the RSS before training (imports) so the
difference is the training's own footprint. Baseline: the standard (L1) SAE of the same size.
Numbers print as a table; nothing is asserted.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def rss_mib() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def make_memmap(path: Path, n_tokens: int, d_in: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(n_tokens, d_in))
    for start in range(0, n_tokens, 65536):
        stop = min(start + 65536, n_tokens)
        out[start:stop] = rng.normal(size=(stop - start, d_in)).astype(np.float16)
    out.flush()
    del out


def bench_streaming(path: Path, batch: int, n_batches: int) -> list[tuple[str, float, float]]:
    from tissuelens.sae.activations import ShuffledBatches

    arr = np.load(path, mmap_mode="r")
    rows = np.arange(arr.shape[0])
    bytes_per_token = arr.shape[1] * arr.dtype.itemsize
    results = []

    stream = ShuffledBatches(arr, rows, batch, seed=0)
    next(stream)
    t = time.perf_counter()
    for _ in range(n_batches):
        next(stream)
    dt = time.perf_counter() - t
    results.append(("memmap, shuffled (ShuffledBatches)", n_batches * batch / dt, n_batches * batch * bytes_per_token / dt / 2**20))

    t = time.perf_counter()
    for b in range(n_batches):
        start = (b * batch) % max(arr.shape[0] - batch, 1)
        np.asarray(arr[start : start + batch], dtype=np.float32)
    dt = time.perf_counter() - t
    results.append(("memmap, contiguous slices", n_batches * batch / dt, n_batches * batch * bytes_per_token / dt / 2**20))

    ram = np.asarray(arr, dtype=np.float32)
    rng = np.random.default_rng(0)
    t = time.perf_counter()
    for _ in range(n_batches):
        ram[rng.integers(0, ram.shape[0], size=batch)]
    dt = time.perf_counter() - t
    results.append(("in-RAM float32, random rows", n_batches * batch / dt, n_batches * batch * bytes_per_token / dt / 2**20))
    return results


def matmul_gflops(threads: int, d_in: int, d_sae: int, batch: int) -> float:
    """Reference speed of this machine: one (batch, d_in) @ (d_in, d_sae) float32 product, as GFLOP/s."""
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(batch, d_in), torch.randn(d_in, d_sae)
    a @ b
    t = time.perf_counter()
    for _ in range(5):
        a @ b
    return 5 * 2 * batch * d_in * d_sae / (time.perf_counter() - t) / 1e9


def _train_child(args: dict, queue) -> None:
    import torch

    from tissuelens.sae.activations import ShuffledBatches
    from tissuelens.sae.settings import resolve_settings
    from tissuelens.sae.train import build_training_sae, fit, seed_everything

    torch.set_num_threads(args["threads"])
    import sae_lens  # noqa: F401  (import cost out of the baseline)

    arr = np.load(args["path"], mmap_mode="r")
    settings = resolve_settings({
        "architecture": args["architecture"], "expansion_factor": args["expansion"], "k": args["k"],
        "batch_size": args["batch"], "training_tokens": args["batch"] * args["steps"],
        "n_batches_for_norm_estimate": 5, "l1_coefficient": 1.0,
    })
    seed_everything(0)
    base_rss = rss_mib()
    sae = build_training_sae(settings, arr.shape[1], device=args["device"])
    batches = ShuffledBatches(arr, np.arange(arr.shape[0]), args["batch"], seed=0, device=args["device"])
    result = fit(sae, batches, settings, args["device"])
    h = result.history
    w = min(args["warmup"], len(h) - 2)
    tokens_per_s = (h["tokens"].iloc[-1] - h["tokens"].iloc[w]) / (h["seconds"].iloc[-1] - h["seconds"].iloc[w])
    gpu_peak = float("nan")
    if args["device"].startswith("cuda"):
        gpu_peak = torch.cuda.max_memory_allocated() / 2**20
    queue.put((tokens_per_s, base_rss, peak_rss_mib(), gpu_peak, len(h)))


def bench_training(path: Path, device: str, threads: int, batch: int, steps: int, warmup: int, d_in: int,
                   expansion: int, k: int) -> list[tuple]:
    ctx = mp.get_context("spawn")
    rows = []
    for architecture in ("topk", "standard"):
        queue = ctx.Queue()
        args = dict(path=str(path), device=device, threads=threads, batch=batch, steps=steps, warmup=warmup,
                    architecture=architecture, expansion=expansion, k=k)
        proc = ctx.Process(target=_train_child, args=(args, queue))
        proc.start()
        result = queue.get()
        proc.join()
        label = f"{architecture}: d_in {d_in}, d_sae {d_in * expansion}" + (f", k {k}" if architecture == "topk" else ", L1")
        rows.append((label, *result))
    return rows


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--d-in", type=int, default=256)
    p.add_argument("--expansion", type=int, default=16)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--tokens", type=int, default=500_000, help="tokens in the benchmark memmap")
    p.add_argument("--steps", type=int, default=40, help="training steps per configuration")
    p.add_argument("--warmup", type=int, default=5, help="steps excluded from the throughput")
    p.add_argument("--stream-batches", type=int, default=100)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "layer_0.npy"
        make_memmap(path, args.tokens, args.d_in)
        size = args.tokens * args.d_in * 2 / 2**20
        print(f"memmap: {args.tokens} tokens x {args.d_in} float16 ({size:.0f} MiB); batch {args.batch}; "
              f"{args.threads} torch threads; device {args.device}\n")
        print(f"{'streaming':<40} {'tokens/s':>12} {'MiB/s':>9}")
        for name, tps, mibs in bench_streaming(path, args.batch, args.stream_batches):
            print(f"{name:<40} {tps:>12,.0f} {mibs:>9,.0f}")
        print()
        flops = matmul_gflops(args.threads, args.d_in, args.d_in * args.expansion, args.batch)
        print(f"reference: float32 matmul ({args.batch}x{args.d_in} @ {args.d_in}x{args.d_in * args.expansion}) "
              f"{flops:,.0f} GFLOP/s on {args.threads} threads\n")
        print(f"{'SAE training (SAELens SAETrainer)':<40} {'tokens/s':>12} {'RSS before':>11} {'peak RSS':>9} "
              f"{'GPU peak':>9} {'steps':>6}")
        for label, tps, base, peak, gpu, steps in bench_training(path, args.device, args.threads, args.batch,
                                                                 args.steps, args.warmup, args.d_in,
                                                                 args.expansion, args.k):
            gpu_s = f"{gpu:,.0f}" if np.isfinite(gpu) else "-"
            print(f"{label:<40} {tps:>12,.0f} {base:>9,.0f}Mi {peak:>7,.0f}Mi {gpu_s:>9} {steps:>6}")


if __name__ == "__main__":
    main()
