"""Gene sentences: vectorised (one lexsort over the CSR non-zeros) vs the per-spot pandas reference.

Checks both give identical sentences, then prints spots per second. Not a test; run by hand:
    PYTHONPATH=src python bench/bench_gene_sentences.py [n_spots ...]
"""

import sys
import time

import numpy as np
import scipy.sparse as sp

from tissuelens.embed import gene_sentences as gs


def dataset(n_spots: int, n_genes: int = 18000, density: float = 0.08, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = sp.random(n_spots, n_genes, density=density, random_state=seed, format="csr", dtype=np.float64)
    x.data = np.log1p(np.ceil(x.data * rng.integers(1, 30, size=x.data.size)))  # log counts: many ties
    symbols = [f"GENE{j}" for j in range(n_genes)]
    return x, symbols


def main():
    sizes = [int(a) for a in sys.argv[1:]] or [500, 2000, 5000]
    hk = gs.load_housekeeping()
    print(f"{'spots':>7} {'vectorised s':>13} {'per-spot s':>11} {'vec spots/s':>12} {'ref spots/s':>12} {'speed-up':>9} identical")
    for n in sizes:
        x, symbols = dataset(n)
        t0 = time.perf_counter()
        vec, _, _ = gs.gene_sentences(x, symbols, hk)
        t1 = time.perf_counter()
        ref = gs.sentences_per_spot(x, symbols, hk)
        t2 = time.perf_counter()
        same = list(vec) == ref
        print(f"{n:>7} {t1 - t0:>13.3f} {t2 - t1:>11.3f} {n / (t1 - t0):>12.0f} {n / (t2 - t1):>12.0f} {(t2 - t1) / (t1 - t0):>8.1f}x {same}")
        if not same:
            raise SystemExit("sentences differ")


if __name__ == "__main__":
    main()
