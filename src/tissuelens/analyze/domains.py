"""Domains without labels: Leiden on the expression PCA, and spatial domains on the dataset's recorded spatial
graph (preprocess builds it per section and per platform, tissuelens.spatial_graph), so no average reaches into
another section: `method: niche` (default) clusters several hops of neighbourhood means with an automatic number
of domains (tissuelens.analyze.niches); `aggregate_leiden` (the earlier method) runs Leiden at
`spatial_resolution` on the PCA averaged over one ring of neighbours.

Labels: expression clusters `C1, C2, ...`, spatial domains `D1, D2, ...`, in Leiden's own numbering.

Beside the labels, a record of how the number of spatial domains came about (`domains.json`, see `choice`):
a user reading "5 domains" should see whether the data chose 5 or the config did.
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


def spatial_domains(pcs: np.ndarray, graph: sp.spmatrix, settings: dict, seed: int, where: str
                    ) -> tuple[pd.Categorical, dict]:
    """(spatial domain labels `D1, D2, ...` by settings["method"], the record of their number: `choice`)."""
    from tissuelens.analyze.niches import niche_domains

    method = settings["method"]
    if method == "aggregate_leiden":
        labels = leiden(smooth(pcs, graph), settings["n_neighbors"], settings["spatial_resolution"], seed, "D")
        return labels, choice(method, len(labels.categories))
    codes, record = niche_domains(pcs, graph, settings, seed, where)
    labels = pd.Categorical.from_codes(codes, categories=[f"D{i + 1}" for i in range(codes.max() + 1)])
    out = choice(method, len(labels.categories), record["chosen_by"], record.get("stability"))
    log.info("%s: %s", where, choice_text(out))
    return labels, out


def choice(method: str | None, n_domains: int | None, chosen_by: str | None = None,
           stability: dict | None = None) -> dict:
    """The domains.json record: `spatial` (false for non-spatial data, every other field then null), `method`,
    `n_domains` (the labels in domains.parquet), `chosen_by` ("stability" | "config"; null for aggregate_leiden,
    whose number follows from its resolution) and `stability` ({"K": mean pairwise ARI}, only when chosen by it).
    Keys are strings so the record reads back from JSON unchanged."""
    return {"spatial": method is not None, "method": method, "n_domains": None if n_domains is None else int(n_domains),
            "chosen_by": chosen_by,
            "stability": None if stability is None else {str(k): float(v) for k, v in stability.items()}}


def choice_text(record: dict) -> str:
    """One sentence on how the number of spatial domains was chosen (the report and the log show it)."""
    if not record.get("spatial"):
        return "Not a spatial dataset: no spatial domains."
    n = record["n_domains"]
    head = f"{n} spatial domain{'s' if n != 1 else ''}"
    if record.get("chosen_by") == "stability" and record.get("stability"):
        ks = sorted(record["stability"], key=int)
        scores = ", ".join(f"{k}: {record['stability'][k]:.3f}" for k in ks)
        return (f"{head}, chosen as the most stable K of {ks[0]}-{ks[-1]} (mean pairwise ARI of seeded fits per K: "
                f"{scores}).")
    if record.get("chosen_by") == "config":
        return f"{head}, set by analyze.domains.n_domains."
    return f"{head}, found by Leiden at analyze.domains.spatial_resolution (method: {record['method']})."


def compute_domains(adata, settings: dict, spatial: bool, seed: int, where: str) -> tuple[pd.DataFrame, dict]:
    """(DataFrame indexed by obs_names: `expr_leiden`, and `spatial_domain` for spatial data (else missing),
    the domains.json record: `choice`)."""
    k = settings["n_neighbors"]
    if adata.n_obs <= k or adata.n_obs < 3:
        raise InputError(f"{where}: {adata.n_obs} cells after preprocessing, too few for Leiden with "
                         f"analyze.domains.n_neighbors={k}")
    pcs = expression_pca(adata, settings["n_pcs"], seed)
    out = pd.DataFrame(index=adata.obs_names.copy())
    out["expr_leiden"] = leiden(pcs, k, settings["resolution"], seed, "C")
    if spatial:
        out["spatial_domain"], record = spatial_domains(pcs, spatial_connectivities(adata, where), settings, seed, where)
    else:
        out["spatial_domain"] = pd.Categorical([None] * adata.n_obs, categories=[])
        record = choice(None, None)
    out.index.name = "obs_names"
    return out, record
