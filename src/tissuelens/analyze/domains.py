"""Domains without labels: Leiden on the expression PCA, and spatial domains on the dataset's recorded spatial
graph (preprocess builds it per section and per platform, tissuelens.spatial_graph), so no average reaches into
another section: `method: niche` (default) clusters several hops of neighbourhood means with an automatic number
of domains (tissuelens.analyze.niches); `aggregate_leiden` (the earlier method) runs Leiden at
`spatial_resolution` on the PCA averaged over one ring of neighbours.

Labels: expression clusters `C1, C2, ...`, spatial domains `D1, D2, ...`, in Leiden's own numbering.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import scipy.sparse as sp

from tissuelens.errors import InputError
from tissuelens.spatial_graph import spatial_connectivities

COLUMNS = ("expr_leiden", "spatial_domain")
log = logging.getLogger(__name__)


def expression_pca(adata, n_comps: int, seed: int) -> np.ndarray:
    """scanpy PCA of the log-normalised `X` on the highly variable genes (all genes without the flag)."""
    import scanpy as sc

    n_comps = int(min(n_comps, adata.n_obs - 1, adata.n_vars - 1))
    mask = adata.var["highly_variable"].to_numpy() if "highly_variable" in adata.var else None
    if mask is not None:
        n_comps = int(min(n_comps, mask.sum() - 1))
    sc.pp.pca(adata, n_comps=n_comps, mask_var=mask, random_state=seed)
    return np.asarray(adata.obsm["X_pca"], dtype=np.float64)


def smooth(x: np.ndarray, graph: sp.spmatrix) -> np.ndarray:
    """Each row's mean over itself and its graph neighbours (equal weights)."""
    a = sp.csr_matrix(graph, dtype=np.float64).copy()
    a.data[:] = 1.0
    a = a + sp.identity(a.shape[0], format="csr")
    a.data[:] = 1.0  # a self-loop already in the graph counts once
    return np.asarray(a @ x) / np.asarray(a.sum(axis=1))


def leiden(x: np.ndarray, n_neighbors: int, resolution: float, seed: int, prefix: str) -> pd.Categorical:
    """scanpy Leiden (igraph flavour, 2 iterations, undirected) on the kNN graph of `x`."""
    import anndata as ad
    import scanpy as sc

    from tissuelens.neighbors import neighbors

    a = ad.AnnData(sp.csr_matrix((x.shape[0], 0), dtype=np.float32))
    a.obsm["X_rep"] = np.asarray(x, dtype=np.float32)
    neighbors(a, use_rep="X_rep", n_neighbors=n_neighbors, seed=seed)
    sc.tl.leiden(a, resolution=resolution, random_state=seed, flavor="igraph", n_iterations=2, directed=False,
                 key_added="leiden")
    codes = a.obs["leiden"].astype(int).to_numpy()
    names = [f"{prefix}{i + 1}" for i in range(codes.max() + 1)]
    return pd.Categorical.from_codes(codes, categories=names)


def spatial_domains(pcs: np.ndarray, graph: sp.spmatrix, settings: dict, seed: int, where: str) -> pd.Categorical:
    """Spatial domain labels `D1, D2, ...` by settings["method"]."""
    from tissuelens.analyze.niches import niche_domains

    if settings["method"] == "aggregate_leiden":
        return leiden(smooth(pcs, graph), settings["n_neighbors"], settings["spatial_resolution"], seed, "D")
    codes, record = niche_domains(pcs, graph, settings, seed, where)
    scores = ", ".join(f"{k}: {v:.3f}" for k, v in record.get("stability", {}).items())
    log.info("%s: %d spatial domains (%s)%s", where, record["n_domains"], record["chosen_by"],
             f"; stability per K {scores}" if scores else "")
    return pd.Categorical.from_codes(codes, categories=[f"D{i + 1}" for i in range(codes.max() + 1)])


def compute_domains(adata, settings: dict, spatial: bool, seed: int, where: str) -> pd.DataFrame:
    """DataFrame indexed by obs_names: `expr_leiden`, and `spatial_domain` for spatial data (else missing)."""
    k = settings["n_neighbors"]
    if adata.n_obs <= k or adata.n_obs < 3:
        raise InputError(f"{where}: {adata.n_obs} cells after preprocessing, too few for Leiden with "
                         f"analyze.domains.n_neighbors={k}")
    pcs = expression_pca(adata, settings["n_pcs"], seed)
    out = pd.DataFrame(index=adata.obs_names.copy())
    out["expr_leiden"] = leiden(pcs, k, settings["resolution"], seed, "C")
    if spatial:
        out["spatial_domain"] = spatial_domains(pcs, spatial_connectivities(adata, where), settings, seed, where)
    else:
        out["spatial_domain"] = pd.Categorical([None] * adata.n_obs, categories=[])
    out.index.name = "obs_names"
    return out
