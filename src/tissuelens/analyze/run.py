"""The `analyze` rule's work on one dataset: annotation, doublets, spatial statistics, summary, figures."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from tissuelens.analyze import doublets, markers, spatial_stats
from tissuelens.errors import InputError

log = logging.getLogger(__name__)
ANNOTATION_COLUMNS = {"cell_type": "category", "score": "float64", "padj": "float64", "confidence": "float64",
                      "margin": "float64"}


def domain_key(spatial: bool) -> str:
    return "spatial_domain" if spatial else "expr_leiden"


def load_domains(path, obs_names) -> pd.DataFrame:
    table = pd.read_parquet(path)
    return table.reindex(pd.Index(obs_names))  # cells preprocess kept (it may drop cells of tiny domains)


def run_annotation(adata, settings: dict, where: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per-cell annotation, marker net used); empty frames when no marker file is configured."""
    m = settings["markers"]
    if not m.get("path"):
        empty = pd.DataFrame({k: pd.Series(dtype=v) for k, v in ANNOTATION_COLUMNS.items()},
                             index=pd.Index([], name="obs_names"))
        return empty, pd.DataFrame(columns=["source", "target", "weight"])
    table = markers.read_markers(m["path"], m["format"], m.get("species"), organ=m.get("organ"),
                                 canonical_only=m.get("canonical_only", True), min_sensitivity=m.get("min_sensitivity", 0.5))
    net = markers.match_genes(table, adata.var_names, m["min_markers"], where)
    scores, padj = markers.score_and_padj(adata.X, adata.obs_names, adata.var_names, net, m["method"], where)
    table = markers.annotate(scores, padj, m["alpha"])
    table.index.name = "obs_names"
    return table, net


def run_spatial_stats(adata, keys: list[str], settings: dict, seed: int) -> dict[str, pd.DataFrame]:
    """Every statistic on the recorded spatial graph (one per section; see analyze.spatial_stats)."""
    from tissuelens.spatial_graph import GRAPH_RECORD, spatial_connectivities

    s = settings["spatial_stats"]
    spatial_connectivities(adata, "preprocessed AnnData")  # a file without a recorded graph fails here, plainly
    library_key = adata.uns[GRAPH_RECORD].get("section_key") or None
    nhood, cooc = [], []
    for key in keys:
        if adata.obs[key].nunique() < 2:
            continue
        adata.obs[key] = adata.obs[key].astype(str).astype("category")
        nhood.append(spatial_stats.nhood_enrichment(adata, key, s["n_perms"], seed, library_key))
        cooc.append(spatial_stats.co_occurrence(adata, key, s["co_occurrence_intervals"], s["co_occurrence_max_cells"], seed))
    return {
        "nhood": pd.concat(nhood, ignore_index=True) if nhood else pd.DataFrame(columns=["key", "a", "b", "zscore", "count"]),
        "cooccurrence": (pd.concat(cooc, ignore_index=True) if cooc
                         else pd.DataFrame(columns=spatial_stats.COOCCURRENCE_COLUMNS)),
        "svg": spatial_stats.moran_genes(adata, s["moran_top"], seed),
    }


def moran_summary(svg: pd.DataFrame) -> dict:
    """Genes significant at FDR 0.05 among all genes (not only the `moran_top` written), top and median I of the
    written genes; with several sections each section's figures under `per_section` and, at the top, the
    largest section count, the highest I and the median of the sections' medians."""
    counts = svg.attrs.get("n_significant")
    per_section = {}
    for name, part in svg.groupby("section", sort=False):
        per_section[str(name)] = {"n_significant_fdr_0.05": int(counts[name]) if counts else int((part["pval_fdr_bh"] < 0.05).sum()),
                                  "top_I": float(part["I"].max()), "median_top_I": float(part["I"].median())}
    n_genes = int(svg.attrs.get("n_genes", svg["gene"].nunique()))
    first = next(iter(per_section.values()))
    if len(per_section) == 1:
        return {**first, "n_genes_tested": n_genes}
    return {"n_genes_tested": n_genes,
            "n_significant_fdr_0.05": max(p["n_significant_fdr_0.05"] for p in per_section.values()),
            "top_I": max(p["top_I"] for p in per_section.values()),
            "median_top_I": float(np.median([p["median_top_I"] for p in per_section.values()])),
            "per_section": per_section}


def summarize(domains: pd.DataFrame, annotation: pd.DataFrame, majority: pd.DataFrame, stats: dict,
              dbl: pd.DataFrame, group_source: str | None) -> dict:
    """Aggregated facts (no cell-type names: the tissue-blind narrative reads this file)."""
    out = {"group_source": group_source, "n_cells": int(len(domains))}
    for col in domains.columns:
        counts = domains[col].dropna().astype(str).value_counts()
        if len(counts):
            out[col] = {"n": int(len(counts)), "largest_share": float(counts.iloc[0] / counts.sum()),
                        "smallest_share": float(counts.iloc[-1] / counts.sum())}
    if len(annotation):
        called = annotation["cell_type"].astype(str) != markers.UNASSIGNED
        out["annotation"] = {"n_types_called": int(annotation["cell_type"][called].nunique()),
                             "unassigned_share": float(1.0 - called.mean()),
                             "mean_confidence": float(np.nanmean(annotation["confidence"])),
                             "mean_majority_share": float(majority["majority_share"].mean()) if len(majority) else None}
    if stats.get("svg") is not None and len(stats["svg"]):
        out["moran"] = moran_summary(stats["svg"])
    nh = stats.get("nhood")
    if nh is not None and len(nh):
        dom = nh[nh["key"] == nh["key"].iloc[0]]
        same = dom[dom["a"] == dom["b"]]["zscore"]
        out["nhood_enrichment"] = {"key": str(dom["key"].iloc[0]), "mean_self_zscore": float(same.mean()),
                                   "mean_other_zscore": float(dom[dom["a"] != dom["b"]]["zscore"].mean())}
    if "n_called" in dbl.attrs:  # called and removed by preprocess (remove_doublets)
        out["doublets"] = {"n_called": dbl.attrs["n_called"], "rate": dbl.attrs["rate"],
                           "threshold": dbl.attrs.get("threshold"), "removed": True}
        if dbl.attrs.get("thresholds"):
            out["doublets"]["thresholds"] = dict(dbl.attrs["thresholds"])
    elif "skipped" in dbl.attrs:
        out["doublets"] = {"skipped": dbl.attrs["skipped"]}
    elif len(dbl):
        out["doublets"] = {"n_called": int(dbl["predicted_doublet"].sum()), "rate": float(dbl["predicted_doublet"].mean()),
                           "threshold": dbl.attrs.get("threshold"), "removed": False}
        if dbl.attrs.get("thresholds"):
            out["doublets"]["thresholds"] = dict(dbl.attrs["thresholds"])
    return out


def analyze(adata, domains: pd.DataFrame, settings: dict, spatial: bool, seed: int, where: str,
            group_source: str | None = None, section_key: str | None = None) -> dict:
    """Every analyze output as frames plus the summary dict. `section_key`: the dataset's; Scrublet (single-cell
    data) runs per section or sample."""
    annotation, net = run_annotation(adata, settings, where)
    key = domain_key(spatial)
    majority = (markers.domain_majority(annotation["cell_type"], domains.loc[annotation.index, key])
                if len(annotation) else pd.DataFrame(columns=["domain", "n_cells", "majority_type", "majority_share"]))
    dbl = pd.DataFrame({"doublet_score": pd.Series(dtype="float64"), "predicted_doublet": pd.Series(dtype=bool)})
    if not spatial and "doublets" in adata.uns and "doublet_score" in adata.obs:
        # preprocess.remove_doublets: Scrublet ran before the called doublets were removed; a second run on
        # the remaining cells would call new ones at the expected rate
        dbl = pd.DataFrame({"doublet_score": adata.obs["doublet_score"].to_numpy(np.float64),
                            "predicted_doublet": np.zeros(adata.n_obs, dtype=bool)}, index=adata.obs_names)
        dbl.attrs = dict(adata.uns["doublets"])
    elif not spatial:
        from tissuelens.sections import section_labels_from

        batches = section_labels_from(adata.obs, section_key, where)
        try:
            dbl = doublets.scrublet(adata.layers["counts"], adata.obs_names, settings["doublets"]["expected_rate"], seed,
                                    where, batches=None if batches is None else np.asarray(batches))
        except InputError as exc:  # too small for Scrublet: the rest of the analysis still runs
            log.warning("doublets not scored: %s", exc)
            dbl.attrs["skipped"] = str(exc)
    stats = {"nhood": pd.DataFrame(columns=["key", "a", "b", "zscore", "count"]),
             "cooccurrence": pd.DataFrame(columns=spatial_stats.COOCCURRENCE_COLUMNS),
             "svg": pd.DataFrame(columns=spatial_stats.SVG_COLUMNS)}
    if spatial and settings["spatial_stats"]["enabled"]:
        adata.obs[key] = domains[key].to_numpy()
        keys = [key]
        if len(annotation):
            adata.obs["cell_type"] = annotation["cell_type"].astype(str).to_numpy()
            keys.append("cell_type")
        stats = run_spatial_stats(adata, keys, settings, seed)
    summary = summarize(domains, annotation, majority, stats, dbl, group_source)
    return {"annotation": annotation, "net": net, "majority": majority, "doublets": dbl, **stats, "summary": summary}
