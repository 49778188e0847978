"""Doublets for single-cell data: scanpy's Scrublet score and call per cell, on raw counts, per section or sample
when the dataset names one (its `section_key`), so simulated doublets never pair cells of two samples."""

from __future__ import annotations

import numpy as np
import pandas as pd

from tissuelens.errors import InputError, why


def scrublet(counts, obs_names, expected_rate: float, seed: int, where: str = "counts", batches=None) -> pd.DataFrame:
    """DataFrame indexed by cell: `doublet_score`, `predicted_doublet` (scanpy.pp.scrublet's call); the score
    threshold Scrublet chose is in `.attrs["threshold"]` (None when it found none and called no doublet).

    `batches` (one label per cell, e.g. the dataset's section_key column): Scrublet runs on each batch alone, as
    scanpy.pp.scrublet(batch_key=...) does (same seed per batch, batches in sorted order), so doublets are
    simulated and scored within a batch only; each batch's threshold is in `.attrs["thresholds"]` and
    `.attrs["threshold"]` is None. One batch is the same as none.

    Cells scanpy.pp.scrublet filters out first (fewer than 3 detected genes among genes seen in 3 cells) get a
    NaN score and are not called (scanpy's batch_key path raises a KeyError on such cells; running each batch
    here keeps them). Data too small for Scrublet (it embeds in 30 principal components of its own highly
    variable genes) is an InputError naming `where` (and the batch)."""
    names = pd.Index(np.asarray(obs_names, dtype=str))
    labels = None if batches is None else np.asarray(batches, dtype=str)
    if labels is None or len(np.unique(labels)) < 2:
        return _scrublet_one(counts, names, expected_rate, seed, where)
    parts, thresholds = [], {}
    for batch in np.unique(labels):
        rows = np.flatnonzero(labels == batch)
        part = _scrublet_one(counts[rows], names[rows], expected_rate, seed, f"{where}, section '{batch}'")
        thresholds[str(batch)] = part.attrs["threshold"]
        parts.append(part)
    out = pd.concat(parts).reindex(names)
    out.attrs = {"threshold": None, "thresholds": thresholds}
    return out


def _scrublet_one(counts, names: pd.Index, expected_rate: float, seed: int, where: str) -> pd.DataFrame:
    import anndata as ad
    import scanpy as sc

    holder = ad.AnnData(counts.astype(np.float32), obs=pd.DataFrame(index=names))
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
