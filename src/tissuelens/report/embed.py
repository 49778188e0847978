"""Section: foundation-model embeddings: UMAP by group and leiden cluster, metrics, Loki agreement, in-silico perturbation."""

from __future__ import annotations

import numpy as np

from tissuelens.errors import InputError
from tissuelens.io import read_h5ad
from tissuelens.report import readers
from tissuelens.report.context import Context, stage_unavailable
from tissuelens.report.html import Section, esc, h3, note, para, table

TITLE = "Embeddings"
SID = "embed"
SKIP_KEYS = {"X_umap", "X_pca", "X_tsne", "spatial"}


def representations(adata, model: str) -> list[str]:
    """obsm keys of `model`'s embedding: X_{model} first, then X_{model}_* (e.g. Loki's text and image)."""
    keys = [k for k in adata.obsm if k == f"X_{model}" or k.startswith(f"X_{model}_")]
    if not keys:
        keys = [k for k in adata.obsm if k.startswith("X_") and k not in SKIP_KEYS]
    return sorted(keys, key=lambda k: (k != f"X_{model}", k))


def umap_and_leiden(x: np.ndarray, settings: dict, seed: int):
    import anndata as ad
    import scanpy as sc

    from tissuelens.neighbors import neighbors

    holder = ad.AnnData(np.zeros((x.shape[0], 0), dtype=np.float32))
    holder.obsm["X_rep"] = np.asarray(x, dtype=np.float32)
    neighbors(holder, use_rep="X_rep", n_neighbors=int(settings.get("umap_neighbors", 15)), seed=seed)
    sc.tl.umap(holder, random_state=seed)
    sc.tl.leiden(holder, resolution=float(settings.get("leiden_resolution", 1.0)), flavor="igraph",
                 n_iterations=2, directed=False, random_state=seed)
    return holder.obsm["X_umap"], holder.obs["leiden"]


def _umap_figure(ctx: Context, model: str, key: str, adata) -> tuple[str, dict]:
    import scanpy as sc

    from tissuelens.report.plots import plt

    x = np.asarray(adata.obsm[key])
    if x.ndim != 2 or not np.all(np.isfinite(x)):
        raise InputError(f"{ctx.plan['embed']['units'][model]['embeddings.h5ad']}: obsm['{key}'] is not a finite 2-d array")
    umap, leiden = umap_and_leiden(x, ctx.settings, int(ctx.run_config.get("seed", 0)))
    holder = sc.AnnData(np.zeros((x.shape[0], 0), dtype=np.float32), obs={"leiden": leiden.to_numpy()})
    holder.obs_names = adata.obs_names
    holder.obsm["X_umap"] = umap
    colors = ["leiden"]
    extra = {}
    groups = ctx.groups
    if groups is not None:
        aligned = groups.reindex(adata.obs_names.astype(str))
        if aligned.notna().all():
            holder.obs["group"] = aligned.to_numpy()
            holder.obs["group"] = holder.obs["group"].astype("category")
            colors = ["group", "leiden"]
            from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

            extra = {"leiden clusters": int(leiden.nunique()),
                     "ARI leiden vs group": adjusted_rand_score(aligned.astype(str), leiden.astype(str)),
                     "NMI leiden vs group": normalized_mutual_info_score(aligned.astype(str), leiden.astype(str))}
    if not extra:
        extra = {"leiden clusters": int(leiden.nunique())}
    pl = plt()
    fig = sc.pl.umap(holder, color=colors, show=False, return_fig=True, frameon=False, size=max(4.0, 12000 / len(x)),
                     title=[f"{key} · {c}" for c in colors])
    fig.set_size_inches(4.6 * len(colors), 3.8)
    html = ctx.figures.embed(fig, SID, f"umap_{model}_{key}", f"UMAP of {key} ({model}) coloured by " + " and ".join(colors))
    pl.close("all")
    return html, extra


def _agreement(flat: dict) -> dict:
    return {k: v for k, v in flat.items() if "agree" in k.lower() or ("text" in k.lower() and "image" in k.lower())}


PERTURB_COLUMNS = ["perturbed", "perturbation", "n_cells", "cos_sim_mean", "shift_mean", "pvalue", "fdr",
                   "control_cos_sim_mean", "control_shift_mean", "control_fdr"]


def _perturbation(ctx: Context, model: str, files: dict) -> str:
    """In-silico perturbation: top gene sets, a volcano-style plot, the most affected genes."""
    import pandas as pd

    from tissuelens.report.plots import plt

    t = readers.read_csv(files["perturbation.tsv"], sep="\t")
    if not len(t):
        return note(f"{model}: the perturbation table is empty.", "missing")
    goal = t["shift_mean"].notna().any()
    effect = t["shift_mean"] if goal else 1 - t["cos_sim_mean"]
    vs_control = "fdr" not in t or t["fdr"].isna().all()  # aggregate_gene_shifts has no test of its own
    q = t["control_fdr"] if vs_control else t["fdr"]
    stats = str(t["stats"].iloc[0])
    out = h3(f"In-silico perturbation ({model}, {t['emb_mode'].iloc[0]}, stats {stats})")
    out += para("Effect = shift toward the goal state (cos(perturbed, goal) - cos(original, goal))" if goal else
                "Effect = 1 - cosine similarity of the cell before and after the perturbation")
    pl = plt()
    fig, ax = pl.subplots(figsize=(5.2, 3.8))
    y = -np.log10(np.clip(q.astype(float).fillna(1.0), 1e-300, 1))
    for kind, rows in t.groupby("perturbation"):
        ax.scatter(effect[rows.index], y[rows.index], s=18, label=kind)
    for i in np.argsort(-np.abs(effect.to_numpy()))[:8]:
        ax.annotate(str(t["perturbed"].iloc[i]), (effect.iloc[i], y.iloc[i]), fontsize=7)
    ax.axhline(-np.log10(0.05), color="grey", lw=0.8, ls="--")
    ax.set_xlabel("shift toward goal" if goal else "1 - cosine similarity")
    ax.set_ylabel("-log10 FDR" + (" (vs random-gene control)" if vs_control else ""))
    ax.legend(fontsize=7, frameon=False)
    out += ctx.figures.embed(fig, SID, f"perturbation_{model}", f"Perturbation effects of {model}: effect against -log10 FDR")
    top = t.assign(_e=effect.abs()).sort_values("_e", ascending=False).head(15)
    out += table(frame=top[[c for c in PERTURB_COLUMNS if c in top]])
    if "perturbation_genes.parquet" in files:
        g = readers.read_parquet(files["perturbation_genes.parquet"])
        if len(g):
            top_g = pd.concat([x.head(5) for _, x in g.groupby(["perturbed", "perturbation"], sort=False)])
            out += (f"<details open><summary>Most affected genes ({esc(model)}: cosine of each gene's embedding "
                    "before vs after, lowest first)</summary>"
                    + table(frame=top_g[["perturbed", "perturbation", "affected_symbol", "cos_sim_mean", "cos_sim_std", "n_detections"]])
                    + "</details>")
    return out


def section(ctx: Context) -> Section:
    skipped = stage_unavailable(ctx, "embed", SID, TITLE)
    if skipped:
        return skipped
    units = ctx.plan["embed"]["units"]
    parts, summary = [], []
    loki_rows = []
    for model, files in units.items():
        parts.append(h3(f"Model: {model}"))
        meta = readers.read_json(files["activations/meta.json"]) if "activations/meta.json" in files else {}
        if meta.get("untrained"):
            parts.append(note(f"{model} ran with untrained (random test) weights: its embedding carries no biological "
                              "meaning; the figures only show that the pipeline works.", "warn"))
        metrics = readers.read_json(files["embedding_metrics.json"]) if "embedding_metrics.json" in files else None
        flat = readers.scalars(metrics) if metrics else {}
        row = {"model": model}
        if "embeddings.h5ad" in files:
            adata = read_h5ad(files["embeddings.h5ad"])
            keys = representations(adata, model)
            if not keys:
                raise InputError(f"{files['embeddings.h5ad']}: no obsm['X_{model}'] embedding")
            for key in keys:
                fig_html, extra = _umap_figure(ctx, model, key, adata)
                parts.append(fig_html)
                if key == keys[0]:
                    row.update({"dims": adata.obsm[key].shape[1], "cells": adata.n_obs, **extra})
        else:
            parts.append(note(f"No embeddings.h5ad for {model}.", "missing"))
        if flat:
            parts.append(f"<details open><summary>Embedding metrics ({esc(model)})</summary>"
                         + table([{"metric": k, "value": v} for k, v in flat.items()]) + "</details>")
        else:
            parts.append(note(f"No embedding_metrics.json for {model}.", "missing"))
        if "perturbation.tsv" in files:
            parts.append(_perturbation(ctx, model, files))
        agreement = _agreement(flat)
        if agreement:
            loki_rows += [{"model": model, "metric": k, "value": v} for k, v in agreement.items()]
        summary.append(row)
    head = h3("Summary") + table(summary)
    if loki_rows:
        head += h3("Text-image agreement (Loki)") + table(loki_rows)
    ctx.shared["embed_summary"] = summary
    ctx.shared["embed_agreement"] = loki_rows
    return Section(SID, TITLE, head + "".join(parts))
