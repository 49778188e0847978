"""Doublets for single-cell data: scanpy's Scrublet score and call per cell, on raw counts."""

from __future__ import annotations

import numpy as np
import pandas as pd


def scrublet(counts, obs_names, expected_rate: float, seed: int) -> pd.DataFrame:
    """DataFrame indexed by cell: `doublet_score`, `predicted_doublet` (scanpy.pp.scrublet's call)."""
    import anndata as ad
    import scanpy as sc

    holder = ad.AnnData(counts.astype(np.float32), obs=pd.DataFrame(index=pd.Index(obs_names)))
    sc.pp.scrublet(holder, expected_doublet_rate=expected_rate, random_state=seed, verbose=False)
    return pd.DataFrame({"doublet_score": holder.obs["doublet_score"].to_numpy(np.float64),
                         "predicted_doublet": holder.obs["predicted_doublet"].to_numpy(bool)},
                        index=holder.obs_names)
