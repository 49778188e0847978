"""Spatial statistics with squidpy: neighbourhood enrichment and co-occurrence between domains or cell
types, and spatially variable genes by Moran's I, all on one k-nearest-neighbour spatial graph."""

from __future__ import annotations

import numpy as np
import pandas as pd


def add_spatial_graph(adata, n_neighbors: int) -> None:
    import squidpy as sq

    sq.gr.spatial_neighbors_knn(adata, n_neighs=int(min(n_neighbors, adata.n_obs - 1)))


def nhood_enrichment(adata, key: str, n_perms: int, seed: int) -> pd.DataFrame:
    """Long table (a, b, zscore, count) of squidpy's permutation z-scores of neighbour pairs between categories."""
    import squidpy as sq

    sq.gr.nhood_enrichment(adata, cluster_key=key, n_perms=n_perms, seed=seed, show_progress_bar=False)
    res = adata.uns[f"{key}_nhood_enrichment"]
    cats = list(map(str, adata.obs[key].cat.categories))
    z, counts = np.asarray(res["zscore"]), np.asarray(res["count"])
    a, b = np.meshgrid(range(len(cats)), range(len(cats)), indexing="ij")
    return pd.DataFrame({"key": key, "a": np.asarray(cats)[a.ravel()], "b": np.asarray(cats)[b.ravel()],
                         "zscore": z.ravel(), "count": counts.ravel()})


def co_occurrence(adata, key: str, n_intervals: int, max_cells: int, seed: int) -> pd.DataFrame:
    """Long table (a, b, distance, ratio): squidpy's p(a | b within distance) / p(a), on at most `max_cells`
    cells drawn by seed (its cost grows with the square of the cells)."""
    import squidpy as sq

    sub = adata
    if adata.n_obs > max_cells:
        keep = np.sort(np.random.default_rng(seed).choice(adata.n_obs, max_cells, replace=False))
        sub = adata[keep].copy()
    sq.gr.co_occurrence(sub, cluster_key=key, interval=n_intervals + 1, show_progress_bar=False)
    res = sub.uns[f"{key}_co_occurrence"]
    occ, interval = np.asarray(res["occ"]), np.asarray(res["interval"])
    cats = np.asarray(list(map(str, sub.obs[key].cat.categories)))
    a, b, d = np.meshgrid(range(occ.shape[0]), range(occ.shape[1]), range(occ.shape[2]), indexing="ij")
    return pd.DataFrame({"key": key, "a": cats[a.ravel()], "b": cats[b.ravel()],
                         "distance": interval[1:][d.ravel()], "ratio": occ.ravel()})


def moran_genes(adata, top: int, seed: int) -> pd.DataFrame:
    """The `top` genes by Moran's I (squidpy, analytic p-values under normality, BH-corrected)."""
    import squidpy as sq

    df = sq.gr.spatial_autocorr(adata, mode="moran", genes=list(adata.var_names), n_perms=None, copy=True,
                                seed=seed, show_progress_bar=False)
    df = df.sort_values("I", ascending=False, kind="stable").head(top)
    out = df[["I", "pval_norm", "pval_norm_fdr_bh"]].rename(columns={"pval_norm": "pval", "pval_norm_fdr_bh": "pval_fdr_bh"})
    out.index.name = "gene"
    return out.reset_index()
