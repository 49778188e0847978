"""Analysis formulas: posterior at all cells, deviance, reconstruction error, Moran's I, group loadings,
gene enrichment, recovery of known factors. Everything over cells runs in chunks (memory ∝ chunk)."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from tissuelens.factorize.data import FactorData
from tissuelens.factorize.model import FactorModel, kernel_inputs

EPS = 1e-10


def posterior(model: FactorModel, data: FactorData, variant: str, chunk_size: int, groups=None):
    """(μ, σ²) (N, L) numpy for every cell; training cells use q, held-out cells the predictive.
    `groups` (N,) overrides every cell's group (MGGP groupwise posteriors)."""
    x = kernel_inputs(data, variant)
    if x is not None and groups is not None:
        x[:, 2] = torch.as_tensor(groups, dtype=x.dtype)  # the group column (a section column may follow)
    pos = np.full(data.n_cells, -1)
    pos[data.train_idx] = np.arange(len(data.train_idx))
    device = model.w.device
    x = None if x is None else x.to(device)
    with torch.no_grad():
        mu, var = model.prior.predict(x, groups, torch.as_tensor(pos, device=device), chunk_size)
    return mu.cpu().numpy().astype(np.float64), var.cpu().numpy().astype(np.float64)


def _chunks(n: int, size: int):
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


def _dense(counts, rows) -> np.ndarray:
    block = counts[rows]
    return block.toarray().astype(np.float64) if sp.issparse(block) else np.asarray(block, dtype=np.float64)


def deviance(counts, factors: np.ndarray, loadings: np.ndarray, size_factors=None, chunk_size: int = 4096) -> dict:
    """Poisson deviance of counts (N, D) against rate ν F Wᵀ, by chunks of cells.

    dev_di = y log(y/μ) − y + μ (μ alone where y = 0). `mean` = 2Σdev/(N·D) (the reference's
    poisson_deviance mean), `mean_per_gene` = 2Σdev/D; `gene_mean`/`gene_median`/`gene_max` summarise each
    gene's mean unit deviance over cells, without the factor 2. `nsf` is the number NSF's benchmark reports
    as dev_*_mean (see nsf_deviance); only it can be set beside NSF's tables."""
    n, d = counts.shape
    per_gene = np.zeros(d)
    excess = np.zeros(d)  # Σ_i (μ − y) per gene
    ylog_sum, ylog_count = 0.0, 0
    nu = np.ones(n) if size_factors is None else size_factors
    for rows in _chunks(n, chunk_size):
        y = _dense(counts, rows)
        rate = np.maximum(nu[rows, None] * factors[rows] @ loadings.T, EPS)
        with np.errstate(divide="ignore", invalid="ignore"):
            ylog = np.where(y > 0, y * np.log(y / rate), 0.0)
        per_gene += (ylog - y + rate).sum(0)
        excess += (rate - y).sum(0)
        finite = (y > 0) & np.isfinite(ylog)
        ylog_sum += float(ylog[finite].sum())
        ylog_count += int(finite.sum())
    total = 2.0 * per_gene.sum()
    gene = per_gene / n
    return {"total": total, "mean": total / (n * d), "mean_per_gene": total / d,
            "gene_mean": float(gene.mean()), "gene_median": float(np.median(gene)), "gene_max": float(gene.max()),
            "nsf": nsf_deviance_from_sums(ylog_sum, ylog_count, excess / n)}


def nsf_deviance_from_sums(ylog_sum: float, ylog_count: int, gene_excess_mean: np.ndarray) -> float:
    """NSF's benchmark deviance (nsf-paper utils/misc.py poisson_deviance(agg="mean", axis=0), then the
    mean over genes): per gene, [the mean of y·log(y/μ) over every finite, y > 0 entry of the whole
    matrix] + [the gene's mean over cells of μ − y]; no factor 2. Its first term is one number shared by
    all genes (NSF's boolean indexing flattens the matrix), so it is not a per-gene deviance."""
    term1 = ylog_sum / ylog_count if ylog_count else 0.0
    return float(np.mean(term1 + gene_excess_mean))


def reconstruction_error(counts, factors: np.ndarray, loadings: np.ndarray, chunk_size: int = 4096) -> float:
    """‖Y − F Wᵀ‖_F / ‖Y‖_F, by chunks of cells."""
    num = den = 0.0
    for rows in _chunks(counts.shape[0], chunk_size):
        y = _dense(counts, rows)
        num += ((y - factors[rows] @ loadings.T) ** 2).sum()
        den += (y**2).sum()
    return float(np.sqrt(num / den))


def morans_i(values: np.ndarray, xy: np.ndarray, n_neighs: int = 6, graph=None) -> np.ndarray:
    """Moran's I of each column of `values` (squidpy, row-normalised weights) on `graph` (the dataset's recorded
    spatial graph) or, without one, squidpy's k-NN graph of `xy`:
    I = Σ_i z_i (mean of z over i's neighbours) / Σ_i z_i², z = x − x̄."""
    import anndata as ad
    import pandas as pd
    import scipy.sparse as sp
    import squidpy as sq

    cols = [f"f{i}" for i in range(values.shape[1])]
    holder = ad.AnnData(obs=pd.DataFrame(values, columns=cols, index=[str(i) for i in range(len(values))]))
    holder.obsm["spatial"] = np.asarray(xy, dtype=np.float64)
    if graph is None:
        sq.gr.spatial_neighbors_knn(holder, n_neighs=n_neighs)
    else:
        holder.obsp["spatial_connectivities"] = sp.csr_matrix(graph, dtype=np.float64)
    table = sq.gr.spatial_autocorr(holder, mode="moran", attr="obs", genes=cols, n_perms=None,
                                   transformation=True, copy=True)
    return table.loc[cols, "I"].to_numpy(dtype=np.float64)


def morans_i_by_section(values: np.ndarray, xy: np.ndarray, sections: np.ndarray, names: list[str], graph,
                        n_neighs: int = 6) -> tuple[np.ndarray, dict]:
    """Moran's I of each column within each section on its own block of `graph` (or its k-NN graph):
    (the sections' mean weighted by their cells, {section: (L,) values})."""
    per, weights = {}, []
    for code, name in enumerate(names):
        rows = np.flatnonzero(sections == code)
        if len(rows) < 3:
            continue
        block = None if graph is None else graph[rows][:, rows]
        per[name] = morans_i(values[rows], xy[rows], min(n_neighs, len(rows) - 1), block)
        weights.append(len(rows))
    combined = np.average(np.vstack(list(per.values())), axis=0, weights=weights)
    return combined, per


def group_loadings(counts, factors: np.ndarray, loadings: np.ndarray, groups: np.ndarray, n_groups: int,
                   max_iter: int, seed: int, tol: float = 1e-4) -> np.ndarray:
    """W^g (G, D, L) with the factors fixed, by the least-squares multiplicative update of the reference:
    W ← W ⊙ (YᵀF) / (W FᵀF) from 0.1·U(0,1) (seeded), until W changes by < tol (relative Frobenius; the
    reference watches a Poisson NLL, which this squared-error update does not optimise). Groups with
    fewer cells than factors copy W."""
    rng = np.random.default_rng(seed)
    L = factors.shape[1]
    out = np.repeat(loadings[None], n_groups, axis=0)
    for g in range(n_groups):
        cells = np.flatnonzero(groups == g)
        if len(cells) < L:
            continue
        f = factors[cells]
        ytf = np.asarray(counts[cells].T @ f)  # (D, L); sparse-safe, no dense Y
        ftf = f.T @ f
        w = 0.1 * rng.uniform(size=loadings.shape)
        for _ in range(max_iter):
            new = w * ytf / (w @ ftf + 1e-8)
            done = np.linalg.norm(new - w) <= tol * np.linalg.norm(w)
            w = new
            if done:
                break
        out[g] = w
    return out


def row_normalise(w: np.ndarray) -> np.ndarray:
    w = np.maximum(w, EPS)
    return w / w.sum(-1, keepdims=True)


def enrichment_lfc(loadings: np.ndarray, group_w: np.ndarray) -> np.ndarray:
    """LFC[g, d, l] = log2((W̃^g_dl + ε) / (W̃_dl + ε)) with W̃ each gene's loadings normalised to sum 1."""
    return np.log2((row_normalise(group_w) + EPS) / (row_normalise(loadings)[None] + EPS))


def enrichment_summary(lfc: np.ndarray, gene_names, group_names, top: int) -> dict:
    """factor_l → group → {mean_lfc, std_lfc, top_enriched, top_depleted} (gene symbols)."""
    genes = np.asarray(gene_names)
    out = {}
    for l in range(lfc.shape[2]):
        per = {}
        for g, name in enumerate(group_names):
            col = lfc[g, :, l]
            order = np.argsort(col)
            per[name] = {"mean_lfc": float(col.mean()), "std_lfc": float(col.std()),
                         "top_enriched": genes[order[::-1][:top]].tolist(), "top_depleted": genes[order[:top]].tolist()}
        out[f"factor_{l}"] = per
    return out


def best_matched_pearson(truth: np.ndarray, estimate: np.ndarray) -> np.ndarray:
    """For each true factor (column), the Pearson correlation with its matched estimated factor under the
    one-to-one matching that maximises the total correlation (Hungarian)."""
    from scipy.optimize import linear_sum_assignment

    t = (truth - truth.mean(0)) / (truth.std(0) + EPS)
    e = (estimate - estimate.mean(0)) / (estimate.std(0) + EPS)
    corr = t.T @ e / len(t)  # (Lt, L)
    rows, cols = linear_sum_assignment(-corr)
    out = np.full(truth.shape[1], np.nan)
    out[rows] = corr[rows, cols]
    return out
