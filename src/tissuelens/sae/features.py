"""Feature analysis: tie each SAE latent back to genes, cells, cell groups, tissue space and PNMF-GP factors.

One streaming pass encodes every analysed token with the saved SAE and accumulates sparse sums:

* gene x feature: summed activation and number of firing tokens, plus tokens per gene;
* cell x feature: summed activation (cell activation = mean over the cell's analysed tokens).

From these:

* genes: `mean_activation` (mean over the gene's tokens), `frac_active`, `share` (the gene's part of the
  feature's total activation), `log2_enrichment` = log2((mean on gene + eps) / (mean on other tokens + eps))
  with eps = 1% of the feature's mean over all tokens; top genes by mean activation and by enrichment;
* groups: mean cell activation per group, `log2fc` against the other cells (same eps rule on the cell
  means) and one-versus-rest AUROC (Mann-Whitney with tied ranks averaged);
* space: Moran's I of the per-spot activation (squidpy, the dataset's recorded spatial graph, per section);
* factors: Pearson correlation of the per-spot activation with each PNMF-GP factor.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp

from tissuelens.errors import InputError


class SparseAccumulator:
    """Sum of many (row, col, value) triplets into a sparse matrix, folded in bounded chunks."""

    def __init__(self, shape: tuple[int, int], fold_at: int = 4_000_000):
        self.shape = shape
        self.fold_at = fold_at
        self.total = sp.csr_matrix(shape, dtype=np.float64)
        self._parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._pending = 0

    def add(self, rows: np.ndarray, cols: np.ndarray, values: np.ndarray) -> None:
        self._parts.append((rows, cols, values))
        self._pending += rows.size
        if self._pending >= self.fold_at:
            self._fold()

    def _fold(self) -> None:
        if not self._parts:
            return
        rows, cols, vals = (np.concatenate(x) for x in zip(*self._parts))
        self.total = self.total + sp.coo_matrix((vals.astype(np.float64), (rows, cols)), shape=self.shape).tocsr()
        self._parts, self._pending = [], 0

    def result(self) -> sp.csr_matrix:
        self._fold()
        self.total.sum_duplicates()
        return self.total


@dataclass
class TokenSums:
    """Sums over all analysed tokens (see module docstring)."""

    n_tokens: int
    feature_sum: np.ndarray  # (F,)
    feature_fired: np.ndarray  # (F,) tokens on which the feature is non-zero
    feature_max: np.ndarray  # (F,)
    gene_tokens: np.ndarray  # (G,)
    gene_sum: sp.csr_matrix  # (G, F)
    gene_fired: sp.csr_matrix  # (G, F)
    cell_tokens: np.ndarray  # (C,)
    cell_sum: sp.csr_matrix  # (C, F)

    @property
    def frequency(self) -> np.ndarray:
        return self.feature_fired / max(self.n_tokens, 1)

    @property
    def mean_activation(self) -> np.ndarray:
        return self.feature_sum / max(self.n_tokens, 1)

    def cell_matrix(self) -> sp.csr_matrix:
        """Mean activation per cell over its analysed tokens (cells without tokens stay zero)."""
        inv = np.divide(1.0, self.cell_tokens, out=np.zeros(self.cell_tokens.size), where=self.cell_tokens > 0)
        return sp.diags(inv) @ self.cell_sum


def accumulate(batches, gene_codes: np.ndarray, cell_codes: np.ndarray, n_genes: int, n_cells: int,
               d_sae: int) -> TokenSums:
    """Accumulate from `batches` of (token_rows, feature_acts (B, F) array): codes index by token row."""
    feature_sum = np.zeros(d_sae)
    feature_fired = np.zeros(d_sae, dtype=np.int64)
    feature_max = np.zeros(d_sae)
    gene_sum = SparseAccumulator((n_genes, d_sae))
    gene_fired = SparseAccumulator((n_genes, d_sae))
    cell_sum = SparseAccumulator((n_cells, d_sae))
    gene_tokens = np.zeros(n_genes, dtype=np.int64)
    cell_tokens = np.zeros(n_cells, dtype=np.int64)
    n = 0
    for rows, acts in batches:
        acts = np.asarray(acts)
        n += rows.size
        g = gene_codes[rows]
        c = cell_codes[rows]
        gene_tokens += np.bincount(g, minlength=n_genes)
        cell_tokens += np.bincount(c, minlength=n_cells)
        tok, feat = np.nonzero(acts)
        vals = acts[tok, feat].astype(np.float64)
        feature_sum += np.bincount(feat, weights=vals, minlength=d_sae)
        feature_fired += np.bincount(feat, minlength=d_sae)
        if feat.size:
            np.maximum.at(feature_max, feat, vals)
        gene_sum.add(g[tok], feat, vals)
        gene_fired.add(g[tok], feat, np.ones_like(vals))
        cell_sum.add(c[tok], feat, vals)
    return TokenSums(n, feature_sum, feature_fired, feature_max, gene_tokens, gene_sum.result(),
                     gene_fired.result(), cell_tokens, cell_sum.result())


def _eps(mean_all: np.ndarray) -> np.ndarray:
    return 0.01 * np.asarray(mean_all, dtype=np.float64) + 1e-12


def gene_table(sums: TokenSums, genes: np.ndarray, symbols: np.ndarray, top_n: int = 20,
               min_tokens: int = 3) -> pd.DataFrame:
    """Top genes per feature, by mean activation and by log2 enrichment (long table, one row per pair)."""
    gene_sum = sums.gene_sum.tocsc()
    gene_fired = sums.gene_fired.tocsc()
    n_g = sums.gene_tokens.astype(np.float64)
    eligible = n_g >= min_tokens
    eps = _eps(sums.mean_activation)
    records = []
    for f in range(gene_sum.shape[1]):
        lo, hi = gene_sum.indptr[f], gene_sum.indptr[f + 1]
        if lo == hi:
            continue
        g_idx = gene_sum.indices[lo:hi]
        keep = eligible[g_idx]
        if not keep.any():
            continue
        g_idx = g_idx[keep]
        s = gene_sum.data[lo:hi][keep]
        f_lo, f_hi = gene_fired.indptr[f], gene_fired.indptr[f + 1]
        if np.array_equal(gene_fired.indices[f_lo:f_hi], gene_sum.indices[lo:hi]):
            fired = gene_fired.data[f_lo:f_hi][keep]
        else:
            fired = np.asarray(gene_fired[g_idx, f].todense()).ravel()
        mean_on = s / n_g[g_idx]
        rest_tokens = sums.n_tokens - n_g[g_idx]
        mean_rest = np.divide(sums.feature_sum[f] - s, rest_tokens, out=np.zeros_like(s), where=rest_tokens > 0)
        enrich = np.log2((mean_on + eps[f]) / (mean_rest + eps[f]))
        by_mean = np.argsort(-mean_on, kind="stable")[:top_n]
        by_enrich = np.argsort(-enrich, kind="stable")[:top_n]
        rank_mean = {int(i): r + 1 for r, i in enumerate(by_mean)}
        rank_enrich = {int(i): r + 1 for r, i in enumerate(by_enrich)}
        listed = list(by_mean) + [i for i in by_enrich if int(i) not in rank_mean]
        for i in (int(j) for j in listed):
            gi = g_idx[i]
            records.append((f, genes[gi], symbols[gi], int(n_g[gi]), mean_on[i], fired[i] / n_g[gi],
                            s[i] / sums.feature_sum[f], enrich[i], rank_mean.get(i, np.nan),
                            rank_enrich.get(i, np.nan)))
    cols = ["feature", "gene", "symbol", "n_tokens", "mean_activation", "frac_active", "share",
            "log2_enrichment", "rank_mean", "rank_specificity"]
    out = pd.DataFrame.from_records(records, columns=cols)
    return out.astype({"feature": np.int64, "n_tokens": np.int64, "rank_mean": "float64", "rank_specificity": "float64"})


def auroc_one_vs_rest(values: np.ndarray, labels: np.ndarray, n_groups: int) -> np.ndarray:
    """AUROC of each column of `values` (cells x features) for group g versus the rest: (G, F).

    Mann-Whitney U from average ranks (ties count one half), so it equals sklearn's roc_auc_score.
    """
    from scipy.stats import rankdata

    ranks = rankdata(values, axis=0, method="average")
    n = values.shape[0]
    out = np.full((n_groups, values.shape[1]), np.nan)
    for g in range(n_groups):
        inside = labels == g
        n_in = int(inside.sum())
        if n_in == 0 or n_in == n:
            continue
        r_in = ranks[inside].sum(axis=0)
        out[g] = (r_in - n_in * (n_in + 1) / 2) / (n_in * (n - n_in))
    return out


def group_table(cell_matrix: sp.spmatrix, groups: pd.Categorical, chunk: int = 512) -> pd.DataFrame:
    """Per feature and group: cells, mean activation, log2 fold change and AUROC versus the other cells."""
    groups = pd.Categorical(groups)
    labels = groups.codes
    valid = labels >= 0
    x = sp.csc_matrix(cell_matrix)[valid]
    labels = labels[valid]
    n_groups = len(groups.categories)
    n_feat = x.shape[1]
    counts = np.bincount(labels, minlength=n_groups).astype(np.float64)
    indicator = sp.csr_matrix((np.ones(labels.size), (labels, np.arange(labels.size))), shape=(n_groups, labels.size))
    sums = np.asarray((indicator @ x).todense())  # (G, F)
    total = np.asarray(x.sum(axis=0)).ravel()
    mean_in = sums / np.maximum(counts, 1)[:, None]
    rest = labels.size - counts
    mean_out = (total[None, :] - sums) / np.maximum(rest, 1)[:, None]
    eps = _eps(total / max(labels.size, 1))
    log2fc = np.log2((mean_in + eps) / (mean_out + eps))
    auroc = np.full((n_groups, n_feat), np.nan)
    for start in range(0, n_feat, chunk):
        block = x[:, start : start + chunk].toarray()
        auroc[:, start : start + chunk] = auroc_one_vs_rest(block, labels, n_groups)
    out = pd.DataFrame({
        "feature": np.tile(np.arange(n_feat), n_groups),
        "group": pd.Categorical(np.repeat(np.asarray(groups.categories, dtype=str), n_feat)),
        "n_cells": np.repeat(counts.astype(np.int64), n_feat),
        "mean_activation": mean_in.ravel(),
        "mean_rest": mean_out.ravel(),
        "log2fc": log2fc.ravel(),
        "auroc": auroc.ravel(),
    })
    return out.sort_values(["feature", "group"], kind="stable").reset_index(drop=True)


def morans_i(cell_matrix: sp.spmatrix, coords: np.ndarray, features: np.ndarray, n_neighs: int = 6,
             graph: sp.spmatrix | None = None, sections: np.ndarray | None = None) -> pd.DataFrame:
    """Moran's I (squidpy) of the per-spot activation of `features`, on `graph` (the dataset's recorded spatial
    graph restricted to these cells) or, without one, a kNN graph of the coordinates. With `sections` (codes)
    each section is scored on its own block: moran_i is the sections' mean weighted by their cells, moran_pval
    the largest of their p-values (spatial in every section); a section where a feature is constant is left out."""
    features = np.asarray(features, dtype=np.int64)
    if features.size == 0 or cell_matrix.shape[0] < 3:
        return pd.DataFrame({"feature": np.empty(0, np.int64), "moran_i": [], "moran_pval": []})
    x = sp.csr_matrix(sp.csc_matrix(cell_matrix)[:, features], dtype=np.float64)
    if sections is None:
        res = _moran_block(x, coords, features, n_neighs, graph)
        i, p = res["I"].to_numpy(float), res["pval_norm"].to_numpy(float)
    else:
        parts, weights = [], []
        for code in np.unique(sections):
            rows = np.flatnonzero(sections == code)
            if len(rows) < 3:
                continue
            block = None if graph is None else sp.csr_matrix(graph)[rows][:, rows]
            parts.append(_moran_block(x[rows], coords[rows], features, n_neighs, block))
            weights.append(len(rows))
        i_all = np.vstack([r["I"].to_numpy(float) for r in parts])  # NaN where a feature is constant in a section
        w = np.asarray(weights, dtype=float)[:, None] * np.isfinite(i_all)
        with np.errstate(invalid="ignore", divide="ignore"):
            i = np.where(w.sum(0) > 0, np.nansum(i_all * w, axis=0) / w.sum(0), np.nan)
        p_all = np.vstack([r["pval_norm"].to_numpy(float) for r in parts])
        p = np.where(np.isfinite(p_all).any(0), np.nanmax(np.where(np.isfinite(p_all), p_all, -np.inf), axis=0), np.nan)
    return pd.DataFrame({"feature": features, "moran_i": i, "moran_pval": p}).sort_values("feature").reset_index(drop=True)


def _moran_block(x: sp.csr_matrix, coords: np.ndarray, features: np.ndarray, n_neighs: int, graph) -> pd.DataFrame:
    """squidpy's Moran's I of each column of `x`, rows in the order of `features`."""
    import anndata as ad
    import squidpy as sq

    adata = ad.AnnData(X=x, obsm={"spatial": np.asarray(coords, dtype=np.float64)})
    adata.var_names = [str(f) for f in features]
    adata.obs_names = [str(i) for i in range(adata.n_obs)]
    if graph is None:
        sq.gr.spatial_neighbors_knn(adata, n_neighs=int(min(n_neighs, adata.n_obs - 1)))
    else:
        adata.obsp["spatial_connectivities"] = sp.csr_matrix(graph, dtype=np.float64)
    res = sq.gr.spatial_autocorr(adata, mode="moran", genes=list(adata.var_names), n_perms=None,
                                 copy=True, n_jobs=1, show_progress_bar=False)
    return res.loc[list(adata.var_names)]


def factor_correlations(cell_matrix: sp.spmatrix, factors: np.ndarray, chunk: int = 1024) -> np.ndarray:
    """Pearson r of every feature's per-spot activation with every factor: (F, L); NaN for constant ones."""
    factors = np.asarray(factors, dtype=np.float64)
    fz = factors - factors.mean(axis=0)
    f_norm = np.linalg.norm(fz, axis=0)
    x = sp.csc_matrix(cell_matrix)
    out = np.full((x.shape[1], factors.shape[1]), np.nan)
    for start in range(0, x.shape[1], chunk):
        block = x[:, start : start + chunk].toarray()
        bz = block - block.mean(axis=0)
        b_norm = np.linalg.norm(bz, axis=0)
        denom = np.outer(b_norm, f_norm)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[start : start + block.shape[1]] = np.where(denom > 0, (bz.T @ fz) / denom, np.nan)
    return out


def factor_table(r: np.ndarray) -> pd.DataFrame:
    n_feat, n_fac = r.shape
    return pd.DataFrame({
        "feature": np.repeat(np.arange(n_feat), n_fac),
        "factor": np.tile(np.arange(n_fac), n_feat),
        "pearson_r": r.ravel(),
    })


def top_cells(cell_matrix: sp.spmatrix, obs_names: np.ndarray, n: int) -> list[str]:
    """Comma-separated names of the `n` most active cells, per feature."""
    x = sp.csc_matrix(cell_matrix)
    out = []
    for f in range(x.shape[1]):
        lo, hi = x.indptr[f], x.indptr[f + 1]
        idx, vals = x.indices[lo:hi], x.data[lo:hi]
        best = idx[np.argsort(-vals, kind="stable")[:n]]
        out.append(",".join(str(obs_names[i]) for i in best))
    return out


def feature_table(sums: TokenSums, genes: pd.DataFrame, groups: pd.DataFrame | None, moran: pd.DataFrame | None,
                  factor_r: np.ndarray | None, top_cell_names: list[str], dense_threshold: float,
                  decoder_norm: np.ndarray | None = None, n_top_genes: int = 5) -> pd.DataFrame:
    """One row per feature with summary columns (dead/dense, top genes, best group, Moran's I, best factor)."""
    n_feat = sums.feature_sum.size
    freq = sums.frequency
    table = pd.DataFrame({
        "feature": np.arange(n_feat, dtype=np.int64),
        "frequency": freq,
        "mean_activation": sums.mean_activation,
        "mean_when_active": np.divide(sums.feature_sum, sums.feature_fired, out=np.zeros(n_feat),
                                      where=sums.feature_fired > 0),
        "max_activation": sums.feature_max,
        "dead": sums.feature_fired == 0,
        "dense": freq > dense_threshold,
    })
    if decoder_norm is not None:
        table["decoder_norm"] = decoder_norm
    top = (genes[genes["rank_mean"] <= n_top_genes].sort_values(["feature", "rank_mean"])
           .groupby("feature")["symbol"].agg(",".join))
    spec = (genes[genes["rank_specificity"] <= n_top_genes].sort_values(["feature", "rank_specificity"])
            .groupby("feature")["symbol"].agg(",".join))
    table["top_genes"] = table["feature"].map(top).fillna("")
    table["top_specific_genes"] = table["feature"].map(spec).fillna("")
    table["top_cells"] = top_cell_names
    if groups is not None and len(groups):
        ranked = groups.dropna(subset=["auroc"]).sort_values(["feature", "auroc"], ascending=[True, False])
        best = ranked.groupby("feature").head(1).set_index("feature")
        table["top_group"] = table["feature"].map(best["group"].astype(str)).fillna("")
        table["top_group_auroc"] = table["feature"].map(best["auroc"])
        table["top_group_log2fc"] = table["feature"].map(best["log2fc"])
    if moran is not None:
        m = moran.set_index("feature")
        table["moran_i"] = table["feature"].map(m["moran_i"])
        table["moran_pval"] = table["feature"].map(m["moran_pval"])
    if factor_r is not None and factor_r.size:
        filled = np.where(np.isnan(factor_r), -np.inf, factor_r)
        best_f = filled.argmax(axis=1)
        best_r = factor_r[np.arange(n_feat), best_f]
        table["best_factor"] = np.where(np.isnan(best_r), -1, best_f).astype(np.int64)
        table["best_factor_r"] = best_r
    return table


def check_factors(factors: np.ndarray, n_cells: int, path: str) -> np.ndarray:
    factors = np.asarray(factors)
    if factors.ndim != 2:
        raise InputError(f"{path}: expected a 2-D (cells, factors) array, got shape {factors.shape}")
    if factors.shape[0] != n_cells:
        raise InputError(f"{path}: {factors.shape[0]} rows but the preprocessed data has {n_cells} cells")
    if not np.isfinite(factors).all():
        raise InputError(f"{path}: non-finite factor values")
    return factors
