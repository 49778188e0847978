"""Spatial statistics with squidpy: neighbourhood enrichment and co-occurrence between domains or cell
types, and spatially variable genes by Moran's I, all on the dataset's recorded spatial graph
(tissuelens.spatial_graph: one per section). Sections: the enrichment permutes labels within each section
(squidpy's `library_key`); co-occurrence and Moran's I are computed section by section (`section` column;
"all" for a dataset of one section), so no statistic pairs cells of different sections."""

from __future__ import annotations

import numpy as np
import pandas as pd


ALL = "all"  # the section label of a dataset without sections


def sections_of(adata) -> list[tuple[str, np.ndarray]]:
    """(section, boolean mask) pairs: each recorded section, or ("all", every cell)."""
    from tissuelens.sections import section_labels

    labels = section_labels(adata)
    if labels is None:
        return [(ALL, np.ones(adata.n_obs, dtype=bool))]
    codes = np.asarray(labels.codes)
    return [(str(name), codes == i) for i, name in enumerate(labels.categories)]


def nhood_enrichment(adata, key: str, n_perms: int, seed: int, library_key: str | None = None) -> pd.DataFrame:
    """Long table (a, b, zscore, count) of squidpy's permutation z-scores of neighbour pairs between categories
    (labels permuted within each `library_key` section)."""
    import squidpy as sq

    sq.gr.nhood_enrichment(adata, cluster_key=key, library_key=library_key, connectivity_key="spatial",
                           n_perms=n_perms, seed=seed, show_progress_bar=False)
    res = adata.uns[f"{key}_nhood_enrichment"]
    cats = list(map(str, adata.obs[key].cat.categories))
    z, counts = np.asarray(res["zscore"]), np.asarray(res["count"])
    a, b = np.meshgrid(range(len(cats)), range(len(cats)), indexing="ij")
    return pd.DataFrame({"key": key, "a": np.asarray(cats)[a.ravel()], "b": np.asarray(cats)[b.ravel()],
                         "zscore": z.ravel(), "count": counts.ravel()})


def co_occurrence(adata, key: str, n_intervals: int, max_cells: int, seed: int) -> pd.DataFrame:
    """Long table (section, a, b, distance, ratio) per section (squidpy's co-occurrence has no library_key)."""
    parts = []
    for name, mask in sections_of(adata):
        sub = adata[mask]
        if sub.obs[key].nunique() < 2 or sub.n_obs < 3:
            continue
        part = co_occurrence_one(sub, key, n_intervals, max_cells, seed)
        part.insert(1, "section", name)
        parts.append(part)
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=COOCCURRENCE_COLUMNS)


COOCCURRENCE_COLUMNS = ["key", "section", "a", "b", "distance", "ratio"]


def co_occurrence_one(adata, key: str, n_intervals: int, max_cells: int, seed: int) -> pd.DataFrame:
    """Long table (a, b, distance, ratio): squidpy's p(a | b within distance) / p(a), on at most `max_cells`
    cells drawn by seed (its cost grows with the square of the cells)."""
    import squidpy as sq

    sub = adata.copy()
    sub.obs[key] = sub.obs[key].cat.remove_unused_categories()
    if adata.n_obs > max_cells:
        keep = np.sort(np.random.default_rng(seed).choice(adata.n_obs, max_cells, replace=False))
        sub = sub[keep].copy()
    sq.gr.co_occurrence(sub, cluster_key=key, interval=n_intervals + 1, show_progress_bar=False)
    res = sub.uns[f"{key}_co_occurrence"]
    occ, interval = np.asarray(res["occ"]), np.asarray(res["interval"])
    cats = np.asarray(list(map(str, sub.obs[key].cat.categories)))
    a, b, d = np.meshgrid(range(occ.shape[0]), range(occ.shape[1]), range(occ.shape[2]), indexing="ij")
    return pd.DataFrame({"key": key, "a": cats[a.ravel()], "b": cats[b.ravel()],
                         "distance": interval[1:][d.ravel()], "ratio": occ.ravel()})


SVG_COLUMNS = ["section", "gene", "I", "pval", "pval_fdr_bh"]


def moran_genes(adata, top: int, seed: int) -> pd.DataFrame:
    """Per section, the `top` genes by Moran's I (squidpy on the section's own graph, analytic p-values under
    normality, BH-corrected within the section). `attrs["n_significant"]`: {section: genes at FDR < 0.05
    among all genes}."""
    parts, significant = [], {}
    for name, mask in sections_of(adata):
        table = moran_all_genes(adata[mask].copy(), seed)
        significant[name] = int((table["pval_fdr_bh"] < 0.05).sum())
        part = table.head(top).copy()
        part.insert(0, "section", name)
        parts.append(part)
    out = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=SVG_COLUMNS)
    out.attrs["n_significant"] = significant
    out.attrs["n_genes"] = int(adata.n_vars)
    return out


def moran_all_genes(adata, seed: int) -> pd.DataFrame:
    """Every gene's Moran's I on `obsp["spatial_connectivities"]` (gene, I, pval, pval_fdr_bh), highest first."""
    import squidpy as sq

    df = sq.gr.spatial_autocorr(adata, mode="moran", genes=list(adata.var_names), n_perms=None, copy=True,
                                seed=seed, show_progress_bar=False)
    df = df.sort_values("I", ascending=False, kind="stable")
    out = df[["I", "pval_norm", "pval_norm_fdr_bh"]].rename(columns={"pval_norm": "pval", "pval_norm_fdr_bh": "pval_fdr_bh"})
    out.index.name = "gene"
    return out.reset_index()
