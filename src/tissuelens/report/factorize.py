"""Section: PNMF-GP spatial factorisation: variant comparison, best model's factors, ELBO, genes, groups."""

from __future__ import annotations

import numpy as np

from tissuelens.errors import InputError
from tissuelens.report import readers
from tissuelens.report.context import Context, stage_unavailable
from tissuelens.report.html import Section, esc, h3, note, table
from tissuelens.report.plots import plt, spatial_panel, subsample

TITLE = "Spatial factorisation"
SID = "factorize"

# comparison columns: label -> alternatives, each a tuple of substrings a flattened metric key must hold
COLUMNS = {
    "held-out deviance": [("val", "deviance", "mean"), ("val", "deviance")],
    "train deviance": [("train", "deviance", "mean"), ("train", "deviance")],
    "held-out NSF deviance": [("val_nsf_deviance",)],
    "reconstruction error": [("reconstruction",)],
    "Moran's I (mean)": [("moran", "mean"), ("moran",)],
    "fit time (s)": [("fit", "time"), ("fit", "second"), ("train", "second"), ("seconds",), ("time",)],
    "iterations": [("iteration",), ("n_iter",)],
    "factor recovery r": [("recovery",), ("true", "pearson"), ("pearson",)],
}


def pick(flat: dict, alternatives) -> tuple[str | None, object]:
    for needles in alternatives:
        for key, value in flat.items():
            k = key.lower()
            if all(n in k for n in needles) and isinstance(value, (int, float)) and not isinstance(value, bool):
                return key, value
    return None, None


def _comparison(metrics: dict[str, dict]) -> tuple[list[dict], str | None]:
    rows = []
    for variant, m in metrics.items():
        flat = readers.scalars(m)
        row = {"variant": variant}
        for label, alts in COLUMNS.items():
            row[label] = pick(flat, alts)[1]
        rows.append(row)
    used = ["variant"] + [c for c in COLUMNS if any(r[c] is not None for r in rows)]
    rows = [{c: r[c] for c in used} for r in rows]
    best = None
    for crit in ("held-out deviance", "reconstruction error", "train deviance"):
        vals = [(r[crit], r["variant"]) for r in rows if r.get(crit) is not None]
        if vals:
            best = min(vals)[1]
            break
    return rows, best


def _read_elbo(path):
    frame = readers.read_csv(path)
    if len(frame) == 0 or frame.select_dtypes("number").shape[1] == 0:
        raise InputError(f"{path}: corrupt CSV (no numeric ELBO rows)")
    return frame


def _elbo_figure(ctx: Context, elbos: dict) -> str:
    if not elbos:
        return note("No ELBO history (elbo.csv) was written.", "missing")
    pl = plt()
    fig, ax = pl.subplots(figsize=(6.0, 3.2))
    for variant, frame in elbos.items():
        num = frame.select_dtypes("number")
        if num.shape[1] == 0 or len(num) == 0:
            continue
        xcol = next((c for c in num.columns if str(c).lower() in ("iteration", "iter", "step", "epoch")), None)
        ycol = next((c for c in num.columns if "elbo" in str(c).lower()), num.columns[-1])
        x = num[xcol].to_numpy() if xcol is not None else np.arange(len(num))
        ax.plot(x, num[ycol].to_numpy(), lw=1.2, label=variant)
    ax.set_xlabel("iteration")
    ax.set_ylabel("ELBO")
    ax.set_title("ELBO during training", fontsize=9)
    ax.legend(frameon=False, fontsize=8)
    fig.tight_layout()
    return ctx.figures.embed(fig, SID, "elbo", "ELBO curves of every variant")


def _factor_maps(ctx: Context, variant: str, factors: np.ndarray) -> str:
    coords = ctx.coords
    if coords is None:
        return note("Not a spatial dataset: factors are not drawn on tissue coordinates.", "missing")
    if factors.shape[0] != len(coords):
        return note(f"The factors of {variant} cover {factors.shape[0]} cells but the dataset has {len(coords)}; "
                    "not drawn.", "warn")
    pl = plt()
    n = factors.shape[1]
    ncol = min(n, 5)
    nrow = int(np.ceil(n / ncol))
    idx = subsample(len(coords), int(ctx.settings.get("max_points", 50000)))
    fig, axes = pl.subplots(nrow, ncol, figsize=(2.7 * ncol, 2.5 * nrow), squeeze=False)
    for k, ax in enumerate(axes.ravel()):
        if k >= n:
            ax.axis("off")
            continue
        spatial_panel(ax, coords[idx], factors[idx, k], categorical=False, title=f"factor {k + 1}", cmap="magma")
    fig.tight_layout()
    return ctx.figures.embed(fig, SID, f"factors_{variant}", f"Factors of the best model ({variant}) on tissue coordinates")


def _gene_names(ctx: Context, n_genes: int, variant: str):
    names = np.asarray(ctx.adata.var_names.astype(str))
    if n_genes == len(names):
        return names
    if "highly_variable" in ctx.adata.var:
        hv = names[np.asarray(ctx.adata.var["highly_variable"], dtype=bool)]
        if n_genes == len(hv):
            return hv
    return None


def _top_genes(ctx: Context, variant: str, files: dict) -> str:
    top_n = int(ctx.settings.get("top_genes", 10))
    if "loadings.npy" not in files:
        return note("No loadings.npy for the best model: top genes unavailable.", "missing")
    w = readers.read_npy(files["loadings.npy"], ndim=2)
    n_fac = None
    if "factors.npy" in files:
        n_fac = ctx.shared.get("factors", {}).get(variant, np.empty((0, 0))).shape[1] or None
    if n_fac is not None and w.shape[0] == n_fac and w.shape[1] != n_fac:
        w = w.T  # stored factors x genes
    genes = _gene_names(ctx, w.shape[0], variant)
    if genes is None:
        return note(f"{files['loadings.npy']}: {w.shape[0]} gene rows match neither all genes nor the highly "
                    "variable ones; top genes not listed.", "warn")
    wn = w / np.maximum(w.sum(axis=1, keepdims=True), 1e-12)  # each gene's loadings as shares
    rows = []
    for k in range(w.shape[1]):
        order = np.argsort(-w[:, k], kind="stable")[:top_n]
        spec = np.argsort(-wn[:, k], kind="stable")[:top_n]
        rows.append({"factor": k + 1, "top genes (loading)": ", ".join(genes[order]),
                     "most specific genes": ", ".join(genes[spec])})
    return h3(f"Top genes per factor ({variant})") + table(rows)


def _group_heatmap(ctx: Context, variant: str, factors: np.ndarray) -> str:
    groups = ctx.groups
    if groups is None:
        return note("No cell groups: the group enrichment heatmap needs a group_key.", "missing")
    if factors.shape[0] != len(groups):
        return note("Factors and cells do not line up; group enrichment not drawn.", "warn")
    cats = list(groups.cat.categories)
    codes = groups.cat.codes.to_numpy()
    means = np.stack([factors[codes == g].mean(axis=0) if (codes == g).any() else np.zeros(factors.shape[1])
                      for g in range(len(cats))])
    overall = factors.mean(axis=0)
    lfc = np.log2((means + 1e-9) / (overall + 1e-9))
    ctx.shared.setdefault("factor_group_lfc", {})[variant] = (cats, lfc)
    pl = plt()
    fig, ax = pl.subplots(figsize=(1.0 + 0.55 * factors.shape[1], 0.9 + 0.35 * len(cats)))
    lim = float(np.max(np.abs(lfc))) or 1.0
    im = ax.imshow(lfc, cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto")
    ax.set_xticks(range(factors.shape[1]), [str(k + 1) for k in range(factors.shape[1])], fontsize=8)
    ax.set_yticks(range(len(cats)), cats, fontsize=8)
    ax.set_xlabel("factor")
    ax.set_title("log2 enrichment of mean factor activity per group", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
    fig.tight_layout()
    return ctx.figures.embed(fig, SID, f"group_enrichment_{variant}", f"Group enrichment of the factors ({variant})")


def _enrichment_json(files: dict) -> str:
    if "gene_enrichment.json" not in files:
        return ""
    data = readers.read_json(files["gene_enrichment.json"])
    rows = []
    for factor, per_group in data.items():
        if not isinstance(per_group, dict):
            continue
        for group, entry in per_group.items():
            if isinstance(entry, dict):
                rows.append({"factor": factor, "group": group, "mean log2FC": entry.get("mean_lfc"),
                             "top enriched genes": ", ".join(map(str, entry.get("top_enriched", [])[:8]))})
    if not rows:
        return ""
    return (f"<details><summary>Gene enrichment per factor and group (gene_enrichment.json, {len(rows)} rows)"
            f"</summary>{table(rows)}</details>")


def section(ctx: Context) -> Section:
    skipped = stage_unavailable(ctx, "factorize", SID, TITLE)
    if skipped:
        return skipped
    entry = ctx.plan["factorize"]
    units = entry["units"]
    metrics = {v: readers.read_json(f["metrics.json"]) for v, f in units.items() if "metrics.json" in f}
    parts = []
    rows, best = _comparison(metrics)
    if rows:
        hi = next((i for i, r in enumerate(rows) if r["variant"] == best), None)
        parts.append(h3("Model comparison") + table(rows, highlight=hi)
                     + f"<p>Best model: <b>{esc(best)}</b> (lowest held-out deviance when available).</p>")
    else:
        parts.append(note("No variant wrote metrics.json: no comparison table.", "missing"))
    if "comparison.csv" in entry["files"]:
        frame = readers.read_csv(entry["files"]["comparison.csv"])
        parts.append(f"<details><summary>comparison.csv ({len(frame)} rows)</summary>{table(frame=frame)}</details>")
    best = best or next(iter(units))
    ctx.shared["best_variant"] = best
    ctx.shared["factorize_metrics"] = metrics
    elbos = {v: _read_elbo(f["elbo.csv"]) for v, f in units.items() if "elbo.csv" in f}
    parts.append(h3("Training") + _elbo_figure(ctx, elbos))
    files = units.get(best, {})
    if "factors.npy" in files:
        factors = readers.read_npy(files["factors.npy"], ndim=2)
        ctx.shared.setdefault("factors", {})[best] = factors
        parts.append(h3(f"Factors of the best model ({best})") + _factor_maps(ctx, best, factors))
        parts.append(h3("Group enrichment") + _group_heatmap(ctx, best, factors))
    else:
        parts.append(note(f"No factors.npy for {best}: factor maps unavailable.", "missing"))
    parts.append(_top_genes(ctx, best, files))
    parts.append(_enrichment_json(files))
    return Section(SID, TITLE, "".join(parts))
