"""Throughput and peak memory of each PNMF-GP variant, the demo's end-to-end fit time, and recovery on
patterned simulations.

    python bench/bench_factorize.py            # N=10000, D=500, L=10, M=1000 on CPU (+ CUDA when present)
    python bench/bench_factorize.py --quick    # fewer iterations
    python bench/bench_factorize.py --patterns [--variants svgp pnmf] [--set n_inducing=300 ...]
        # quilt and blocks (36 x 36 square grid, 200 genes, 4 true spatial factors and --nonspatial others,
        # NSF's benchmark count model), L = 4, the schema's default settings (plus --set overrides):
        # best-matched Pearson per true factor on training cells (NSF's score) and held-out cells, held-out
        # nsf_deviance and training seconds per variant

Peak memory: CUDA from torch.cuda.max_memory_allocated; CPU as the rise of the process's peak RSS
(ru_maxrss) during the variant's steps, so it is a lower bound when an earlier variant peaked higher.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from tissuelens.factorize.data import VARIANTS, load_factor_data  # noqa: E402
from tissuelens.factorize.model import build_model  # noqa: E402
from tissuelens.factorize.run import complete_settings  # noqa: E402
from tissuelens.factorize.train import Trainer  # noqa: E402


def synthetic(n: int, d: int, groups: int, seed: int = 0):
    import anndata as ad

    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 100, size=(n, 2))
    f = np.exp(np.sin(xy[:, :1] / 15.0) + np.cos(xy[:, 1:] / 20.0))
    counts = rng.poisson(0.5 * f * rng.gamma(1.0, 1.0, size=(1, d))) + (rng.uniform(size=(n, d)) < 0.01)
    a = ad.AnnData(X=sp.csr_matrix(counts.astype(np.float32)))
    a.layers["counts"] = sp.csr_matrix(counts.astype(np.int32))
    a.obsm["spatial"] = xy
    a.obs["group"] = pd.Categorical([f"g{i}" for i in rng.integers(groups, size=n)])
    return a


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_variant(adata, variant, settings, device, iters, warmup=2):
    data = load_factor_data(adata, settings, variant, 0, "bench")
    trainer = Trainer(build_model(variant, data, settings), data, settings, variant, device)
    for _ in range(warmup):
        trainer.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    before = peak_rss_mb()
    start = time.perf_counter()
    for _ in range(iters):
        trainer.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = peak_rss_mb() - before
    return iters / (time.perf_counter() - start), peak


def demo_fit_seconds(variant: str) -> float:
    import yaml

    root = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(root / "tests"))
    from helpers.factorize_fixtures import demo_adata

    from tissuelens.config import step_settings

    config = yaml.safe_load((root / "config" / "config.yaml").read_text())
    s = complete_settings(step_settings(config, "demo", "factorize"), 0)
    s.update(device="cpu", log_every=0)
    adata = demo_adata()
    start = time.perf_counter()
    data = load_factor_data(adata, s, variant, 0, "demo")
    Trainer(build_model(variant, data, s), data, s, variant, torch.device("cpu")).fit()
    return time.perf_counter() - start


def pattern_recovery(patterns, variants, overrides: dict, seed: int = 0, nonspatial: int = 0, side: int = 36,
                     genes: int = 200, device: str = "cpu") -> pd.DataFrame:
    from tissuelens.config import step_defaults
    from tissuelens.datasets.synthetic import make_synthetic
    from tissuelens.factorize.analysis import analyse
    from tissuelens.preprocess import preprocess

    rows = []
    for pattern in patterns:
        raw = make_synthetic(n_spots=side * side, n_genes=genes, n_spatial_factors=4, n_groups=4, seed=seed, pattern=pattern,
                             n_nonspatial_factors=nonspatial)
        adata, _ = preprocess(raw, {"source": "synthetic", "spatial": True, "group_key": "group"},
                              step_defaults("preprocess"), pattern)
        truth = np.asarray(adata.obsm["true_factors"], dtype=np.float64)
        for variant in variants:
            s = complete_settings({"n_factors": 4, "log_every": 0, "checkpoint_every": 0, "device": device, **overrides}, seed)
            data = load_factor_data(adata, s, variant, seed, pattern)
            model = build_model(variant, data, s)
            start = time.perf_counter()
            result = Trainer(model, data, s, variant, torch.device(device)).fit()
            seconds = time.perf_counter() - start
            res = analyse(model, data, variant, s, {"iterations": result.iterations}, truth, adata.uns["true_factors_spatial"])
            r = res.metrics["recovery"]["pearson_spatial"]
            rows.append({"device": device, "pattern": pattern, "variant": variant, **{f"r{i + 1}": round(v, 3) for i, v in enumerate(r)},
                         "min r": round(min(r), 3),
                         "min r held-out": round(min(res.metrics["recovery"].get("pearson_spatial_val", [np.nan])), 3),
                         "val nsf_deviance": round(res.metrics["val_nsf_deviance"], 3),
                         "iterations": result.iterations, "stop": result.converged or "max_iter",
                         "train s": round(seconds, 1), "peak RSS MB": round(peak_rss_mb()),
                         "spots": adata.n_obs})
            print(rows[-1], flush=True)
    return pd.DataFrame(rows)


def _value(text: str):
    import yaml

    return yaml.safe_load(text)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--patterns", action="store_true", help="recovery on the quilt and blocks simulations")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS))
    p.add_argument("--pattern-names", nargs="+", default=["quilt", "blocks"], choices=["quilt", "blocks", "smooth"])
    p.add_argument("--nonspatial", type=int, default=0,
                   help="non-spatial factors in the pattern simulations (NSF's benchmark has none)")
    p.add_argument("--side", type=int, default=36, help="grid side of the pattern simulations (spots = side²)")
    p.add_argument("--genes", type=int, default=200, help="genes of the pattern simulations")
    p.add_argument("--device", default="cpu", help="device of the pattern fits (cpu, cuda)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="factorize settings for --patterns")
    p.add_argument("--quick", action="store_true", help="fewer iterations")
    p.add_argument("--n", type=int, default=10_000)
    p.add_argument("--d", type=int, default=500)
    p.add_argument("--factors", type=int, default=10)
    p.add_argument("--inducing", type=int, default=1000)
    p.add_argument("--batch", type=int, default=2000, help="cells per step")
    p.add_argument("--neighbors", type=int, default=50)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--no-demo", action="store_true")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.patterns:
        overrides = {k: _value(v) for k, v in (item.split("=", 1) for item in args.set)}
        table = pattern_recovery(args.pattern_names, args.variants, overrides, nonspatial=args.nonspatial,
                                 side=args.side, genes=args.genes, device=args.device)
        print(f"\n{args.side} x {args.side} grid, {args.genes} genes, L=4, defaults + {overrides or 'nothing'}, torch threads={torch.get_num_threads()}")
        print(table.to_markdown(index=False))
        return
    iters = 10 if args.quick else 30  # whole cycles of kernel_every (10): kernel steps cost more than the others
    adata = synthetic(args.n, args.d, groups=8)
    s = complete_settings({"n_factors": args.factors, "n_inducing": args.inducing, "batch_size": args.batch,
                           "gene_batch_size": None, "n_neighbors": args.neighbors, "kmeans_n_init": 1,
                           "max_iter": 10_000, "log_every": 0, "val_fraction": 0.0}, 0)
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    rows = []
    for device in devices:
        for variant in VARIANTS:
            its, peak = bench_variant(adata, variant, s, device, iters)
            rows.append({"device": device.type, "variant": variant, "it/s": round(its, 2), "s/it": round(1 / its, 3),
                         "peak MB": round(peak)})
            print(rows[-1], flush=True)
    print(f"\nN={args.n} D={args.d} L={args.factors} M={args.inducing} K={args.neighbors} batch={args.batch} cells, "
          f"all genes, torch threads={torch.get_num_threads()}, {iters} timed steps")
    print(pd.DataFrame(rows).to_markdown(index=False))
    if not args.no_demo:
        demo = [{"variant": v, "demo fit s": round(demo_fit_seconds(v), 1)} for v in VARIANTS]
        print("\ndemo (900 spots, 200 genes, config/config.yaml), CPU:")
        print(pd.DataFrame(demo).to_markdown(index=False))


if __name__ == "__main__":
    main()
