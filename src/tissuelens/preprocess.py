"""Preprocess: drop unusable cells, clean groups, QC filters, highly variable genes, log-normalise.

Order: missing coordinates/expression -> platform QC (transcripts, control share) -> QC cell filters -> Scrublet doublets (single-cell data, when
remove_doublets is on) -> missing group -> small groups -> gene filter. Scrublet sees the same cells with or
without a group column, so rule `domains` (no groups yet) and rule `preprocess` (groups from those domains)
call the same doublets.
Every filter records how many cells or genes it removed (returned as the QC report). Spatial data then get
their one spatial graph, per section (`add_spatial_graph`), which every later step reads.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import scipy.sparse as sp

from tissuelens.errors import InputError

log = logging.getLogger(__name__)
MISSING_GROUP_NAMES = {"", "none", "nan", "na", "null"}


def _drop_cells(adata, keep: np.ndarray, report: dict, name: str):
    report["cells_removed"][name] = int((~keep).sum())
    return adata[keep].copy() if not keep.all() else adata


def _nonfinite_rows(x) -> np.ndarray:
    """Rows holding NaN or inf; a sparse matrix is read through its stored values only."""
    if not sp.issparse(x):
        return ~np.isfinite(np.asarray(x)).all(axis=1)
    coo = x.tocoo()
    bad = np.zeros(x.shape[0], dtype=bool)
    bad[coo.row[~np.isfinite(coo.data)]] = True
    return bad


def drop_missing(adata, spatial: bool, report: dict):
    if spatial:
        keep = np.isfinite(adata.obsm["spatial"]).all(axis=1)
        adata = _drop_cells(adata, keep, report, "nan_coordinates")
    data = adata.X.data if sp.issparse(adata.X) else np.asarray(adata.X)
    if data.size and np.issubdtype(data.dtype, np.floating) and not np.isfinite(data).all():
        adata = _drop_cells(adata, ~_nonfinite_rows(adata.X), report, "nan_expression")
    else:
        report["cells_removed"]["nan_expression"] = 0
    return adata


# per-cell QC columns of cell-segmented platforms: decoded gene transcripts (Xenium's cells.parquet; the
# merscope and cosmx readers sum their gene columns into it) and the counts of control features: Xenium's
# control probes and control/unassigned codewords, MERSCOPE's Blank-* barcodes, CosMx's negative probes and
# system controls
TRANSCRIPTS_COLUMN = "transcript_counts"
CONTROL_COLUMNS = ("control_probe_counts", "control_codeword_counts", "unassigned_codeword_counts", "blank_counts",
                   "negative_probe_counts", "system_control_counts")


def platform_filter_cells(adata, settings: dict, report: dict):
    """`min_transcripts` and `max_control_fraction` where the platform's QC columns are in obs (Xenium,
    MERSCOPE, CosMx); a setting whose column is absent is skipped and logged."""
    min_tx, max_ctrl = settings.get("min_transcripts"), settings.get("max_control_fraction")
    if min_tx is not None:
        if TRANSCRIPTS_COLUMN in adata.obs:
            keep = adata.obs[TRANSCRIPTS_COLUMN].to_numpy(dtype=np.float64) >= min_tx
            adata = _drop_cells(adata, keep, report, "min_transcripts")
        else:
            log.info("min_transcripts: no obs['%s'] (not a cell-segmented platform's table); skipped", TRANSCRIPTS_COLUMN)
    if max_ctrl is not None:
        present = [c for c in CONTROL_COLUMNS if c in adata.obs]
        if present and TRANSCRIPTS_COLUMN in adata.obs:
            control = adata.obs[present].to_numpy(dtype=np.float64).sum(axis=1)
            total = control + adata.obs[TRANSCRIPTS_COLUMN].to_numpy(dtype=np.float64)
            share = np.divide(control, total, out=np.zeros_like(control), where=total > 0)
            adata.obs["control_fraction"] = share
            adata = _drop_cells(adata, share <= max_ctrl, report, "max_control_fraction")
        else:
            log.info("max_control_fraction: no control-count columns in obs; skipped")
    return adata


def drop_missing_groups(adata, group_key: str, report: dict):
    labels = adata.obs[group_key]
    missing = labels.isna().to_numpy() | labels.astype(str).str.strip().str.lower().isin(MISSING_GROUP_NAMES).to_numpy()
    return _drop_cells(adata, ~missing, report, "missing_group")


def qc_filter_cells(adata, settings: dict, report: dict):
    import scanpy as sc

    adata = platform_filter_cells(adata, settings, report)

    adata.var["mt"] = adata.var_names.str.upper().str.startswith("MT-")
    sc.pp.calculate_qc_metrics(adata, qc_vars=["mt"], percent_top=None, log1p=False, inplace=True)
    adata = _drop_cells(adata, adata.obs["total_counts"].to_numpy() >= settings["min_counts"], report, "min_counts")
    adata = _drop_cells(adata, adata.obs["n_genes_by_counts"].to_numpy() >= settings["min_genes"], report, "min_genes")
    if settings.get("max_pct_mt") is not None:
        adata = _drop_cells(adata, adata.obs["pct_counts_mt"].to_numpy() <= settings["max_pct_mt"], report, "max_pct_mt")
    return adata


def remove_doublets(adata, expected_rate: float, seed: int, report: dict, where: str, section_key: str | None = None):
    """Drop the cells Scrublet calls doublets (scanpy.pp.scrublet on the counts, per section or sample when the
    dataset names a section_key); keep every cell's score in obs['doublet_score'] and the call's summary in
    report['doublets'] and uns['doublets'] (with each section's threshold under 'thresholds')."""
    from tissuelens.analyze.doublets import scrublet
    from tissuelens.sections import section_labels_from

    batches = section_labels_from(adata.obs, section_key, where)
    scores = scrublet(adata.X, adata.obs_names, expected_rate, seed, where=f"{where} (preprocess.remove_doublets)",
                      batches=None if batches is None else np.asarray(batches))
    called = scores["predicted_doublet"].reindex(adata.obs_names, fill_value=False).to_numpy(bool)
    adata.obs["doublet_score"] = scores["doublet_score"].reindex(adata.obs_names).to_numpy()
    record = {"n_cells": int(len(called)), "n_called": int(called.sum()), "rate": float(called.sum() / max(len(called), 1)),
              "threshold": scores.attrs["threshold"], "expected_rate": float(expected_rate)}
    if "thresholds" in scores.attrs:
        record["thresholds"] = dict(scores.attrs["thresholds"])
    report["doublets"] = record
    adata = _drop_cells(adata, ~called, report, "doublets")
    adata.uns["doublets"] = record
    return adata


def clean_groups(adata, group_key: str, settings: dict, report: dict):
    """Drop groups below the size threshold; obs['group'] = remaining groups, re-encoded."""
    labels = adata.obs[group_key].astype(str)
    sizes = labels.value_counts()
    threshold = max(settings["min_group_fraction"] * adata.n_obs, settings["min_group_size"])
    small = sizes[sizes < threshold].index
    report["groups_removed"] = sorted(map(str, small))
    adata = _drop_cells(adata, ~labels.isin(small).to_numpy(), report, "small_groups")
    kept = adata.obs[group_key].astype(str)
    adata.obs["group"] = pd.Categorical(kept, categories=sorted(kept.unique()))
    return adata


def preprocess(adata, entry: dict, settings: dict, where: str, doublet_rate: float = 0.05, seed: int = 0):
    """Return (preprocessed AnnData, QC report). InputError if nothing survives.

    doublet_rate, seed: Scrublet's expected doublet rate and seed, used when settings['remove_doublets'] is on
    and the data is not spatial (a spot holds several cells by design)."""
    import scanpy as sc

    from tissuelens.sections import dataset_section_key

    entry = {**entry, "section_key": dataset_section_key(entry, adata)}  # a section_key the download found counts
    report = {"n_cells_raw": int(adata.n_obs), "n_genes_raw": int(adata.n_vars), "cells_removed": {}, "genes_removed": {}}
    group_key = entry.get("group_key")
    if group_key is not None and group_key not in adata.obs:
        raise InputError(f"{where}: group_key '{group_key}' is not an obs column")
    if entry["spatial"] and "spatial" not in adata.obsm:
        raise InputError(f"{where}: spatial: true but obsm['spatial'] is missing")
    if entry["spatial"]:
        from tissuelens.sections import section_labels_from

        section_labels_from(adata.obs, entry.get("section_key"), where)  # a bad section_key fails before any work

    adata = drop_missing(adata, entry["spatial"], report)
    adata = qc_filter_cells(adata, settings, report)
    if settings.get("remove_doublets"):
        if entry["spatial"]:
            log.info("preprocess.remove_doublets applies to single-cell data; %s is spatial, no cell removed", where)
        else:
            adata = remove_doublets(adata, doublet_rate, seed, report, where, entry.get("section_key"))
    if group_key is not None:
        adata = drop_missing_groups(adata, group_key, report)
        adata = clean_groups(adata, group_key, settings, report)
    if adata.n_obs == 0:
        removed = ", ".join(f"{k}: {v}" for k, v in report["cells_removed"].items() if v)
        raise InputError(f"{where}: filters removed every cell ({removed}); relax the preprocess settings")

    detected = np.asarray((adata.X > 0).sum(axis=0)).ravel()
    keep_genes = detected >= settings["min_cells"]
    report["genes_removed"]["min_cells"] = int((~keep_genes).sum())
    if settings["drop_mt_genes"]:
        report["genes_removed"]["mt_genes"] = int((keep_genes & adata.var["mt"].to_numpy()).sum())
        keep_genes &= ~adata.var["mt"].to_numpy()
    adata = adata[:, keep_genes].copy()
    if adata.n_vars == 0:
        raise InputError(f"{where}: filters removed every gene (min_cells={settings['min_cells']})")

    adata.layers["counts"] = adata.X.copy()
    flag_hvg(adata, settings)
    sc.pp.normalize_total(adata, target_sum=settings["target_sum"])
    sc.pp.log1p(adata)
    if settings["subset_hvg"]:
        report["genes_removed"]["not_highly_variable"] = int((~adata.var["highly_variable"]).sum())
        adata = adata[:, adata.var["highly_variable"].to_numpy()].copy()

    if entry["spatial"]:
        graph = add_spatial_graph(adata, entry, settings, where)
        report["spatial_graph"] = {k: graph[k] for k in ("method", "reason", "section_key", "sections", "mean_degree",
                                                         "n_isolated")}
    report.update(
        n_cells=int(adata.n_obs),
        n_genes=int(adata.n_vars),
        n_highly_variable=int(adata.var["highly_variable"].sum()),
        groups={str(k): int(v) for k, v in adata.obs["group"].value_counts(sort=False).items()} if group_key else {},
    )
    return adata, report


def add_spatial_graph(adata, entry: dict, settings: dict, where: str) -> dict:
    """The dataset's spatial graph, one per section (tissuelens.spatial_graph), in obsp/uns; returns its record.
    `settings`: the preprocess settings (their `spatial_graph`, schema defaults for keys they lack)."""
    from tissuelens.config import deep_merge, step_defaults
    from tissuelens.spatial_graph import build_spatial_graph

    graph_settings = deep_merge(step_defaults("preprocess")["spatial_graph"], settings.get("spatial_graph"))
    return build_spatial_graph(adata, graph_settings, entry.get("section_key"), entry.get("source"), where)


def read_raw(path):
    """raw.h5ad with its counts checked to be integers (the download contract)."""
    from tissuelens.datasets.contract import integer_counts
    from tissuelens.io import read_h5ad

    adata = read_h5ad(path)
    adata.X = integer_counts(adata.X, str(path), "X")
    return adata


def attach_groups(adata, groups_path, column: str):
    """obs[column] from the domains table (cells it lacks get none, so preprocess drops them as missing)."""
    table = pd.read_parquet(groups_path, columns=[column])
    adata.obs[column] = table[column].astype(str).reindex(adata.obs_names).to_numpy()
    return adata


def flag_hvg(adata, settings: dict) -> None:
    """var['highly_variable'] from raw counts; all genes when n_top_genes is null or >= the gene count."""
    import scanpy as sc

    n_top = settings["n_top_genes"]
    if n_top is None or n_top >= adata.n_vars:
        adata.var["highly_variable"] = True
        return
    if settings["hvg_flavor"] == "pearson_residuals":
        sc.experimental.pp.highly_variable_genes(adata, flavor="pearson_residuals", n_top_genes=n_top, layer="counts")
    else:
        sc.pp.highly_variable_genes(adata, flavor="seurat_v3", n_top_genes=n_top, layer="counts")
