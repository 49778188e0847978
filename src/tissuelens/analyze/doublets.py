"""Doublets for single-cell data: scanpy's Scrublet score and call per cell, on raw counts."""

from __future__ import annotations

import numpy as np
import pandas as pd

from tissuelens.errors import InputError, why


def scrublet(counts, obs_names, expected_rate: float, seed: int, where: str = "counts") -> pd.DataFrame:
    """DataFrame indexed by cell: `doublet_score`, `predicted_doublet` (scanpy.pp.scrublet's call); the score
    threshold Scrublet chose is in `.attrs["threshold"]` (None when it found none and called no doublet).

    Cells scanpy.pp.scrublet filters out first (fewer than 3 detected genes among genes seen in 3 cells) get a
    NaN score and are not called. Data too small for Scrublet (it embeds in 30 principal components of its own
    highly variable genes) is an InputError naming `where`."""
    import anndata as ad
    import scanpy as sc

    holder = ad.AnnData(counts.astype(np.float32), obs=pd.DataFrame(index=pd.Index(obs_names)))
    try:
        sc.pp.scrublet(holder, expected_doublet_rate=expected_rate, random_state=seed, verbose=False)
    except ValueError as exc:
        raise InputError(f"{where}: Scrublet cannot score {holder.n_obs} cells x {holder.n_vars} genes "
                         f"({why(exc)})") from None
    out = pd.DataFrame({"doublet_score": holder.obs["doublet_score"].to_numpy(np.float64),
                        "predicted_doublet": holder.obs["predicted_doublet"].astype("boolean").fillna(False).to_numpy(bool)},
                       index=holder.obs_names)
    threshold = holder.uns["scrublet"].get("threshold")
    out.attrs["threshold"] = None if threshold is None else float(threshold)
    return out
