"""Section: the dataset, its QC filters, cells per group and the tissue image with spots."""

from __future__ import annotations

import numpy as np

from tissuelens.report.context import Context
from tissuelens.report.html import Section, esc, h3, kv_table, note, table
from tissuelens.report.medgemma import side_by_side
from tissuelens.report.plots import group_palette, plt, section_images, spatial_panel, subsample, tissue_image

TITLE = "Dataset and QC"

FILTER_LABELS = {
    "nan_coordinates": "missing coordinates",
    "nan_expression": "missing expression",
    "missing_group": "missing group label",
    "min_counts": "too few counts (min_counts)",
    "min_genes": "too few genes (min_genes)",
    "max_pct_mt": "too many mitochondrial reads (max_pct_mt)",
    "doublets": "Scrublet doublets (remove_doublets)",
    "small_groups": "group too small",
    "min_cells": "seen in too few cells (min_cells)",
    "mt_genes": "mitochondrial genes dropped",
}


def _source(ctx: Context) -> dict:
    entry = ctx.run_config.get("entry", {})
    out = {"dataset": ctx.dataset, "source": entry.get("source", "?")}
    for key in ("name", "path", "url", "sha256", "group_key", "subsample"):
        if key in entry:
            out[key] = entry[key]
    out["spatial"] = bool(entry.get("spatial", "spatial" in ctx.adata.obsm))
    origin = ctx.adata.uns.get("tissuelens", {}).get("origin") if hasattr(ctx.adata, "uns") else None
    if origin:
        out["origin"] = origin
    return out


def _filter_steps(qc: dict, start_key: str, removed_key: str, end_key: str, where: str):
    start = qc.get(start_key)
    removed = qc.get(removed_key) or {}
    if not isinstance(removed, dict):
        removed = {}
    steps, left = [], start
    for name, n in removed.items():
        n = int(n)
        left = None if left is None else left - n
        steps.append({"filter": FILTER_LABELS.get(name, name), "removed": n, "remaining": left})
    return start, steps, qc.get(end_key)


def _qc_tables(ctx: Context) -> str:
    qc = ctx.qc
    parts = []
    for unit, keys in (("cells/spots", ("n_cells_raw", "cells_removed", "n_cells")),
                       ("genes", ("n_genes_raw", "genes_removed", "n_genes"))):
        start, steps, end = _filter_steps(qc, *keys, where=unit)
        rows = [{"filter": "before filtering", "removed": None, "remaining": start}, *steps,
                {"filter": "after filtering", "removed": None if start is None or end is None else start - end,
                 "remaining": end}]
        parts.append(h3(f"{unit[0].upper()}{unit[1:]} before and after each filter") + table(rows))
    extra = {"highly variable genes": qc.get("n_highly_variable")}
    if qc.get("groups_removed"):
        extra["groups removed (too small)"] = ", ".join(map(str, qc["groups_removed"]))
    parts.append(kv_table({k: v for k, v in extra.items() if v is not None}))
    return "".join(parts)


def _qc_figure(ctx: Context) -> str:
    pl = plt()
    obs = ctx.adata.obs
    cols = [c for c in ("total_counts", "n_genes_by_counts", "pct_counts_mt") if c in obs]
    start, steps, _ = _filter_steps(ctx.qc, "n_cells_raw", "cells_removed", "n_cells", "cells")
    n_panels = len(cols) + (1 if start is not None else 0)
    if n_panels == 0:
        return note("No per-cell QC metrics in the preprocessed data.", "missing")
    fig, axes = pl.subplots(1, n_panels, figsize=(3.2 * n_panels, 2.8))
    axes = np.atleast_1d(axes)
    i = 0
    if start is not None:
        labels = ["raw"] + [s["filter"].split(" (")[0] for s in steps]
        values = [start] + [s["remaining"] for s in steps]
        axes[0].bar(range(len(values)), values, color="#4c72b0")
        axes[0].set_xticks(range(len(values)), labels, rotation=60, ha="right", fontsize=7)
        axes[0].set_ylabel("cells/spots remaining")
        axes[0].set_title("cells after each filter", fontsize=9)
        i = 1
    for col in cols:
        axes[i].hist(np.asarray(obs[col], dtype=float), bins=40, color="#55a868")
        axes[i].set_title(col.replace("_", " "), fontsize=9)
        axes[i].set_ylabel("cells/spots")
        i += 1
    fig.tight_layout()
    return ctx.figures.embed(fig, "dataset", "qc", "QC: cells kept by each filter and per-cell QC distributions")


def _groups(ctx: Context) -> str:
    counts = ctx.qc.get("groups")
    if not counts:
        groups = ctx.groups
        if groups is None:
            return note("No cell groups: the dataset sets no group_key.", "missing")
        counts = groups.value_counts(sort=False).to_dict()
    total = sum(counts.values()) or 1
    rows = [{"group": g, "cells/spots": int(n), "share": f"{100 * n / total:.1f}%"} for g, n in counts.items()]
    pl = plt()
    names = list(counts)
    palette = group_palette(names)
    fig, ax = pl.subplots(figsize=(max(3.0, 0.45 * len(names) + 1.5), 2.8))
    ax.bar(range(len(names)), list(counts.values()), color=[palette[n] for n in names])
    ax.set_xticks(range(len(names)), names, rotation=45 if len(names) > 4 else 0, ha="right", fontsize=8)
    ax.set_ylabel("cells/spots")
    ax.set_title("cells per group", fontsize=9)
    fig.tight_layout()
    return h3("Cells per group") + table(rows) + ctx.figures.embed(fig, "dataset", "groups", "Cells/spots per group")


def _tissue(ctx: Context) -> str:
    coords = ctx.coords
    if coords is None:
        return h3("Tissue") + note("Not a spatial dataset: no coordinates, so no tissue plot.", "missing")
    pl = plt()
    idx = subsample(len(coords), int(ctx.settings.get("max_points", 50000)))
    groups = ctx.groups
    sections = ctx.sections
    img = tissue_image(ctx.adata) if sections is None else None
    # several sections: the map tiles them side by side with no underlay, and their own images (when each has
    # one) are shown beside it in the same order
    own = section_images(ctx.adata, sections) if sections is not None else None
    shown = img[0] if img is not None else side_by_side(own) if own else None
    panels = 2 if shown is not None else 1
    fig, axes = pl.subplots(1, panels, figsize=(4.6 * panels + 1.2, 4.4))
    axes = np.atleast_1d(axes)
    if shown is not None:
        axes[0].imshow(shown, origin="upper")
        axes[0].set_xticks([])
        axes[0].set_yticks([])
        axes[0].set_title("tissue image" if img is not None else "tissue images, sections left to right", fontsize=9)
    scale, image = (img[1], img[0]) if img is not None else (1.0, None)
    values = groups.iloc[idx] if groups is not None else np.asarray(ctx.adata.obs.get("total_counts", np.zeros(len(coords))))[idx]
    title = "spots by group" if groups is not None else "spots by total counts"
    spatial_panel(axes[-1], coords[idx], values, categorical=groups is not None, image=image, scale=scale,
                  title=title + (" on the tissue image" if image is not None else ""))
    fig.tight_layout()
    caption = ("The tissue image and the spots coloured by group" if img is not None else
               "Each section's tissue image and the spots on tissue coordinates" if own else "Spots on tissue coordinates")
    text = "" if shown is not None else note("The dataset has coordinates but no tissue image.", "info")
    if sections is not None:
        text = note(f"{len(sections.categories)} tissue sections ({', '.join(map(str, sections.categories))}), drawn "
                    "side by side from left to right in every map of this report; no spatial statistic links two "
                    "sections.", "info")
    return h3("Tissue") + text + ctx.figures.embed(fig, "dataset", "tissue", caption)


def section(ctx: Context) -> Section:
    src = _source(ctx)
    n_cells, n_genes = ctx.adata.n_obs, ctx.adata.n_vars
    intro = (f"<p><b>{esc(n_cells):s}</b> cells/spots and <b>{esc(n_genes)}</b> genes after quality control "
             f"(source: {esc(src.get('origin', src['source']))}).</p>")
    body = intro + kv_table(src) + _qc_tables(ctx) + _qc_figure(ctx) + _groups(ctx) + _tissue(ctx)
    return Section("dataset", TITLE, body)
