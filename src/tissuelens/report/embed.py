"""Section: foundation-model embeddings: UMAP by group and leiden cluster, metrics, Loki agreement."""

from __future__ import annotations

import numpy as np

from tissuelens.errors import InputError
from tissuelens.io import read_h5ad
from tissuelens.report import readers
from tissuelens.report.context import Context, stage_unavailable
from tissuelens.report.html import Section, esc, h3, note, table

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
