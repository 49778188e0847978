"""Shared inputs for the factorize tests: the demo dataset through the real preprocess step."""

from __future__ import annotations

import functools

from tissuelens.config import step_defaults


def defaults(step: str) -> dict:
    return step_defaults(step)


@functools.lru_cache(maxsize=4)
def _demo(n_spots: int, n_genes: int, seed: int):
    from tissuelens.datasets.synthetic import make_synthetic
    from tissuelens.preprocess import preprocess

    raw = make_synthetic(n_spots=n_spots, n_genes=n_genes, n_spatial_factors=3, n_groups=4, seed=seed)
    entry = {"source": "synthetic", "spatial": True, "group_key": "group"}
    adata, _ = preprocess(raw, entry, defaults("preprocess"), "demo")
    return adata


def demo_adata(n_spots: int = 900, n_genes: int = 200, seed: int = 0):
    """A fresh copy of the preprocessed demo (cached: the tests must not mutate the shared one)."""
    return _demo(n_spots, n_genes, seed).copy()


def settings(**overrides) -> dict:
    """Factorize settings sized for tests (small, fast), with `seed`."""
    s = defaults("factorize")
    s.update(seed=0, n_factors=4, n_inducing=100, n_neighbors=8, batch_size=None, gene_batch_size=None,
             max_iter=30, learning_rate=0.05, lengthscale=30.0, checkpoint_every=0, log_every=0, kmeans_n_init=2,
             device="cpu", chunk_size=128)
    s.update(overrides)
    return s
