"""k-nearest-neighbour graphs for every stage that builds one (embedding metrics, report UMAP/Leiden). The
dataset's spatial graph (per section, following the platform) is tissuelens.spatial_graph.

Scanpy switches from an exact search to pynndescent at 4,096 cells (8,192 for euclidean) and then
reads the distance graph with `getnnz`, which the `csr_array` that pynndescent 0.7 returns lacks
(scipy >= 1.15 dropped it from sparse arrays): every dataset above that size crashed. Here the
choice is ours and the same for every metric: scanpy's exact search below `EXACT_MAX` cells (the
results scanpy gives there, unchanged), above it pynndescent with UMAP's `n_trees`/`n_iters` (as
scanpy would pick) behind a transformer that hands scanpy a `csr_matrix`.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from sklearn.base import BaseEstimator, TransformerMixin

EXACT_MAX = 4096  # scanpy's own switch to an approximate search (neighbors._handle_transformer)


class ApproximateKNN(TransformerMixin, BaseEstimator):
    """pynndescent's kNN distance graph (self included, as scanpy expects) as a scipy `csr_matrix`."""

    def __init__(self, n_neighbors: int = 15, metric: str = "euclidean", random_state: int = 0):
        self.n_neighbors = n_neighbors
        self.metric = metric
        self.random_state = random_state

    def fit(self, x, y=None):  # scanpy calls fit_transform only: the graph of the data it was given
        return self

    def fit_transform(self, x, y=None):
        indices, distances = _nndescent(x, self.n_neighbors, self.metric, self.random_state)
        n = x.shape[0]
        rows = np.repeat(np.arange(n), indices.shape[1])
        return sp.csr_matrix((distances.ravel(), (rows, indices.ravel())), shape=(n, n))


def _nndescent(x, n_neighbors: int, metric: str, seed: int):
    from pynndescent import NNDescent

    n = x.shape[0]
    index = NNDescent(np.asarray(x, dtype=np.float32), n_neighbors=n_neighbors, metric=metric, random_state=seed,
                      n_trees=min(64, 5 + round(n ** 0.5 / 20.0)), n_iters=max(5, round(np.log2(n))), low_memory=True)
    indices, distances = index.neighbor_graph
    return indices, distances.astype(np.float32)


def knn(x: np.ndarray, k: int, metric: str = "euclidean", seed: int = 0) -> np.ndarray:
    """Indices (n, k) of each row's k nearest other rows: exact below EXACT_MAX rows or in at most three
    dimensions (coordinates: sklearn's tree search is n log n there), pynndescent otherwise."""
    n = x.shape[0]
    k = min(k, n - 1)
    if n < EXACT_MAX or x.shape[1] <= 3:
        from sklearn.neighbors import NearestNeighbors

        idx = NearestNeighbors(n_neighbors=k + 1, metric=metric).fit(x).kneighbors(x, return_distance=False)
    else:
        idx, _ = _nndescent(x, k + 1, metric, seed)
    return _drop_self(idx, k)


def _drop_self(idx: np.ndarray, k: int) -> np.ndarray:
    """Each row without its own index (not always first when rows are duplicated), cut to k."""
    own = idx == np.arange(idx.shape[0])[:, None]
    has_self = own.any(axis=1)
    out = np.empty((idx.shape[0], k), dtype=np.int64)
    out[has_self] = idx[has_self][~own[has_self]].reshape(-1, idx.shape[1] - 1)[:, :k]
    out[~has_self] = idx[~has_self, :k]
    return out


def neighbors(adata, *, use_rep: str, n_neighbors: int = 15, metric: str = "euclidean", seed: int = 0) -> None:
    """`scanpy.pp.neighbors` on `obsm[use_rep]` (connectivities and distances in `adata.obsp`), at any size."""
    import scanpy as sc

    n = adata.n_obs
    n_neighbors = int(min(n_neighbors, max(2, n - 1)))
    if n < EXACT_MAX:
        sc.pp.neighbors(adata, use_rep=use_rep, n_neighbors=n_neighbors, metric=metric, random_state=seed)
    else:
        sc.pp.neighbors(adata, use_rep=use_rep, transformer=ApproximateKNN(n_neighbors, metric, seed), random_state=seed)
