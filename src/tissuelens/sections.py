"""Tissue sections of one dataset: each cell's section from the dataset's `section_key` obs column, as
recorded by the spatial graph (tissuelens.spatial_graph.build_spatial_graph, `uns["spatial_graph"]`), and map
coordinates that draw sections side by side. numpy and pandas only, so every environment (the Python 3.9
Loki env too) can read the sections.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from tissuelens.errors import InputError

GRAPH_RECORD = "spatial_graph"  # uns key of the record


def section_labels_from(obs, section_key: str | None, where: str) -> pd.Categorical | None:
    """The section of every cell (`obs[section_key]` as string categories), None without a section_key.
    InputError naming `where` when the column is missing or has missing values."""
    if not section_key:
        return None
    if section_key not in obs:
        raise InputError(f"{where}: section_key '{section_key}' is not an obs column "
                         f"(has: {', '.join(map(str, obs.columns))})")
    col = obs[section_key]
    missing = col.isna().to_numpy()
    if missing.any():
        raise InputError(f"{where}: section_key '{section_key}' is missing for {int(missing.sum())} cells "
                         f"(e.g. '{obs.index[np.flatnonzero(missing)[0]]}'); every cell needs a section")
    text = col.astype(str).to_numpy()
    return pd.Categorical(text, categories=sorted(set(text), key=_natural))


def dataset_section_key(entry: dict, adata) -> str | None:
    """The dataset's section_key: the entry's, else the one the download recorded in raw.h5ad's
    uns["tissuelens"] (a reader found sections in the data: tissuelens.datasets.contract.ENTRY_DEFAULTS)."""
    recorded = adata.uns.get("tissuelens", {})
    return entry.get("section_key") or (recorded.get("section_key") if hasattr(recorded, "get") else None) or None


def _natural(label: str):
    """Sort numbers (Bregma -0.04, slice 10) by value, other labels by text."""
    try:
        return (0, float(label), "")
    except ValueError:
        return (1, 0.0, label)


def section_labels(adata) -> pd.Categorical | None:
    """The sections recorded by `build_spatial_graph` (None for a dataset of one section)."""
    record = adata.uns.get(GRAPH_RECORD, {})
    key = record.get("section_key") if hasattr(record, "get") else None
    if not key:
        return None
    return pd.Categorical(adata.obs[key].astype(str).to_numpy(), categories=list(map(str, record["sections"])))


def tile_sections(xy: np.ndarray, sections: np.ndarray | None, n_sections: int | None = None) -> np.ndarray:
    """Coordinates for maps: each section shifted right of the previous one (a gap of a tenth of the widest
    section), so overlapping sections are drawn side by side; unchanged without sections."""
    xy = np.asarray(xy, dtype=np.float64)
    if sections is None or len(xy) == 0:
        return xy
    n = int(n_sections or sections.max() + 1)
    out = xy.copy()
    lows = np.array([xy[sections == s, 0].min() if (sections == s).any() else 0.0 for s in range(n)])
    widths = np.array([np.ptp(xy[sections == s, 0]) if (sections == s).any() else 0.0 for s in range(n)])
    step = widths.max() * 1.1 if widths.max() > 0 else 1.0
    for s in range(n):
        rows = sections == s
        out[rows, 0] = xy[rows, 0] - lows[s] + s * step
    return out
