"""Bring any loaded AnnData into the common contract that every later rule relies on.

Contract: integer counts (CSR) in `X`; `obsm["spatial"]` (N, 2) float when the dataset is spatial;
the group column present in `obs` when `group_key` is set; `var["gene_ids"]` when known; symbols as
var_names; provenance in `uns["tissuelens"]`, with the dataset's effective `section_key`.

A reader may offer entry options it found in the data in `uns[ENTRY_DEFAULTS]` (today `section_key`: a
SpatialData table over several regions names each cell's region); the entry's own value wins, and preprocess
reads the effective one back from `uns["tissuelens"]` (tissuelens.sections.dataset_section_key).
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import scipy.sparse as sp

from tissuelens.errors import InputError

log = logging.getLogger(__name__)
ENTRY_DEFAULTS = "entry_defaults"


def _counts_matrix(adata, where: str, counts_layer: str | None):
    if counts_layer is not None:
        if counts_layer not in adata.layers:
            raise InputError(f"{where}: counts_layer '{counts_layer}' not in layers (has: {', '.join(adata.layers) or 'none'})")
        return adata.layers[counts_layer], f"layers['{counts_layer}']"
    if "counts" in adata.layers:
        return adata.layers["counts"], "layers['counts']"
    return adata.X, "X"


def integer_counts(matrix, where: str, label: str) -> sp.csr_matrix:
    """Return `matrix` as CSR integers; InputError naming `where` if values are negative or fractional."""
    if matrix is None:
        raise InputError(f"{where}: {label} is empty (no expression matrix)")
    csr = sp.csr_matrix(matrix)
    values = csr.data
    if values.size and not np.all(np.isfinite(values)):
        raise InputError(f"{where}: {label} contains NaN or infinite values")
    if values.size and values.min() < 0:
        raise InputError(f"{where}: {label} contains negative values; counts must be non-negative integers")
    if values.size and not np.issubdtype(values.dtype, np.integer):
        frac = values[np.abs(values - np.round(values)) > 1e-6]
        if frac.size:
            raise InputError(
                f"{where}: {label} holds non-integer values (e.g. {frac[0]:.4g}) and no counts layer was found; "
                "set counts_layer: to the layer with raw counts"
            )
    dtype = np.int32 if (not values.size or values.max() < np.iinfo(np.int32).max) else np.int64
    out = sp.csr_matrix((np.round(values).astype(dtype), csr.indices, csr.indptr), shape=csr.shape)
    out.sum_duplicates()
    return out


def join_labels(adata, labels: dict, where: str) -> None:
    path = labels["path"]
    try:
        table = pd.read_csv(path)
    except FileNotFoundError:
        raise InputError(f"{path}: labels CSV not found") from None
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
        raise InputError(f"{path}: cannot parse labels CSV ({exc})") from None
    id_col = labels.get("id_column", table.columns[0])
    for col in (id_col, labels["column"]):
        if col not in table.columns:
            raise InputError(f"{path}: labels CSV has no column '{col}' (has: {', '.join(map(str, table.columns))})")
    table = table.drop_duplicates(id_col).set_index(table[id_col].astype(str))
    matched = adata.obs_names.isin(table.index)
    if not matched.any():
        raise InputError(f"{path}: no cell id in column '{id_col}' matches the cells of {where}")
    adata.obs[labels["column"]] = table[labels["column"]].reindex(adata.obs_names).values


def planar_coordinates(coords: np.ndarray, dims, where: str) -> np.ndarray:
    """(n, 2) coordinates: the array itself when it has two columns, the two columns `dims` names when it
    has more (x, y, z: which plane the workflow sees is the user's choice, never a silent cut)."""
    if coords.ndim != 2 or coords.shape[1] < 2:
        raise InputError(f"{where} must be (n_cells, 2) coordinates, got shape {coords.shape}")
    if dims is None:
        if coords.shape[1] > 2:
            raise InputError(f"{where} has {coords.shape[1]} columns; set spatial_dims: [i, j] to pick the two to use")
        return coords
    if max(dims) >= coords.shape[1] or dims[0] == dims[1]:
        raise InputError(f"{where}: spatial_dims {list(dims)} does not name two different columns of {coords.shape[1]}")
    log.info("%s: using columns %d and %d of %d as the spatial coordinates (spatial_dims)", where, dims[0], dims[1],
             coords.shape[1])
    return coords[:, list(dims)]


def with_reader_defaults(adata, entry: dict, where: str) -> dict:
    """`entry` with the section_key a reader offered (uns[ENTRY_DEFAULTS], removed) where the entry sets none and
    the dataset is spatial (sections are a spatial notion here)."""
    offered = dict(adata.uns.pop(ENTRY_DEFAULTS, None) or {})
    key = offered.get("section_key")
    if key and not entry.get("section_key") and entry["spatial"]:
        log.info("%s: section_key '%s' (the regions the data holds; set section_key: to use another column)", where, key)
        return {**entry, "section_key": key}
    return entry


def finalize(adata, entry: dict, where: str, dataset: str, seed: int):
    """Check and normalise a freshly loaded AnnData in place of `entry`'s options; return it."""
    entry = with_reader_defaults(adata, entry, where)
    counts, label = _counts_matrix(adata, where, entry.get("counts_layer"))
    adata.X = integer_counts(counts, where, label)
    adata.layers.pop("counts", None)  # X holds them now; preprocess recreates the layer

    if "labels" in entry:
        join_labels(adata, entry["labels"], where)

    if entry["spatial"]:
        key = entry.get("spatial_key", "spatial")
        if key not in adata.obsm:
            have = ", ".join(adata.obsm) or "none"
            raise InputError(f"{where}: spatial: true but obsm has no '{key}' coordinates (obsm keys: {have}); set spatial_key:")
        adata.obsm["spatial"] = planar_coordinates(np.asarray(adata.obsm[key], dtype=np.float64), entry.get("spatial_dims"),
                                                   f"{where}: obsm['{key}']")

    group_key = entry.get("group_key")
    if group_key is not None and group_key not in adata.obs:
        raise InputError(f"{where}: group_key '{group_key}' is not an obs column (has: {', '.join(map(str, adata.obs.columns))})")

    if entry.get("section_key"):
        from tissuelens.sections import section_labels_from

        section_labels_from(adata.obs, entry["section_key"], where)  # on single-cell data: samples, for Scrublet

    symbols = entry.get("gene_symbols_key")
    if symbols is not None:
        if symbols not in adata.var:
            raise InputError(f"{where}: gene_symbols_key '{symbols}' is not a var column")
        adata.var["original_index"] = adata.var_names.astype(str)
        adata.var_names = adata.var[symbols].astype(str).values
    ids = entry.get("gene_ids_key")
    if ids is not None:
        if ids not in adata.var:
            raise InputError(f"{where}: gene_ids_key '{ids}' is not a var column")
        adata.var["gene_ids"] = adata.var[ids].astype(str).values
    elif "gene_ids" not in adata.var and adata.var_names.str.upper().str.startswith("ENS").mean() > 0.5:
        adata.var["gene_ids"] = adata.var_names.astype(str)
    adata.var_names_make_unique()
    adata.obs_names_make_unique()

    n = entry.get("subsample")
    if n is not None and n < adata.n_obs:
        keep = np.sort(np.random.default_rng(seed).choice(adata.n_obs, size=n, replace=False))
        adata = adata[keep].copy()

    adata.uns["tissuelens"] = {
        "dataset": dataset,
        "source": entry["source"],
        "origin": where,
        "spatial": bool(entry["spatial"]),
        "group_key": group_key or "",
        "section_key": entry.get("section_key") or "",
    }
    return adata
