"""tissuelens.neighbors: scanpy's graph unchanged on small data, a working and reproducible one above
scanpy's 4,096-cell switch (where scanpy's own pynndescent path crashed), self-free kNN indices."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
import scanpy as sc
from sklearn.neighbors import NearestNeighbors

from tissuelens.neighbors import EXACT_MAX, knn, neighbors


def clustered(n: int, dim: int = 16, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=4.0, size=(12, dim))
    return (centres[rng.integers(12, size=n)] + rng.normal(size=(n, dim))).astype(np.float32)


def holder(x: np.ndarray) -> ad.AnnData:
    a = ad.AnnData(np.zeros((x.shape[0], 0), dtype=np.float32))
    a.obsm["X"] = x
    return a


def test_small_data_gives_scanpys_own_graph():
    x = clustered(600)
    ours, theirs = holder(x), holder(x)
    neighbors(ours, use_rep="X", n_neighbors=10, metric="cosine", seed=0)
    sc.pp.neighbors(theirs, use_rep="X", n_neighbors=10, metric="cosine", random_state=0)
    assert (ours.obsp["connectivities"] != theirs.obsp["connectivities"]).nnz == 0
    assert (ours.obsp["distances"] != theirs.obsp["distances"]).nnz == 0


@pytest.mark.slow  # ~5,000 cells through pynndescent twice, Leiden and an exact kNN (~30 s of CPU): make test-all
def test_large_data_graph_is_valid_accurate_and_reproducible():
    n = EXACT_MAX + 900
    x = clustered(n)
    a, b = holder(x), holder(x)
    neighbors(a, use_rep="X", n_neighbors=15, metric="cosine", seed=3)
    neighbors(b, use_rep="X", n_neighbors=15, metric="cosine", seed=3)
    conn = a.obsp["connectivities"]
    assert conn.shape == (n, n) and (conn != conn.T).nnz == 0 and (conn.getnnz(axis=1) >= 1).all()
    assert (conn != b.obsp["connectivities"]).nnz == 0  # same seed, same graph
    dist = a.obsp["distances"]
    # as scanpy's pynndescent path stores it: each cell's 15 neighbours, itself included at distance 0
    assert (dist.getnnz(axis=1) == 15).all() and (dist.diagonal() == 0).all()
    sc.tl.leiden(a, flavor="igraph", n_iterations=2, directed=False, random_state=0)  # the graph is usable
    assert a.obs["leiden"].nunique() >= 2
    exact = NearestNeighbors(n_neighbors=15, metric="cosine").fit(x).kneighbors(x, return_distance=False)[:, 1:]
    approx = knn(x, 14, "cosine", seed=3)
    recall = np.mean([np.intersect1d(p, q).size / 14 for p, q in zip(approx, exact)])
    assert recall > 0.95


def test_knn_drops_self_even_among_duplicates_and_coordinates_are_exact():
    x = np.repeat(np.arange(10.0)[:, None], 2, axis=0)  # every point twice
    nbr = knn(x, 3)
    assert nbr.shape == (20, 3) and not (nbr == np.arange(20)[:, None]).any()
    assert all(np.abs(x[nbr[i], 0] - x[i, 0]).max() <= 1 for i in range(20))
    coords = np.random.default_rng(1).uniform(size=(EXACT_MAX + 100, 2))
    exact = NearestNeighbors(n_neighbors=7).fit(coords).kneighbors(coords, return_distance=False)[:, 1:]
    np.testing.assert_array_equal(np.sort(knn(coords, 6), 1), np.sort(exact, 1))
