"""Shared inputs for the Geneformer tests: small AnnData in the preprocessed contract, tiny checkpoints."""

from __future__ import annotations

import functools

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from tissuelens.config import step_defaults


def embed_defaults(**over) -> dict:
    s = step_defaults("embed")
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(s.get(k), dict):
            s[k] = {**s[k], **v}
        else:
            s[k] = v
    return s


def gene_ids(n: int) -> list[str]:
    return [f"ENSG{900000000 + i:011d}" for i in range(n)]


def small_adata(n_cells: int = 40, n_genes: int = 30, seed: int = 0, groups: int = 2) -> ad.AnnData:
    """Counts in layers['counts'], log X, var['gene_ids'], obs['group'], obsm['spatial']."""
    rng = np.random.default_rng(seed)
    group = np.arange(n_cells) % groups
    rate = rng.gamma(1.0, 1.0, size=(groups, n_genes))[group] * 2
    counts = sp.csr_matrix(rng.poisson(rate).astype(np.int32))
    var = pd.DataFrame({"gene_ids": gene_ids(n_genes)}, index=[f"SYM{i}" for i in range(n_genes)])
    obs = pd.DataFrame({"group": pd.Categorical([f"g{g}" for g in group])}, index=[f"cell{i}" for i in range(n_cells)])
    a = ad.AnnData(X=sp.csr_matrix(np.log1p(counts.toarray()).astype(np.float32)), obs=obs, var=var)
    a.layers["counts"] = counts
    a.obsm["spatial"] = rng.uniform(0, 100, size=(n_cells, 2))
    return a


@functools.lru_cache(maxsize=8)
def _checkpoint(root: str, version: str, n_genes: int, n_layers: int, max_input_size: int) -> str:
    from tissuelens.models.geneformer import build_random

    ids = gene_ids(n_genes)
    medians = {g: 0.5 + (i % 7) * 0.25 for i, g in enumerate(ids)}
    out = f"{root}/{version}_{n_genes}_{n_layers}_{max_input_size}"
    build_random(out, ids, medians, version=version, n_layers=n_layers, hidden_size=16, n_heads=2,
                 intermediate_size=32, max_input_size=max_input_size, seed=1)
    return out


def tiny_checkpoint(tmp_root, version="V2", n_genes=30, n_layers=3, max_input_size=64):
    return _checkpoint(str(tmp_root), version, n_genes, n_layers, max_input_size)
