"""Spatial domains against known truth: tissuelens' `niche` method (the default) and its earlier
`aggregate_leiden`, squidpy's `calculate_niche` flavours, BANKSY (pybanksy) and CellCharter.

    python bench/bench_domains.py                       # blocks 2,500 and 10,000 spots x 1 and 2 sections, demo
    python bench/bench_domains.py --sizes 2500 --only ours cellcharter
    python bench/bench_domains.py --sizes 2500 --sections 1 --no-demo --only ours --layout cells --expression-mean 5

Data: `blocks_sections` (tissuelens.datasets.synthetic: 4 blocks over a background = 5 domains, 200 genes, one
non-spatial programme; two sections share coordinates and gene programmes, each its own block layout) and the
demo (900 spots, planted groups in 20 marker genes). Every method gets the same preprocessed data
(tissuelens.preprocess at its defaults: log-normalised X, the recorded per-section spatial graph, 50 PCs).
Settings: ours at the schema's defaults (number of domains chosen; a second row without the refinement,
`refine: false`); CellCharter's ClusterAutoK over 2-10 clusters (its own choice) on its aggregation of 3 hops of
the PCs; squidpy and BANKSY methods have no choice of K, so they get an oracle: the Leiden resolution (of 0.05, 0.1, 0.2, 0.5, 1.0) whose K is nearest the truth,
or the true K (squidpy's cellcharter flavour). Sections: squidpy and BANKSY run per section (library_key;
squidpy's labels are per section by design), the others cluster the sections jointly.
Needs pybanksy, cellcharter and spatialleiden (a side venv: pip install pybanksy cellcharter spatialleiden).
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from tissuelens.analyze.domains import expression_pca, leiden, spatial_domains  # noqa: E402
from tissuelens.config import step_defaults  # noqa: E402
from tissuelens.neighbors import neighbors  # noqa: E402
from tissuelens.spatial_graph import spatial_connectivities  # noqa: E402

RESOLUTIONS = (0.05, 0.1, 0.2, 0.5, 1.0)


def dataset(name: str, n_spots: int, n_sections: int, seed: int, layout: str = "grid", expression_mean: float = 20.0):
    """(preprocessed AnnData with obs["truth"], section key or None). Blocks: `layout` "cells" moves each spot by
    up to 0.45 grid steps and joins them by Delaunay, as single-cell platforms are; `expression_mean` of the
    blocks' programmes (the pattern's default 20)."""
    from tissuelens.datasets.synthetic import blocks_sections, make_synthetic
    from tissuelens.preprocess import preprocess

    if name == "demo":
        raw = make_synthetic(n_spots=900, n_genes=200, n_spatial_factors=3, n_groups=4, marker_genes_per_group=5,
                             seed=seed)
        raw.obs["truth"] = raw.obs["group"].astype(str)
        key = None
    else:
        raw = blocks_sections(n_spots=n_spots, n_sections=n_sections, seed=seed, expression_mean=expression_mean)
        raw.obs["truth"] = raw.obs["domain"]
        key = "section" if n_sections > 1 else None
    settings = {**step_defaults("preprocess"), "min_counts": 1, "min_genes": 1, "min_cells": 0}
    if layout == "cells" and name != "demo":
        raw.obsm["spatial"] = raw.obsm["spatial"] + np.random.default_rng(seed).uniform(-0.45, 0.45, (raw.n_obs, 2))
        settings["spatial_graph"] = {**settings["spatial_graph"], "method": "delaunay"}
    adata, _ = preprocess(raw, {"source": "synthetic", "spatial": True, "section_key": key}, settings, name)
    adata.obsm["X_pca"] = expression_pca(adata, 50, seed)
    return adata, key


def nearest_k(candidates: dict, k_true: int):
    """The labels (of {resolution: labels}) whose number of clusters is nearest k_true (smaller resolution on ties)."""
    return min(candidates.values(), key=lambda lab: abs(pd.Series(lab).nunique() - k_true))


def ours(adata, key, k, seed, method="niche", **settings):
    s = {**step_defaults("analyze")["domains"], "method": method, **settings}
    return spatial_domains(adata.obsm["X_pca"], spatial_connectivities(adata, "bench"), s, seed, "bench")[0]


def squidpy_flavour(flavor, resolution=None):
    """squidpy's calculate_niche flavour; Leiden flavours at `resolution`, or (None) at the oracle resolution."""
    def run(adata, key, k, seed):
        import squidpy as sq

        a = adata.copy()
        extra = {}
        if flavor == "cellcharter":
            sq.gr.calculate_niche(a, flavor="cellcharter", library_key=key, distance=3, n_components=k,
                                  use_rep="X_pca", random_state=seed)
            return a.obs["cellcharter_niche"].astype(str).to_numpy()
        if flavor == "neighborhood":
            a.obs["expr"] = leiden(a.obsm["X_pca"], 15, 1.0, seed, "C")
            extra = {"groups": "expr", "n_neighbors": 15}
        elif flavor == "utag":
            extra = {"n_neighbors": 15}
        else:  # spatialleiden needs the expression kNN graph: scanpy's, at any size (tissuelens.neighbors)
            neighbors(a, use_rep="X_pca", seed=seed)
            extra = {"random_state": seed}
        sq.gr.calculate_niche(a, flavor=flavor, library_key=key, resolutions=list(RESOLUTIONS), **extra)
        prefix = {"neighborhood": "nhood_niche", "utag": "utag_niche", "spatialleiden": "spatialleiden"}[flavor]
        cols = {r: [c for c in a.obs.columns if c.startswith(prefix) and c.endswith(f"res={r}")][0] for r in RESOLUTIONS}
        found = {r: a.obs[c].astype(str).to_numpy() for r, c in cols.items()}
        return found[resolution] if resolution is not None else nearest_k(found, k)
    return run


def banksy(adata, key, k, seed):
    """BANKSY at its domain setting (lambda 0.8, k_geom 15, max_m 1, 20 PCs), Leiden on the sections' joint
    BANKSY matrix."""
    import anndata as ad
    import scanpy as sc
    from banksy.embed_banksy import generate_banksy_matrix
    from banksy.initialize_banksy import initialize_banksy

    parts = []
    groups = [np.arange(adata.n_obs)] if key is None else [np.flatnonzero(adata.obs[key] == s) for s in adata.obs[key].unique()]
    for rows in groups:
        a = adata[rows].copy()
        a.obs["x"], a.obs["y"] = a.obsm["spatial"][:, 0], a.obsm["spatial"][:, 1]
        d = initialize_banksy(a, ("x", "y", "spatial"), num_neighbours=15, max_m=1, plt_edge_hist=False,
                              plt_nbr_weights=False, plt_theta=False)
        d, _ = generate_banksy_matrix(a, d, [0.8], max_m=1, verbose=False)
        m = d["scaled_gaussian"][0.8]["adata"]
        parts.append(pd.DataFrame(np.asarray(m.X.todense() if hasattr(m.X, "todense") else m.X), index=a.obs_names))
    joint = ad.AnnData(pd.concat(parts).loc[adata.obs_names].to_numpy(dtype=np.float32))
    sc.pp.pca(joint, n_comps=20, random_state=seed)
    neighbors(joint, use_rep="X_pca", seed=seed)
    found = {}
    for r in RESOLUTIONS:
        sc.tl.leiden(joint, resolution=r, random_state=seed, flavor="igraph", n_iterations=2, directed=False, key_added="l")
        found[r] = joint.obs["l"].astype(str).to_numpy()
    return nearest_k(found, k)


def cellcharter(adata, key, k, seed):
    """CellCharter's own pipeline: aggregate_neighbors (3 layers, mean) of the PCs, ClusterAutoK over 2-10."""
    import cellcharter as cc

    a = adata.copy()
    cc.gr.aggregate_neighbors(a, n_layers=3, aggregations="mean", use_rep="X_pca", sample_key=key,
                              out_key="X_cellcharter")
    auto = cc.tl.ClusterAutoK(n_clusters=(2, 10), max_runs=5, model_params={"random_state": seed})
    auto.fit(a, use_rep="X_cellcharter")
    return np.asarray(auto.predict(a, use_rep="X_cellcharter")).astype(str)


METHODS = {
    "ours (niche)": ours,
    "ours (niche, refine: false)": lambda a, key, k, seed: ours(a, key, k, seed, refine=False),
    "ours (aggregate_leiden, old)": lambda a, key, k, seed: ours(a, key, k, seed, "aggregate_leiden"),
    "squidpy cellcharter (true K)": squidpy_flavour("cellcharter"),
    "squidpy utag (oracle res.)": squidpy_flavour("utag"),
    "squidpy neighborhood (oracle res.)": squidpy_flavour("neighborhood"),
    "squidpy spatialleiden (oracle res.)": squidpy_flavour("spatialleiden"),
    "squidpy spatialleiden (res. 0.5, its default)": squidpy_flavour("spatialleiden", 0.5),
    "BANKSY λ=0.8 (oracle res.)": banksy,
    "CellCharter AutoK": cellcharter,
}


def main(argv=None):
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[2500, 10000])
    parser.add_argument("--sections", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-demo", action="store_true")
    parser.add_argument("--only", nargs="+", help="methods whose name starts with one of these words")
    parser.add_argument("--layout", choices=["grid", "cells"], default="grid",
                        help="blocks: the square grid, or cells moved off it and joined by Delaunay")
    parser.add_argument("--expression-mean", type=float, default=20.0, help="blocks: strength of the domains' programmes")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    cases = [("blocks", n, s) for n in args.sizes for s in args.sections] + ([] if args.no_demo else [("demo", 900, 1)])
    methods = {m: f for m, f in METHODS.items() if not args.only or any(m.lower().startswith(o.lower()) for o in args.only)}
    rows = []
    for name, n, s in cases:
        adata, key = dataset(name, n, s, args.seed, args.layout, args.expression_mean)
        truth = adata.obs["truth"].astype(str).to_numpy()
        k = len(set(truth))
        for method, run in methods.items():
            start = time.perf_counter()
            try:
                labels = np.asarray(run(adata, key, k, args.seed)).astype(str)
            except Exception as exc:  # a comparator's failure is a row, not the end of the bench
                rows.append({"data": f"{name} {adata.n_obs} spots, {s} section(s)", "method": method,
                             "error": f"{type(exc).__name__}: {str(exc)[:80]}"})
                print(rows[-1], flush=True)
                continue
            rows.append({"data": f"{name} {adata.n_obs} spots, {s} section(s)", "method": method,
                         "ARI": round(adjusted_rand_score(truth, labels), 3),
                         "NMI": round(normalized_mutual_info_score(truth, labels), 3),
                         "K found": len(set(labels)), "K true": k, "seconds": round(time.perf_counter() - start, 1)})
            print(rows[-1], flush=True)
    table = pd.DataFrame(rows)
    try:
        print(table.to_markdown(index=False))
    except ImportError:  # to_markdown needs tabulate
        print(table.to_string(index=False))


if __name__ == "__main__":
    main()
