"""The dataset's one spatial graph: built by preprocess (so rule `domains`, which preprocesses in memory, gets
the same graph), per section and following the platform's geometry, recorded in `preprocessed.h5ad`
(squidpy's `obsp["spatial_connectivities"]` / `obsp["spatial_distances"]` and `uns["spatial_graph"]`); every
later step reads that graph (`spatial_connectivities`) and the sections (tissuelens.sections) instead of
building its own. Sections are squidpy's `library_key`: the graph is built section by section and joined
block-diagonally, so no edge links cells of different sections.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.spatial import QhullError

from tissuelens.errors import InputError
from tissuelens.sections import GRAPH_RECORD, section_labels, section_labels_from  # noqa: F401 (re-exported)

log = logging.getLogger(__name__)
GRID_SPACING_TOLERANCE = 0.05  # neighbours within (1 + this) x the nearest distance count as one lattice shell


def lattice_neighbours(coords: np.ndarray, sections=None) -> int:
    """4 (square grid) or 6 (hexagonal grid): the median number of spots at the nearest spacing."""
    from sklearn.neighbors import NearestNeighbors

    counts = []
    groups = [np.arange(len(coords))] if sections is None else [np.flatnonzero(sections == s) for s in np.unique(sections)]
    for idx in groups:
        if len(idx) < 8:
            continue
        dist, _ = NearestNeighbors(n_neighbors=min(9, len(idx))).fit(coords[idx]).kneighbors(coords[idx])
        nearest = dist[:, 1:2]
        counts.append(((dist[:, 1:] <= nearest * (1 + GRID_SPACING_TOLERANCE)) & (nearest > 0)).sum(axis=1))
    if not counts:
        return 6
    return 4 if np.median(np.concatenate(counts)) <= 5 else 6


def resolve_geometry(settings: dict, source: str | None, obs_columns) -> dict:
    """The graph `settings["method"]` asks for; `auto` follows the platform: a spot array (Visium HD bins:
    square grid; other data with obs array_row/array_col, e.g. Visium or the synthetic grids: the lattice
    read off the coordinates) by rings of the grid, single-cell platforms by Delaunay with a maximum edge."""
    method = settings["method"]
    reason = "set by preprocess.spatial_graph.method"
    if method == "auto":
        if source == "visium_hd":
            method, reason = "grid", "auto: Visium HD square bins"
        elif {"array_row", "array_col"} <= set(obs_columns):
            method, reason = "grid", "auto: a spot array (obs array_row/array_col)"
        else:
            method, reason = "delaunay", "auto: single cells or beads (no spot array)"
    return {"method": method, "reason": reason}


def build_spatial_graph(adata, settings: dict, section_key: str | None = None, source: str | None = None,
                        where: str = "") -> dict:
    """The dataset's spatial graph (squidpy `spatial_neighbors`, one block per section through `library_key`)
    in `obsp["spatial_connectivities"]`/`["spatial_distances"]`, its record in `uns["spatial_graph"]`
    (returned). `settings`: preprocess.spatial_graph."""
    import squidpy as sq

    labels = section_labels_from(adata.obs, section_key, where)
    geometry = resolve_geometry(settings, source, adata.obs.columns)
    method = geometry["method"]
    coords = np.asarray(adata.obsm["spatial"], dtype=np.float64)
    library_key = None
    if labels is not None:
        library_key = section_key
        adata.obs[section_key] = labels
    codes = None if labels is None else np.asarray(labels.codes)
    record = {"method": method, "reason": geometry["reason"], "section_key": section_key or "",
              "sections": [] if labels is None else list(map(str, labels.categories))}
    if method == "grid":
        n_neighs = settings["n_neighs"] or (4 if source == "visium_hd" else lattice_neighbours(coords, codes))
        build, kwargs = sq.gr.spatial_neighbors_grid, {"n_neighs": int(n_neighs), "n_rings": int(settings["n_rings"])}
    elif method == "knn":
        build, kwargs = sq.gr.spatial_neighbors_knn, {"n_neighs": int(settings["n_neighs"] or 6)}
    elif method == "radius":
        if not settings["radius"]:
            raise InputError(f"{where}: preprocess.spatial_graph.method radius needs preprocess.spatial_graph.radius "
                             "(in coordinate units)")
        build, kwargs = sq.gr.spatial_neighbors_radius, {"radius": float(settings["radius"])}
    else:
        build, kwargs = sq.gr.spatial_neighbors_delaunay, {}
    record.update({k: (list(v) if isinstance(v, tuple) else v) for k, v in kwargs.items()})
    _check_section_sizes(labels, len(coords), method, int(kwargs.get("n_neighs", 0)), where)
    holder = _coordinate_holder(coords, adata.obs_names, labels, section_key)
    try:
        build(holder, library_key=library_key, key_added="spatial", **kwargs)
    except QhullError:  # cells on one line (a strip of spots, a 1-D test layout) have no triangulation
        method, kwargs = "knn", {"n_neighs": int(settings["n_neighs"] or 6)}
        _check_section_sizes(labels, len(coords), method, kwargs["n_neighs"], where)
        log.warning("%s: the coordinates of a section lie on a line, which has no Delaunay triangulation; "
                    "a %d-nearest-neighbour graph instead", where, kwargs["n_neighs"])
        record.update(method=method, reason=record["reason"] + "; collinear coordinates: knn", **kwargs)
        sq.gr.spatial_neighbors_knn(holder, library_key=library_key, key_added="spatial", **kwargs)
    conn = sp.csr_matrix(holder.obsp["spatial_connectivities"], dtype=np.float32)
    dist = sp.csr_matrix(holder.obsp["spatial_distances"], dtype=np.float32)
    if method == "delaunay":
        max_edge = settings["max_edge"] or upper_whisker(dist.data)
        conn, dist = prune_edges(conn, dist, max_edge)
        record["max_edge"] = float(max_edge)
    conn.eliminate_zeros()
    degree = np.diff(conn.indptr)
    adata.obsp["spatial_connectivities"], adata.obsp["spatial_distances"] = conn, dist
    adata.uns["spatial_neighbors"] = {"connectivities_key": "spatial_connectivities",
                                      "distances_key": "spatial_distances",
                                      "params": {"method": method, "library_key": library_key or ""}}
    record.update(n_edges=int(conn.nnz), mean_degree=float(degree.mean()) if len(degree) else 0.0,
                  n_isolated=int((degree == 0).sum()))
    adata.uns[GRAPH_RECORD] = record
    return record


def upper_whisker(lengths: np.ndarray) -> float:
    """Q3 + 1.5 IQR of the edge lengths (Giotto's automatic maximum Delaunay distance): longer edges bridge holes
    and run along the tissue's outline."""
    if len(lengths) == 0:
        return float("inf")
    q1, q3 = np.percentile(lengths, [25, 75])
    return float(q3 + 1.5 * (q3 - q1))


def prune_edges(conn: sp.csr_matrix, dist: sp.csr_matrix, max_edge: float) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """Both matrices without the edges longer than `max_edge` (same sparsity pattern assumed: squidpy's)."""
    dist = dist.tocoo()
    keep = dist.data <= max_edge
    n = conn.shape[0]
    rows, cols = dist.row[keep], dist.col[keep]
    values = np.asarray(conn[rows, cols]).ravel()
    return (sp.csr_matrix((values, (rows, cols)), shape=(n, n), dtype=np.float32),
            sp.csr_matrix((dist.data[keep], (rows, cols)), shape=(n, n), dtype=np.float32))


def _check_section_sizes(labels, n_obs: int, method: str, n_neighs: int, where: str) -> None:
    """Every section (or the whole dataset) large enough for its graph: 3 cells for a triangulation, one more
    than the neighbours asked for by a kNN or grid search, 2 otherwise."""
    need = {"delaunay": 3, "knn": n_neighs + 1, "grid": n_neighs + 1}.get(method, 2)
    sizes = np.array([n_obs]) if labels is None else np.bincount(labels.codes, minlength=len(labels.categories))
    if sizes.min() >= need:
        return
    what = "the dataset" if labels is None else f"section '{labels.categories[int(sizes.argmin())]}'"
    raise InputError(f"{where}: {what} has {int(sizes.min())} cells after preprocessing; a {method} spatial graph "
                     f"needs at least {need} (preprocess.spatial_graph)")


def _coordinate_holder(coords, obs_names, labels, section_key):
    """An AnnData with only coordinates (and sections) for squidpy, so it neither copies nor edits the data."""
    import anndata as ad

    holder = ad.AnnData(sp.csr_matrix((coords.shape[0], 0), dtype=np.float32),
                        obs=pd.DataFrame(index=pd.Index(np.asarray(obs_names).astype(str))))
    holder.obsm["spatial"] = coords
    if labels is not None:
        holder.obs[section_key] = labels
    return holder


def spatial_connectivities(adata, where: str) -> sp.csr_matrix:
    """The recorded spatial graph (binary); InputError when the file carries none (made before graphs were
    recorded: rerun preprocess)."""
    if "spatial_connectivities" not in adata.obsp or GRAPH_RECORD not in adata.uns:
        raise InputError(f"{where}: no recorded spatial graph (obsp['spatial_connectivities'], uns['{GRAPH_RECORD}']); "
                         "rerun preprocess")
    graph = sp.csr_matrix(adata.obsp["spatial_connectivities"], dtype=np.float64)
    graph.data[:] = 1.0
    return graph
