"""Section: sparse-autoencoder features: metrics, most interpretable features, factor links, dashboard."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from tissuelens.errors import InputError
from tissuelens.report import readers
from tissuelens.report.context import Context, stage_unavailable
from tissuelens.report.html import Section, esc, h3, kv_table, note, table
from tissuelens.report.plots import plt, spatial_panel, subsample

TITLE = "SAE features"
SID = "sae"
METRIC_KEYS = ("l0", "fraction_variance_explained", "mse", "cosine", "dead_features", "dead_fraction",
               "dense_features", "n_eval_tokens", "d_sae", "d_in", "training_seconds", "train_seconds")


def interpretability(features):
    """Mean over the available evidence: group specificity 2·AUROC−1, Moran's I (≥0), best factor |r|."""
    parts = []
    if "top_group_auroc" in features:
        parts.append((2 * features["top_group_auroc"].astype(float) - 1).clip(lower=0))
    if "moran_i" in features:
        parts.append(features["moran_i"].astype(float).clip(lower=0))
    if "best_factor_r" in features:
        parts.append(features["best_factor_r"].astype(float).abs())
    if not parts:
        return features["frequency"].astype(float) if "frequency" in features else None
    stacked = np.vstack([p.to_numpy() for p in parts])
    with np.errstate(invalid="ignore"):
        return np.nanmean(np.where(np.isfinite(stacked), stacked, np.nan), axis=0)


def _top_features(ctx: Context, model: str, files: dict):
    features = readers.read_parquet(files["features.parquet"])
    if "feature" not in features:
        raise InputError(f"{files['features.parquet']}: no 'feature' column")
    live = features
    for flag in ("dead", "dense"):
        if flag in live:
            live = live[~live[flag].astype(bool)]
    score = interpretability(live)
    if score is None or len(live) == 0:
        return features, live.iloc[:0], "No live features."
    live = live.assign(interpretability=score).sort_values("interpretability", ascending=False, kind="stable")
    n = int(ctx.settings.get("top_features", 8))
    return features, live.head(n), ""


def _feature_table(top) -> str:
    cols = [c for c in ("feature", "interpretability", "frequency", "top_genes", "top_group", "top_group_auroc",
                        "moran_i", "best_factor", "best_factor_r") if c in top]
    frame = top[cols].copy()
    if "best_factor" in frame:
        frame["best_factor"] = [int(f) + 1 if int(f) >= 0 else None for f in frame["best_factor"]]
    if "top_genes" in frame:
        frame["top_genes"] = frame["top_genes"].astype(str).str.replace(",", ", ")
    return table(frame=frame, digits=3)


def _group_heatmap(ctx: Context, model: str, files: dict, top) -> str:
    if "feature_groups.parquet" not in files or len(top) == 0:
        return ""
    groups = readers.read_parquet(files["feature_groups.parquet"])
    value = next((c for c in ("log2fc", "mean_activation", "mean") if c in groups), None)
    if value is None or not {"feature", "group"} <= set(groups.columns):
        return note(f"{files['feature_groups.parquet']}: no feature/group/log2fc columns; heatmap skipped.", "warn")
    sub = groups[groups["feature"].isin(top["feature"])]
    if sub.empty:
        return ""
    mat = sub.pivot_table(index="feature", columns="group", values=value, observed=False).reindex(top["feature"])
    pl = plt()
    fig, ax = pl.subplots(figsize=(1.6 + 0.5 * mat.shape[1], 0.9 + 0.32 * mat.shape[0]))
    arr = mat.to_numpy(dtype=float)
    lim = float(np.nanmax(np.abs(arr))) if np.isfinite(arr).any() else 1.0
    im = ax.imshow(arr, cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto")
    ax.set_yticks(range(mat.shape[0]), [f"feature {f}" for f in mat.index], fontsize=7)
    ax.set_xticks(range(mat.shape[1]), [str(c) for c in mat.columns], rotation=45, ha="right", fontsize=7)
    ax.set_title(f"{value} per group, top features ({model})", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
    fig.tight_layout()
    return ctx.figures.embed(fig, SID, f"feature_groups_{model}", f"Group specificity of the top SAE features ({model})")


def _spatial_maps(ctx: Context, model: str, files: dict, top) -> str:
    if "cell_activations.npz" not in files:
        return note("Spatial maps need per-cell feature activations (cell_activations.npz), which the SAE stage "
                    "does not export; see the dashboard for top cells per feature.", "missing")
    from tissuelens.sae import cell_activations

    acts, exported = cell_activations.load(files["cell_activations.npz"])
    coords = ctx.coords
    if coords is None or acts.shape[0] != len(coords):
        return note("Feature activations do not line up with spot coordinates; spatial maps skipped.", "warn")
    feats = [int(f) for f in top["feature"] if int(f) < acts.shape[1]][:6]
    pl = plt()
    idx = subsample(len(coords), int(ctx.settings.get("max_points", 50000)))
    fig, axes = pl.subplots(1, len(feats), figsize=(2.8 * len(feats), 2.6), squeeze=False)
    for ax, f in zip(axes[0], feats):
        values = acts[:, f].toarray().ravel()
        values[~exported] = np.nan  # not exported by the embed stage: unknown, not zero
        spatial_panel(ax, coords[idx], values[idx], categorical=False, title=f"feature {f}")
    fig.tight_layout()
    caption = f"Top SAE features on tissue coordinates ({model})"
    if not exported.all():
        caption += f"; grey: {int((~exported).sum())} cells without exported activations (embed.activations.max_cells)"
    return ctx.figures.embed(fig, SID, f"feature_maps_{model}", caption)


def _factor_summary(ctx: Context, model: str, files: dict) -> str:
    if "feature_factors.parquet" not in files:
        return note("No feature-factor correlations (feature_factors.parquet).", "missing")
    ff = readers.read_parquet(files["feature_factors.parquet"])
    if ff.empty or not {"feature", "factor", "pearson_r"} <= set(ff.columns):
        return note("Features were not correlated with PNMF-GP factors (factorisation off or not spatial).", "missing")
    ff = ff.dropna(subset=["pearson_r"])
    rows = []
    for factor, sub in ff.groupby("factor"):
        best = sub.loc[sub["pearson_r"].abs().idxmax()]
        rows.append({"factor": int(factor) + 1, "best feature": int(best["feature"]), "pearson r": float(best["pearson_r"]),
                     "features with |r| ≥ 0.3": int((sub["pearson_r"].abs() >= 0.3).sum())})
    ctx.shared.setdefault("sae_factor_rows", {})[model] = rows
    return table(rows, digits=3)


def section(ctx: Context) -> Section:
    skipped = stage_unavailable(ctx, "sae", SID, TITLE)
    if skipped:
        return skipped
    parts = []
    summary = {}
    for model, files in ctx.plan["sae"]["units"].items():
        parts.append(h3(f"SAE on {model}"))
        if "metrics.json" in files:
            metrics = readers.read_json(files["metrics.json"])
            if metrics.get("untrained_model"):
                parts.append(note(f"The {model} activations come from untrained (random test) weights: these features "
                                  "carry no biology.", "warn"))
            flat = readers.scalars(metrics)
            shown = {k: flat[k] for k in METRIC_KEYS if k in flat} or flat
            summary[model] = shown
            parts.append(kv_table(shown))
        else:
            parts.append(note("No metrics.json.", "missing"))
        if "loss_curve.png" in files:
            data = Path(files["loss_curve.png"]).read_bytes()
            if not data.startswith(b"\x89PNG"):
                raise InputError(f"{files['loss_curve.png']}: not a PNG file")
            parts.append(ctx.figures.embed_png(data, SID, f"loss_curve_{model}", f"SAE training loss and feature density ({model})"))
        if "features.parquet" in files:
            features, top, why = _top_features(ctx, model, files)
            n_dead = int(features["dead"].sum()) if "dead" in features else None
            parts.append(h3("Most interpretable features")
                         + "<p>Ranked by the mean of group specificity (2·AUROC−1), spatial autocorrelation "
                         "(Moran's I) and the best |correlation| with a PNMF-GP factor, over live features"
                         + (f" ({len(features) - n_dead} of {len(features)} live)" if n_dead is not None else "")
                         + ".</p>" + (note(why, "missing") if why else _feature_table(top)))
            parts.append(_group_heatmap(ctx, model, files, top) + _spatial_maps(ctx, model, files, top))
            ctx.shared.setdefault("sae_top", {})[model] = top
        else:
            parts.append(note("No features.parquet: feature analysis not available.", "missing"))
        parts.append(h3("Feature-factor correlation") + _factor_summary(ctx, model, files))
        if "dashboard.html" in files:
            rel = os.path.relpath(Path(files["dashboard.html"]).resolve(), Path(ctx.report_dir).resolve())
            parts.append(f'<p>Feature dashboard: <a href="{esc(rel)}">{esc(rel)}</a> (a separate file next to this '
                         "report; it does not travel with this page).</p>")
    ctx.shared["sae_summary"] = summary
    return Section(SID, TITLE, "".join(parts))
