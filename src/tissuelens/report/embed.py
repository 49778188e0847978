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
LOKI_IMAGE_KEYS = ("X_loki_image",)


def representations(adata, model: str) -> list[str]:
    """obsm keys of `model`'s embedding: X_{model} first, then X_{model}_* (e.g. Loki's text and image)."""
    keys = [k for k in adata.obsm if k == f"X_{model}" or k.startswith(f"X_{model}_")]
    if not keys:
        keys = [k for k in adata.obsm if k.startswith("X_") and k not in SKIP_KEYS]
    keys += [k for k in LOKI_IMAGE_KEYS if k in adata.obsm and k not in keys]  # Loki: X_{model} is the text half
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


def loki_image(ctx: Context, model: str, m: dict, files: dict) -> tuple[str, dict]:
    """The image half of a Loki model (its rule's metrics.json): patches, text-image cosine, retrieval."""
    from tissuelens.report.plots import plt

    image = m.get("image")
    if not image:
        return note(f"{model}: no H&E image, so no image embeddings (text only).", "missing"), {}
    rows = {"patch px": image.get("patch_px"), "spot px": image.get("spot_px"), "padded edge spots": image.get("padded_spots")}
    cos, ret = m.get("text_image_cosine") or {}, m.get("retrieval") or {}
    rows.update({f"text-image cosine {k}": v for k, v in cos.items()})
    rows.update({"own sentence ranked first among spatial neighbours": ret.get("accuracy"),
                 "(chance)": ret.get("chance")})
    out = h3(f"Image embeddings ({model})") + table([{"metric": k, "value": v} for k, v in rows.items()])
    if "embeddings.h5ad" in files:
        adata = read_h5ad(files["embeddings.h5ad"], backed=True)
        if "loki_text_image_cosine" in adata.obs:
            pl = plt()
            fig, ax = pl.subplots(figsize=(4.6, 3.2))
            ax.hist(adata.obs["loki_text_image_cosine"].to_numpy(dtype=float), bins=40, color="#4c72b0")
            ax.set_xlabel("cosine(text, image) per spot")
            ax.set_ylabel("spots")
            out += ctx.figures.embed(fig, SID, f"loki_cosine_{model}", f"Text-image cosine of every spot ({model})")
            pl.close("all")
    return out, {f"text-image cosine {k}": v for k, v in cos.items()} | (
        {"retrieval accuracy (own sentence vs neighbours)": ret.get("accuracy"), "retrieval chance": ret.get("chance")} if ret else {})


def _spatial_scatter(ax, x, y, values, categorical: bool, title: str):
    import pandas as pd

    if categorical:
        cats = pd.Categorical(values)
        for code, name in enumerate(cats.categories):
            sel = cats.codes == code
            ax.scatter(x[sel], y[sel], s=6, label=str(name))
        ax.legend(fontsize=6, frameon=False, markerscale=2, loc="best")
    else:
        sc = ax.scatter(x, y, c=values, s=6, cmap="viridis")
        ax.figure.colorbar(sc, ax=ax, shrink=0.7)
    ax.set_title(title, fontsize=9)
    ax.set_aspect("equal")
    ax.invert_yaxis()
    ax.set_xticks([])
    ax.set_yticks([])


def loki_tasks(ctx: Context, model: str, files: dict) -> str:
    """Loki's tasks on this model's embeddings: annotation maps, retrieval accuracy, PredEx genes and maps,
    Tangram proportions."""
    from tissuelens.report.plots import plt

    out = ""
    if "annotation.parquet" in files:
        summary = readers.read_json(files["annotation.json"]) if "annotation.json" in files else {}
        t = readers.read_parquet(files["annotation.parquet"])
        out += h3(f"Zero-shot annotation from marker sentences ({model})")
        out += para("Each cell type's sentence (its marker genes) through the text encoder; every spot's image "
                    "(and text) embedding gets the type of highest cosine; entropy of the softmax over types "
                    "(0 certain, 1 uniform).")
        sources = [s for s in ("image", "text") if f"{s}_cell_type" in t]
        pl = plt()
        if sources:
            fig, axes = pl.subplots(1, 2 * len(sources), figsize=(4.2 * 2 * len(sources), 3.8), squeeze=False)
            for i, src in enumerate(sources):
                _spatial_scatter(axes[0, 2 * i], t["x"].to_numpy(), t["y"].to_numpy(), t[f"{src}_cell_type"].astype(str).to_numpy(), True,
                                 f"{src}: best type")
                _spatial_scatter(axes[0, 2 * i + 1], t["x"].to_numpy(), t["y"].to_numpy(), t[f"{src}_entropy"].to_numpy(), False,
                                 f"{src}: entropy")
            out += ctx.figures.embed(fig, SID, f"loki_annotation_{model}", f"Loki zero-shot annotation maps ({model})")
            pl.close("all")
        bulk = [c for c in t.columns if str(c).startswith("bulk:")][:6]
        if bulk:
            out += para("Bulk RNA-seq samples: each sample's top-gene sentence against every spot's image embedding "
                        "(Loki's annotate_with_bulk: softmax over the spots, scaled to [0, 1]).")
            fig, axes = pl.subplots(1, len(bulk), figsize=(4.2 * len(bulk), 3.8), squeeze=False)
            for i, c in enumerate(bulk):
                _spatial_scatter(axes[0, i], t["x"].to_numpy(), t["y"].to_numpy(), t[c].to_numpy(), False, c)
            out += ctx.figures.embed(fig, SID, f"loki_bulk_{model}", f"Loki bulk RNA-seq similarity maps ({model})")
            pl.close("all")
        rows = [{"source": src, "cell type": k, "spots": v} for src in sources for k, v in (summary.get(src) or {}).get("counts", {}).items()]
        if rows:
            out += table(rows)
    if "retrieval.json" in files:
        r = readers.read_json(files["retrieval.json"])
        out += h3(f"Image to transcriptome retrieval ({model})")
        if r.get("skipped"):
            out += note(f"{model}: retrieval skipped ({r['skipped']}).", "missing")
        else:
            out += table([{"metric": k, "value": v} for k, v in r.items()])
    if "predex.json" in files:
        p = readers.read_json(files["predex.json"])
        out += h3(f"Expression predicted from the image: PredEx ({model})")
        if p.get("skipped"):
            out += note(f"{model}: PredEx skipped ({p['skipped']}).", "missing")
        else:
            out += para(_predex_sentence(p))
            genes = readers.read_csv(files["predex_genes.csv"])
            out += table(frame=genes.head(10))
            if "predex_spots.parquet" in files:
                spots = readers.read_parquet(files["predex_spots.parquet"])
                best = list(dict.fromkeys(spots["gene"]))[:3]
                if best:
                    pl = plt()
                    fig, axes = pl.subplots(2, len(best), figsize=(3.8 * len(best), 6.6), squeeze=False)
                    for j, g in enumerate(best):
                        s = spots[spots["gene"] == g]
                        for i, col in enumerate(("measured", "predicted")):
                            _spatial_scatter(axes[i, j], s["x"].to_numpy(), s["y"].to_numpy(), s[col].to_numpy(), False, f"{g} {col}")
                    out += ctx.figures.embed(fig, SID, f"loki_predex_{model}", f"PredEx: measured and predicted expression of the best-predicted genes ({model})")
                    pl.close("all")
    if "decompose.parquet" in files:
        d = readers.read_json(files["decompose.json"]) if "decompose.json" in files else {}
        t = readers.read_parquet(files["decompose.parquet"])
        types = [c for c in d.get("cell_types", []) if c in t]
        out += h3(f"Cell-type decomposition: Tangram ({model})")
        out += para(f"Tangram (clusters mode) maps the cells of reference dataset '{esc(str(d.get('reference')))}' "
                    f"(their OmiCLIP text embeddings, by label) onto the spots' {esc(str(d.get('spot_embedding')))} "
                    f"embeddings; {_decompose_weights(d)}")
        if types:
            pl = plt()
            n = min(len(types), 6)
            fig, axes = pl.subplots(1, n, figsize=(3.6 * n, 3.4), squeeze=False)
            for j, c in enumerate(types[:n]):
                _spatial_scatter(axes[0, j], t["x"].to_numpy(), t["y"].to_numpy(), t[c].to_numpy(), False, f"{c} proportion")
            out += ctx.figures.embed(fig, SID, f"loki_decompose_{model}", f"Tangram cell-type proportions per spot ({model})")
            pl.close("all")
            out += table([{"cell type": c, "mean proportion": v} for c, v in (d.get("mean_proportions") or {}).items()])
    elif (ctx.plan.get("loki") or {}).get("status") == "built":
        out += note(f"{model}: no Tangram decomposition (set embed.loki.decompose.reference to a labelled dataset).", "missing")
    return out


def _predex_sentence(p: dict) -> str:
    """What predex.json scored: across slides (with the within-slide score beside it) or within the slide."""
    score = f"per-gene Pearson r (mean {p['pearson_mean']}, median {p['pearson_median']} over {p['genes_scored']} genes)"
    if p.get("evaluation") == "cross_slide":
        w = p.get("within_slide") or {}
        return (f"Every spot ({p['n_test']}) predicted from the {p['n_train']} spots of reference slide(s) "
                f"{esc(', '.join(map(str, p.get('reference') or [])))}: {score}. Within this slide ({w.get('split')} split, "
                f"{w.get('n_test')} held-out spots): mean {w.get('pearson_mean')}, median {w.get('pearson_median')}.")
    how = {"within_slide_random": " (random spots held out: their neighbours train, so optimistic)",
           "within_slide_blocks": " (whole spatial blocks held out)"}.get(p.get("evaluation"), "")
    return f"{p['n_test']} held-out spots predicted from {p['n_train']} reference spots of the same slide{how}; {score}."


def _decompose_weights(d: dict) -> str:
    """How decompose.json's proportions were made, in one sentence."""
    mode = d.get("weights", "none")
    if mode == "reference":
        how = "weighted by the reference's cell count of each type (as Loki's tutorials)"
    elif mode == "fractions":
        how = "weighted by the cell-type fractions given in the config"
    else:
        how = "unweighted"
    return f"each type's map (which sums to 1 over the spots) is {how}, then each spot is divided by its sum."


PERTURB_COLUMNS = ["perturbed", "perturbation", "n_cells", "cos_sim_mean", "shift_mean", "pvalue", "fdr", "significant",
                   "background_mean", "impact_component", "impact_component_percent",
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
    if "background" in t and t["background"].notna().any():
        bg = str(t["background"].dropna().iloc[0])
        start = f" in the start state '{esc(str(t['start_group'].iloc[0]))}'" if "start_group" in t and t["start_group"].notna().any() else ""
        out += para(f"p-values: each set's shifts{start} against "
                    + ("every expressed gene perturbed on its own" if bg == "all_genes" else "random gene sets of the same size")
                    + " (Wilcoxon rank-sum), Benjamini-Hochberg FDR per perturbation type.")
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
        loki_metrics = readers.read_json(files["metrics.json"]) if "metrics.json" in files else None
        if meta.get("untrained") or (loki_metrics or {}).get("untrained"):
            parts.append(note(f"{model} ran with untrained (random test) weights: its embedding carries no biological "
                              "meaning; the figures only show that the pipeline works.", "warn"))
        metrics = readers.read_json(files["embedding_metrics.json"]) if "embedding_metrics.json" in files else None
        if metrics is None and loki_metrics is not None:  # the Loki rule's own quality block
            metrics = {k: v for k, v in (loki_metrics.get("quality") or {}).items()}
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
        if loki_metrics is not None:
            image_html, image_rows = loki_image(ctx, model, loki_metrics, files)
            parts.append(image_html)
            agreement.update(image_rows)
        loki_units = (ctx.plan.get("loki") or {}).get("units") or {}
        if model in loki_units:
            parts.append(loki_tasks(ctx, model, loki_units[model]))
        if agreement:
            loki_rows += [{"model": model, "metric": k, "value": v} for k, v in agreement.items()]
        summary.append(row)
    head = h3("Summary") + table(summary)
    if loki_rows:
        head += h3("Text-image agreement (Loki)") + table(loki_rows)
    ctx.shared["embed_summary"] = summary
    ctx.shared["embed_agreement"] = loki_rows
    return Section(SID, TITLE, head + "".join(parts))
