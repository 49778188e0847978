"""Planted-feature activation exports in the embed stage's exact format, for tests and benchmarks.

Every token's activation is a sparse non-negative combination of known unit directions plus noise:

* a gene direction: gene g always writes direction `g % n_gene_dirs` (magnitude 1-2);
* a spatial direction, with magnitude following a smooth gradient over the tissue (left to right);
* a group direction, present only in cells of group "A";
* small isotropic noise.

`write_export` writes `layer_{k}.npy` (float16), `index.parquet` and `meta.json`, and optionally a
matching `preprocessed.h5ad` and a `factors.npy` whose factor 0 is the planted spatial gradient.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd


@dataclass
class PlantedExport:
    directions: np.ndarray  # (n_dirs, d_model) unit rows: gene dirs, then spatial, then group
    gene_direction: np.ndarray  # (n_genes,) direction index written by each gene
    spatial_direction: int
    group_direction: int
    coords: np.ndarray  # (n_cells, 2)
    groups: np.ndarray  # (n_cells,) group labels
    spatial_signal: np.ndarray  # (n_cells,) in [0, 1]
    genes: np.ndarray  # Ensembl-like ids
    symbols: np.ndarray


def sparse_codes(n_tokens: int, n_dirs: int, active: int, rng: np.random.Generator) -> np.ndarray:
    """Random sparse non-negative codes: `active` directions per token, magnitudes in [1, 3]."""
    idx = np.argsort(rng.random((n_tokens, n_dirs)), axis=1)[:, :active]
    codes = np.zeros((n_tokens, n_dirs))
    np.put_along_axis(codes, idx, rng.uniform(1, 3, size=(n_tokens, active)), axis=1)
    return codes


def unit_directions(n: int, d: int, rng: np.random.Generator) -> np.ndarray:
    x = rng.normal(size=(n, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def write_export(directory: str | Path, n_side: int = 16, n_genes: int = 40, tokens_per_cell: int = 16,
                 d_model: int = 32, n_gene_dirs: int = 20, layers: tuple[int, ...] = (0, 1), noise: float = 0.05,
                 seed: int = 0, model: str = "toy", preprocessed: str | Path | None = None,
                 factors: str | Path | None = None) -> PlantedExport:
    rng = np.random.default_rng(seed)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    n_cells = n_side * n_side
    yy, xx = np.divmod(np.arange(n_cells), n_side)
    coords = np.stack([xx, yy], axis=1).astype(float) * 10.0
    spatial_signal = xx / max(n_side - 1, 1)
    groups = np.where(yy < n_side // 2, np.where(xx < n_side // 2, "A", "B"), np.where(xx < n_side // 2, "C", "D"))
    genes = np.array([f"ENSG{i:011d}" for i in range(1, n_genes + 1)])
    symbols = np.array([f"GENE{i}" for i in range(1, n_genes + 1)])
    n_dirs = n_gene_dirs + 2
    directions = unit_directions(n_dirs, d_model, rng)
    gene_direction = np.arange(n_genes) % n_gene_dirs

    cells, tok_genes, positions = [], [], []
    for c in range(n_cells):
        chosen = rng.choice(n_genes, size=tokens_per_cell, replace=False)
        cells += [c] * (tokens_per_cell + 1)
        tok_genes += ["<cls>"] + list(genes[chosen])
        positions += list(range(tokens_per_cell + 1))
    cells = np.asarray(cells)
    tok_genes = np.asarray(tok_genes)
    n_tokens = cells.size
    gene_idx = pd.Index(genes).get_indexer(tok_genes)  # -1 for <cls>
    is_gene = gene_idx >= 0

    codes = np.zeros((n_tokens, n_dirs))
    codes[is_gene, gene_direction[gene_idx[is_gene]]] = rng.uniform(1, 2, size=is_gene.sum())
    spatial_on = is_gene & (rng.random(n_tokens) < 0.5)
    codes[spatial_on, n_gene_dirs] = 3.0 * spatial_signal[cells[spatial_on]]
    group_on = is_gene & (groups[cells] == "A") & (rng.random(n_tokens) < 0.6)
    codes[group_on, n_gene_dirs + 1] = rng.uniform(1, 2, size=group_on.sum())
    codes[~is_gene, :n_gene_dirs] = 0.3  # the <cls> token: a blur of everything
    base = codes @ directions
    for k, layer in enumerate(layers):
        x = base * (1.0 + 0.1 * k) + noise * rng.normal(size=base.shape)
        np.save(directory / f"layer_{layer}.npy", x.astype(np.float16))
    obs_names = np.array([f"spot_{c}" for c in range(n_cells)])
    pd.DataFrame({"cell": cells.astype(np.int64), "obs_name": obs_names[cells], "gene": tok_genes,
                  "position": np.asarray(positions, dtype=np.int64)}).to_parquet(directory / "index.parquet")
    (directory / "meta.json").write_text(json.dumps({
        "model": model, "kind": "toy", "layers": list(layers), "d_model": d_model, "n_tokens": int(n_tokens),
        "n_cells": int(n_cells), "untrained": True, "checkpoint": None,
    }))
    if preprocessed is not None:
        import anndata as ad

        counts = rng.poisson(2.0, size=(n_cells, n_genes)).astype(np.float32)
        adata = ad.AnnData(X=counts, obs=pd.DataFrame(index=obs_names), var=pd.DataFrame(index=symbols))
        adata.obs["group"] = pd.Categorical(groups)
        adata.obsm["spatial"] = coords
        adata.var["gene_ids"] = genes
        adata.layers["counts"] = counts.copy()
        Path(preprocessed).parent.mkdir(parents=True, exist_ok=True)
        adata.write_h5ad(preprocessed)
    if factors is not None:
        other = rng.random(n_cells)
        np.save(factors, np.stack([spatial_signal, other], axis=1))
    return PlantedExport(directions, gene_direction, n_gene_dirs, n_gene_dirs + 1, coords, groups,
                         spatial_signal, genes, symbols)
