"""Model inputs from a preprocessed AnnData: counts, rescaled coordinates, groups, split, size factors.

Every check raises InputError naming the AnnData key and the problem, before any training starts.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
import torch

from tissuelens.errors import InputError
from tissuelens.factorize.variants import GROUP_VARIANTS, SPATIAL_VARIANTS, VARIANTS  # noqa: F401 (re-exported)

log = logging.getLogger(__name__)


@dataclass
class FactorData:
    counts: sp.csr_matrix  # (N, D) integer counts of the modelled genes
    gene_names: np.ndarray  # (D,)
    gene_index: np.ndarray  # (D,) columns of the AnnData that are modelled
    cell_names: np.ndarray  # (N,)
    coords: np.ndarray | None  # (N, 2) model units (box rescale x spatial_scale)
    raw_coords: np.ndarray | None  # (N, 2) as in obsm["spatial"], for plots
    groups: np.ndarray | None  # (N,) int codes
    group_names: list[str] = field(default_factory=list)
    size_factors: np.ndarray | None = None  # (N,), ones when off
    train_idx: np.ndarray | None = None
    val_idx: np.ndarray | None = None
    sections: np.ndarray | None = None  # (N,) int codes of the recorded sections; None for one section
    section_names: list[str] = field(default_factory=list)
    graph: sp.csr_matrix | None = None  # the recorded spatial graph (binary), for Moran's I

    @property
    def n_cells(self) -> int:
        return self.counts.shape[0]

    @property
    def n_genes(self) -> int:
        return self.counts.shape[1]


def rescale_coords(xy: np.ndarray, spatial_scale: float) -> np.ndarray:
    """Centre, scale so the geometric mean of the axis ranges is 4, then multiply by spatial_scale."""
    span = np.ptp(xy, axis=0)
    geo = np.sqrt(np.prod(span)) if np.all(span > 0) else span.max()
    if geo <= 0:
        raise InputError("obsm['spatial']: all cells share one coordinate; spatial factors need spread")
    out = (xy - xy.min(0)) * (4.0 / geo)
    return (out - out.max(0) / 2.0) * spatial_scale


def split_cells(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A validation split fixed by the seed; sorted indices."""
    n_val = int(round(val_fraction * n))
    if val_fraction > 0:
        n_val = min(max(n_val, 1), n - 1)
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def _counts(adata, where: str) -> sp.csr_matrix:
    if "counts" not in adata.layers:
        raise InputError(f"{where}: layers['counts'] is missing (run preprocess first)")
    csr = sp.csr_matrix(adata.layers["counts"])
    data = csr.data
    if data.size and (not np.all(np.isfinite(data)) or data.min() < 0 or np.any(data != np.round(data))):
        raise InputError(f"{where}: layers['counts'] must hold non-negative integer counts")
    return csr


def _genes(adata, choice: str, where: str) -> np.ndarray:
    if choice == "all" or "highly_variable" not in adata.var:
        return np.arange(adata.n_vars)
    hv = adata.var["highly_variable"].to_numpy(bool)
    if not hv.any():
        raise InputError(f"{where}: var['highly_variable'] flags no gene; set factorize.genes: all")
    return np.flatnonzero(hv)


def check_settings(settings: dict, variant: str) -> None:
    """Settings the schema cannot check alone (relations between keys), before any data is read."""
    if variant not in VARIANTS:
        raise InputError(f"factorize.variants: unknown variant '{variant}' (one of {', '.join(VARIANTS)})")
    rank, k = settings["lcgp_rank"], settings["n_neighbors"]
    if variant.endswith("lcgp") and rank is not None and rank <= k:
        raise InputError(f"factorize.lcgp_rank: {rank} must exceed n_neighbors ({k}); with R <= K the neighbours "
                         "span each factor's covariance and the conditional KL degenerates (null = 2 x n_neighbors)")
    if variant in GROUP_VARIANTS and settings["train_group_diff"] and settings["train_kernel"] and settings["group_diff"] <= 0:
        raise InputError("factorize.group_diff: a learned group difference (train_group_diff) needs an initial value > 0")


def load_factor_data(adata, settings: dict, variant: str, seed: int, where: str) -> FactorData:
    check_settings(settings, variant)
    gene_index = _genes(adata, settings["genes"], where)
    counts = _counts(adata, where)[:, gene_index].tocsr()
    n, d = counts.shape
    L = settings["n_factors"]
    if L > d:
        raise InputError(f"{where}: n_factors={L} is larger than the {d} modelled genes; lower factorize.n_factors")
    if L > n:
        raise InputError(f"{where}: n_factors={L} is larger than the {n} cells; lower factorize.n_factors")
    totals = np.asarray(counts.sum(axis=1)).ravel()
    # a cell with no counts in the modelled genes is a valid Poisson observation (sparse platforms such as
    # Slide-seq have many among the highly variable genes), but its size factor would be 0
    zero_cells = np.flatnonzero(totals == 0)
    if zero_cells.size and settings["size_factors"]:
        raise InputError(
            f"{where}: {zero_cells.size} cells have no counts in the modelled genes (e.g. '{adata.obs_names[zero_cells[0]]}'), "
            "so their size factor is 0; filter them in preprocess (min_counts) or set size_factors: false"
        )
    if zero_cells.size:
        log.info("%d cells have no counts in the modelled genes; they are modelled as they are", zero_cells.size)
    zero_genes = np.flatnonzero(np.asarray(counts.sum(axis=0)).ravel() == 0)
    if zero_genes.size:
        raise InputError(
            f"{where}: {zero_genes.size} modelled genes have no counts (e.g. '{adata.var_names[gene_index[zero_genes[0]]]}'); "
            "filter them in preprocess (min_cells)"
        )

    coords = raw = None
    if variant in SPATIAL_VARIANTS or "spatial" in adata.obsm:
        if "spatial" not in adata.obsm:
            raise InputError(f"{where}: variant '{variant}' needs obsm['spatial'] coordinates; non-spatial datasets get only pnmf")
        raw = np.asarray(adata.obsm["spatial"], dtype=np.float64)[:, :2]
        if raw.ndim != 2 or raw.shape[1] != 2:
            raise InputError(f"{where}: obsm['spatial'] must be (n_cells, 2), got {raw.shape}")
        if not np.isfinite(raw).all():
            bad = int((~np.isfinite(raw)).any(axis=1).sum())
            raise InputError(f"{where}: obsm['spatial'] has {bad} cells with non-finite coordinates")
        coords = rescale_coords(raw, settings["spatial_scale"])
    sections, section_names, graph = _sections_and_graph(adata, where) if coords is not None else (None, [], None)

    groups, names = None, []
    if "group" in adata.obs:
        cat = adata.obs["group"].astype("category").cat.remove_unused_categories()
        if cat.isna().any():
            raise InputError(f"{where}: obs['group'] has missing values")
        groups, names = cat.cat.codes.to_numpy().astype(np.int64), [str(c) for c in cat.cat.categories]
    if variant in GROUP_VARIANTS:
        if groups is None:
            raise InputError(f"{where}: variant '{variant}' needs obs['group'] (set group_key for the dataset)")
        sizes = np.bincount(groups, minlength=len(names))
        if sizes.min() < 2:
            raise InputError(
                f"{where}: obs['group'] '{names[int(sizes.argmin())]}' has {int(sizes.min())} cell; MGGP needs at least 2 "
                "cells per group (raise preprocess.min_group_size)"
            )

    size_factors = totals / np.median(totals) if settings["size_factors"] else np.ones(n)
    train, val = split_cells(n, settings["val_fraction"], seed)
    if groups is not None and variant in GROUP_VARIANTS:
        # every group must be seen in training; move one cell of any group lost to the split back
        missing = np.setdiff1d(np.unique(groups), np.unique(groups[train]))
        for g in missing:
            cell = val[groups[val] == g][0]
            val, train = val[val != cell], np.sort(np.append(train, cell))
            log.info("group '%s' had no training cell; moved cell %d from validation to training", names[g], cell)
    return FactorData(
        counts=counts,
        gene_names=np.asarray(adata.var_names[gene_index]).astype(str),
        gene_index=gene_index,
        cell_names=np.asarray(adata.obs_names).astype(str),
        coords=coords,
        raw_coords=raw,
        groups=groups,
        group_names=names,
        size_factors=size_factors,
        train_idx=train,
        val_idx=val,
        sections=sections,
        section_names=section_names,
        graph=graph,
    )


def _sections_and_graph(adata, where: str):
    """(section codes or None, section names, recorded spatial graph or None) from preprocess's record."""
    from tissuelens.spatial_graph import GRAPH_RECORD, section_labels, spatial_connectivities

    if GRAPH_RECORD not in adata.uns:
        return None, [], None  # an AnnData made without preprocess: one section, Moran's I on a kNN graph
    labels = section_labels(adata)
    graph = spatial_connectivities(adata, where)
    if labels is None:
        return None, [], graph
    return np.asarray(labels.codes, dtype=np.int64), [str(c) for c in labels.categories], graph


class CountBatches:
    """Dense (cells, genes) float blocks of a count matrix; the whole matrix on the device when small."""

    def __init__(self, counts: sp.csr_matrix, device: torch.device, dense_max_bytes: float = 2e9):
        self.device = device
        self.dense = None
        if counts.shape[0] * counts.shape[1] * 4 <= dense_max_bytes:
            self.dense = torch.as_tensor(counts.toarray(), dtype=torch.float32, device=device)
        self.csr = counts

    def batch(self, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        if self.dense is not None:
            return self.dense[rows.to(self.device)][:, cols.to(self.device)]
        block = self.csr[rows.numpy()][:, cols.numpy()].toarray()
        return torch.as_tensor(block, dtype=torch.float32, device=self.device)
