"""Report test inputs: a small preprocessed dataset and stage outputs in each stage's on-disk format.

The stage files follow the formats of the factorize, embed and sae stages (metrics JSON, .npy arrays,
parquet tables, embeddings.h5ad); their values are made up but shaped like the real ones.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from tissuelens.config import step_defaults
from tissuelens.report.stages import stage_plan

N_FACTORS = 3


def report_defaults() -> dict:
    return step_defaults("report")


def write_preprocessed(root: Path, n_spots: int = 160, n_genes: int = 50, seed: int = 1) -> tuple[Path, Path]:
    """results/demo/preprocessed.h5ad and qc.json under `root`, through the real preprocess step."""
    from tissuelens.datasets.synthetic import make_synthetic
    from tissuelens.preprocess import preprocess

    defaults = step_defaults("preprocess")
    raw = make_synthetic(n_spots=n_spots, n_genes=n_genes, n_spatial_factors=N_FACTORS, n_groups=3, seed=seed,
                         image_size=96)
    adata, qc = preprocess(raw, {"source": "synthetic", "spatial": True, "group_key": "group"}, defaults, "demo")
    qc["settings"] = defaults
    qc["group_source"] = "group_key"  # as workflow/scripts/preprocess.py records it
    out = root / "results" / "demo"
    out.mkdir(parents=True, exist_ok=True)
    adata.write_h5ad(out / "preprocessed.h5ad")
    (out / "qc.json").write_text(json.dumps(qc))
    return out / "qc.json", out / "preprocessed.h5ad"


def stage_config(**report) -> dict:
    return {
        "datasets": {"demo": {"source": "synthetic", "spatial": True, "group_key": "group"}},
        "factorize": {"variants": ["pnmf", "svgp"]},
        "models": {"geneformer": {"kind": "geneformer"}, "loki": {"kind": "loki"}},
        "embed": {"models": ["geneformer", "loki"], "loki": {"annotate": {"markers": "markers.csv"}, "decompose": {"reference": "demo"}}},
        "sae": {"models": ["geneformer"]},
        "report": report,
    }


def write_stage_files(root: Path, adata) -> dict:
    """Every stage's files for dataset `demo` under root/results; returns the plan (paths relative to root)."""
    import anndata as ad
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(0)
    n, g = adata.n_obs, adata.n_vars
    base = root / "results" / "demo"
    truth = np.asarray(adata.obsm.get("true_factors", rng.gamma(2.0, 1.0, (n, N_FACTORS))))[:, :N_FACTORS]
    for i, variant in enumerate(("pnmf", "svgp")):
        d = base / "factorize" / variant
        d.mkdir(parents=True, exist_ok=True)
        (d / "metrics.json").write_text(json.dumps({
            "val_deviance": {"mean": 0.9 - 0.1 * i, "total": 1234.5}, "train_deviance": {"mean": 0.8 - 0.1 * i},
            "reconstruction_error": 0.5 - 0.05 * i, "moran_i": [0.8, 0.6, 0.3], "fit_seconds": 3.0 + i, "iterations": 200}))
        np.save(d / "factors.npy", truth + rng.gamma(1.0, 0.1, truth.shape))
        np.save(d / "loadings.npy", rng.gamma(1.0, 1.0, (g, N_FACTORS)))
        pd.DataFrame({"iteration": np.arange(50), "elbo": -1000 + 10 * np.log1p(np.arange(50)) * (1 + i)}).to_csv(
            d / "elbo.csv", index=False)
        (d / "gene_enrichment.json").write_text(json.dumps({
            f"factor_{k}": {c: {"mean_lfc": 0.1 * k, "std_lfc": 0.2, "top_enriched": list(adata.var_names[:3]),
                                "top_depleted": list(adata.var_names[-3:])}
                            for c in adata.obs["group"].cat.categories} for k in range(N_FACTORS)}))
    for model, keys in (("geneformer", ["X_geneformer"]), ("loki", ["X_loki_text", "X_loki_image"])):
        d = base / "embed" / model
        (d / "activations").mkdir(parents=True, exist_ok=True)
        emb = ad.AnnData(obs=pd.DataFrame(index=adata.obs_names.copy()))
        for key in keys:
            emb.obsm[key] = (truth @ rng.normal(size=(N_FACTORS, 8)) + rng.normal(scale=0.1, size=(n, 8))).astype(np.float32)
        emb.write_h5ad(d / "embeddings.h5ad")
        metrics = {"silhouette_group": 0.21, "knn_group_accuracy": 0.74, "n_cells": n}
        if model == "loki":  # the Loki rule's own metrics.json (workflow/scripts/embed_loki.py's layout)
            emb.obs["group"] = adata.obs["group"].to_numpy()
            emb.obsm["spatial"] = np.asarray(adata.obsm["spatial"])
            emb.obs["loki_text_image_cosine"] = rng.uniform(-0.2, 0.6, n).astype(np.float32)
            emb.write_h5ad(d / "embeddings.h5ad")
            (d / "metrics.json").write_text(json.dumps({
                "model": "loki", "untrained": True, "n_spots": n, "quality": {"X_loki_text": {"labels": metrics}},
                "image": {"library": "demo", "image_key": "hires", "patch_px": 20, "patch_um": None, "spot_px": 14.2,
                          "padded_spots": 3, "model_input_px": 32},
                "text_image_cosine": {"mean": 0.52, "median": 0.5, "min": -0.2, "max": 0.6},
                "retrieval": {"accuracy": 0.31, "neighbours": 6, "chance": 1 / 7}}))
            write_loki_tasks(base / "loki" / model, emb, adata)
        else:
            (d / "embedding_metrics.json").write_text(json.dumps(metrics))
        (d / "activations" / "meta.json").write_text(json.dumps({
            "model": model, "kind": model, "layers": [1], "d_model": 8, "n_tokens": 10 * n, "n_cells": n,
            "untrained": True, "checkpoint": f"resources/models/{model}"}))
    d = base / "sae" / "geneformer"
    d.mkdir(parents=True, exist_ok=True)
    (d / "metrics.json").write_text(json.dumps({
        "n_eval_tokens": 2000, "l0": 16.0, "fraction_variance_explained": 0.81, "mse": 0.01, "cosine": 0.93,
        "dead_features": 4, "dead_fraction": 0.0625, "dense_features": 1, "untrained_model": True, "architecture": "topk"}))
    n_feat = 64
    groups = list(adata.obs["group"].cat.categories)
    pd.DataFrame({
        "feature": np.arange(n_feat), "frequency": rng.uniform(0, 0.6, n_feat), "dead": np.arange(n_feat) < 4,
        "dense": np.arange(n_feat) == 63, "top_genes": [",".join(adata.var_names[k % g: k % g + 3]) for k in range(n_feat)],
        "top_group": [groups[k % len(groups)] for k in range(n_feat)], "top_group_auroc": rng.uniform(0.5, 1, n_feat),
        "moran_i": rng.uniform(-0.1, 0.9, n_feat), "best_factor": np.arange(n_feat) % N_FACTORS,
        "best_factor_r": rng.uniform(-0.9, 0.9, n_feat),
    }).to_parquet(d / "features.parquet")
    pd.DataFrame({"feature": np.repeat(np.arange(n_feat), 3), "gene": np.tile(adata.var_names[:3], n_feat),
                  "symbol": np.tile(adata.var_names[:3], n_feat), "mean_activation": rng.uniform(0, 1, 3 * n_feat),
                  "rank_mean": np.tile([1.0, 2.0, 3.0], n_feat)}).to_parquet(d / "feature_genes.parquet")
    pd.DataFrame({"feature": np.repeat(np.arange(n_feat), len(groups)), "group": np.tile(groups, n_feat),
                  "log2fc": rng.normal(size=n_feat * len(groups)), "auroc": rng.uniform(0.3, 1, n_feat * len(groups))}
                 ).to_parquet(d / "feature_groups.parquet")
    pd.DataFrame({"feature": np.repeat(np.arange(n_feat), N_FACTORS), "factor": np.tile(np.arange(N_FACTORS), n_feat),
                  "pearson_r": rng.uniform(-0.8, 0.8, n_feat * N_FACTORS)}).to_parquet(d / "feature_factors.parquet")
    fig, ax = plt.subplots(figsize=(3, 2))
    ax.plot([1, 2, 3], [3, 2, 1])
    fig.savefig(d / "loss_curve.png")
    plt.close(fig)
    (d / "dashboard.html").write_text("<html><body>dashboard</body></html>")
    write_analyze_files(root, adata, base / "factorize" / "svgp" / "factors.npy")
    plan = stage_plan(stage_config(), "demo", lambda p: (root / p).exists())
    for entry in plan.values():  # absolute paths: the tests run from anywhere
        entry["files"] = {k: str(root / v) for k, v in entry["files"].items()}
        entry["units"] = {u: {k: str(root / v) for k, v in f.items()} for u, f in entry["units"].items()}
    return plan


def write_loki_tasks(d: Path, emb, adata) -> None:
    """The Loki task rules' files, computed by their own code (tissuelens.embed.loki.run) on the fixture's
    embeddings; the annotation from made-up type embeddings (the rule needs the model's text encoder)."""
    from tissuelens.embed.loki import tasks as lt
    from tissuelens.embed.loki.run import run_predex, run_retrieve
    from tissuelens.io import write_json

    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(5)
    types = ["type_a", "type_b", "type_c"]
    best, sim, entropy, _ = lt.annotate(emb.obsm["X_loki_image"], rng.normal(size=(3, emb.obsm["X_loki_image"].shape[1])), 14.3)
    xy = np.asarray(adata.obsm["spatial"])
    table = pd.DataFrame({"obs_name": emb.obs_names.astype(str), "x": xy[:, 0], "y": xy[:, 1],
                          "image_cell_type": pd.Categorical(np.asarray(types)[best], categories=types),
                          "image_similarity": sim, "image_entropy": entropy})
    table.to_parquet(d / "annotation.parquet")
    write_json({"cell_types": types, "image": {"counts": table["image_cell_type"].value_counts(sort=False).to_dict()}},
               d / "annotation.json")
    retrieval, summary = run_retrieve(emb, {"k": 5, "enabled": "auto"}, "fixture")
    retrieval.to_parquet(d / "retrieval.parquet")
    write_json(summary, d / "retrieval.json")
    genes, spots, summary = run_predex(emb, adata, {"test_fraction": 0.2, "genes": "all", "top_k": 10, "temperature": 0.1,
                                                    "report_genes": 3}, 0, "fixture")
    from tissuelens.embed.loki.decompose import proportions

    props = proportions(rng.gamma(1.0, 1.0, (len(table), 3)))
    dec = table[["obs_name", "x", "y"]].copy()
    for j, t in enumerate(types):
        dec[t] = props[:, j]
    dec["dominant"] = np.asarray(types)[props.argmax(axis=1)]
    dec.to_parquet(d / "decompose.parquet")
    write_json({"reference": "demo", "spot_embedding": "image", "cell_types": types,
                "mean_proportions": dict(zip(types, props.mean(axis=0).tolist()))}, d / "decompose.json")
    genes.to_csv(d / "predex_genes.csv", index=False)
    spots.to_parquet(d / "predex_spots.parquet")
    write_json(summary, d / "predex.json")


def write_analyze_files(root: Path, adata, factors_path: Path) -> None:
    """The analyze stage's files for dataset `demo`, computed by the real library (domains, decoupler
    annotation with markers picked from each group's most raised genes, squidpy statistics, agreement)."""
    from tissuelens.analyze.agreement import agreement_table, factor_argmax
    from tissuelens.analyze.domains import compute_domains
    from tissuelens.analyze.run import analyze
    from tissuelens.config import step_defaults
    from tissuelens.io import write_json

    base = root / "results" / "demo" / "analyze"
    base.mkdir(parents=True, exist_ok=True)
    x = np.asarray(adata.X.todense() if hasattr(adata.X, "todense") else adata.X)
    groups = adata.obs["group"].astype(str).to_numpy()
    rows = []
    for g in sorted(set(groups)):
        lift = x[groups == g].mean(axis=0) - x[groups != g].mean(axis=0)
        rows += [(adata.var_names[i], f"type_{g}") for i in np.argsort(-lift, kind="stable")[:4]]
    markers = root / "markers.csv"
    pd.DataFrame(rows, columns=["gene", "cell_type"]).to_csv(markers, index=False)
    settings = step_defaults("analyze")
    settings["domains"].update(n_neighbors=10)
    # alpha 1: every positive best type is called; these few weak markers per group are rarely significant per
    # cell, and the report and prompt tests read the called types
    settings["markers"].update(path=str(markers), min_markers=3, alpha=1.0)
    settings["spatial_stats"].update(n_perms=50, moran_top=20)
    domains, record = compute_domains(adata.copy(), settings["domains"], True, 0, "demo")
    domains.to_parquet(base / "domains.parquet")
    write_json(record, base / "domains.json")
    res = analyze(adata.copy(), domains, settings, True, 0, "demo")
    res["annotation"].to_parquet(base / "annotation.parquet")
    res["doublets"].to_parquet(base / "doublets.parquet")
    for name, file in (("majority", "domain_types.csv"), ("net", "markers_used.csv"), ("nhood", "nhood_enrichment.csv"),
                       ("svg", "spatially_variable_genes.csv")):
        res[name].to_csv(base / file, index=False)
    write_json(res["summary"], base / "summary.json")
    parts = {c: domains[c] for c in ("expr_leiden", "spatial_domain")}
    parts["labels"] = pd.Series(groups, index=adata.obs_names)
    parts["factors_svgp"] = factor_argmax(np.load(factors_path), adata.obs_names)
    agreement_table(parts).to_csv(base / "agreement.csv", index=False)
