"""Section: domains and annotation: where the cell groups came from, how the number of spatial domains was
chosen, spatial maps of the domains and the marker-based cell types, the annotation's uncertainty, a marker dot
plot, neighbourhood enrichment, spatially variable genes, cross-stage agreement and (single-cell data) doublets."""

from __future__ import annotations

import numpy as np
import pandas as pd

from tissuelens.analyze.agreement import matrix
from tissuelens.errors import InputError
from tissuelens.report import readers
from tissuelens.report.context import Context, stage_unavailable
from tissuelens.report.html import Section, esc, h3, kv_table, note, table
from tissuelens.report.plots import plt, spatial_panel, subsample

TITLE = "Domains and annotation"
SID = "analyze"
DOMAIN_TITLES = {"spatial_domain": "spatial domains", "expr_leiden": "expression clusters (Leiden)"}
MAX_DOT_TYPES = 12  # cell types in the marker dot plot (the most frequent)
MARKERS_PER_TYPE = 3  # markers drawn per cell type (most specific to the type's cells)
TOP_SVG = 10


def group_source_text(qc: dict, summary: dict, run_config: dict) -> str:
    """One sentence: where obs["group"] came from (labels, spatial domains, expression Leiden, or nowhere)."""
    source = qc.get("group_source", summary.get("group_source"))
    key = (run_config.get("entry") or {}).get("group_key")
    if source == "group_key" or (source is None and key):
        return "Cell groups are the dataset's own labels (group_key" + (f" '{key}')." if key else ").")
    if source in DOMAIN_TITLES:
        return (f"Cell groups are the {DOMAIN_TITLES[source]} below (analyze.group_source: {source}): the dataset "
                "has no labels (group_key), so every group-based result in this report uses these domains.")
    return "The dataset has no cell groups: it sets no group_key and analyze.group_source is none."


def _read(files: dict, name: str, reader):
    return reader(files[name]) if name in files else None


def _aligned(frame, obs_names, path: str):
    """`frame` (indexed by cell) in the order of the preprocessed cells; InputError when it covers none."""
    if frame is None:
        return None
    if "obs_names" in frame.columns:
        frame = frame.set_index("obs_names")
    out = frame.reindex(pd.Index(obs_names.astype(str)))
    if len(frame) and out.isna().all(axis=None):
        raise InputError(f"{path}: no cell matches the preprocessed data")
    return out


def domain_choice(files: dict) -> str:
    """How the number of spatial domains was chosen (domains.json), as one paragraph; "" without the file
    (runs from before it existed) or for non-spatial data (the maps already say so)."""
    from tissuelens.analyze.domains import choice_text

    record = _read(files, "domains.json", readers.read_json)
    if record is None or not record.get("spatial"):
        return ""
    if not isinstance(record.get("n_domains"), int):
        raise InputError(f"{files['domains.json']}: not a domains record (no integer n_domains)")
    return f"<p>{esc(choice_text(record))}</p>"


def main_domains(domains: pd.DataFrame) -> str:
    """The column the analyze stage annotates per domain: spatial domains, or expression Leiden without them."""
    has_spatial = "spatial_domain" in domains and domains["spatial_domain"].notna().any()
    return "spatial_domain" if has_spatial else "expr_leiden"


def _domain_tables(domains: pd.DataFrame, majority) -> str:
    parts = []
    for col, what in DOMAIN_TITLES.items():
        values = domains[col].dropna().astype(str) if col in domains else pd.Series(dtype=str)
        if values.empty:
            continue
        counts = values.value_counts().sort_index(key=lambda s: s.str.extract(r"(\d+)$")[0].astype(float))
        rows = pd.DataFrame({"domain": counts.index, "cells/spots": counts.to_numpy(),
                             "share": [f"{100 * v / counts.sum():.1f}%" for v in counts]})
        if majority is not None and len(majority) and col == main_domains(domains):
            m = majority.assign(domain=majority["domain"].astype(str)).set_index("domain")
            rows["majority cell type"] = rows["domain"].map(m["majority_type"])
            rows["its share"] = rows["domain"].map(m["majority_share"])
        parts.append(h3(f"{what[0].upper()}{what[1:]}: {len(counts)}") + table(frame=rows, digits=3))
    return "".join(parts)


def _maps(ctx: Context, domains: pd.DataFrame, annotation) -> str:
    coords = ctx.coords
    if coords is None:
        return note("Not a spatial dataset: domains and cell types are not drawn on tissue coordinates.", "missing")
    idx = subsample(len(coords), int(ctx.settings.get("max_points", 50000)))
    out = []
    cols = [c for c in DOMAIN_TITLES if c in domains and domains[c].notna().any()]
    if cols:
        pl = plt()
        fig, axes = pl.subplots(1, len(cols), figsize=(4.4 * len(cols) + 1.0, 3.8), squeeze=False)
        for ax, col in zip(axes[0], cols):
            values = domains[col].astype(str).astype("category")
            spatial_panel(ax, coords[idx], values.iloc[idx], categorical=True, title=DOMAIN_TITLES[col])
        fig.tight_layout()
        out.append(ctx.figures.embed(fig, SID, "domains", "Spatial domains and expression clusters on tissue coordinates"))
    if annotation is not None and annotation["cell_type"].notna().any():
        pl = plt()
        fig, axes = pl.subplots(1, 2, figsize=(10.0, 3.8))
        types = annotation["cell_type"].astype(str).astype("category")
        spatial_panel(axes[0], coords[idx], types.iloc[idx], categorical=True, title="cell type (marker score)")
        spatial_panel(axes[1], coords[idx], annotation["confidence"].to_numpy(dtype=float)[idx], categorical=False,
                      title=CONFIDENCE_TITLE, cmap="viridis")
        fig.tight_layout()
        out.append(ctx.figures.embed(fig, SID, "cell_types", "Marker-based cell types and the confidence of each "
                                     "call (1 - its adjusted p-value) on tissue coordinates"))
    return "".join(out)


CONFIDENCE_TITLE = "confidence (1 - adjusted p of the call)"


def _confidence_histogram(ctx: Context, annotation) -> str:
    pl = plt()
    fig, ax = pl.subplots(figsize=(4.0, 2.6))
    ax.hist(annotation["confidence"].dropna().to_numpy(dtype=float), bins=30, range=(0, 1), color="#4c72b0")
    ax.set_xlabel(CONFIDENCE_TITLE)
    ax.set_ylabel("cells")
    fig.tight_layout()
    return ctx.figures.embed(fig, SID, "confidence", "Annotation confidence per cell")


def marker_choice(x, cell_types: pd.Series, net: pd.DataFrame, var_names, per_type: int, max_types: int) -> dict:
    """{cell type: its markers in the data}, most frequent types first, each type's `per_type` markers with the
    largest mean log-expression difference between its cells and the rest."""
    called = cell_types.dropna().astype(str)
    types = [t for t in called.value_counts().index[:max_types] if t in set(net["source"])]
    position = {str(g): i for i, g in enumerate(var_names)}
    labels = cell_types.astype(str).to_numpy()
    chosen = {}
    for t in types:
        genes = [g for g in dict.fromkeys(net.loc[net["source"] == t, "target"].astype(str)) if g in position]
        if not genes:
            continue
        cols = [position[g] for g in genes]
        sub = x[:, cols]
        inside = labels == t
        mean_in = np.asarray(sub[inside].mean(axis=0)).ravel()
        mean_out = np.asarray(sub[~inside].mean(axis=0)).ravel() if (~inside).any() else np.zeros(len(cols))
        order = np.argsort(-(mean_in - mean_out), kind="stable")[:per_type]
        chosen[t] = [genes[i] for i in order]
    return chosen


def _dotplot(ctx: Context, annotation, net) -> str:
    import scanpy as sc

    if net is None or net.empty:
        return ""
    types = annotation["cell_type"]
    chosen = marker_choice(ctx.adata.X, types, net, ctx.adata.var_names, MARKERS_PER_TYPE, MAX_DOT_TYPES)
    if not chosen:
        return note("No called cell type has a marker gene in the data: no dot plot.", "missing")
    keep = types.astype(str).isin(list(chosen)).to_numpy()
    holder = sc.AnnData(ctx.adata.X[keep], var=pd.DataFrame(index=ctx.adata.var_names.copy()))
    holder.obs["cell type"] = pd.Categorical(types.astype(str).to_numpy()[keep], categories=list(chosen))
    plt()  # headless backend before scanpy draws
    dp = sc.pl.dotplot(holder, chosen, groupby="cell type", show=False, return_fig=True)
    dp.make_figure()
    return ctx.figures.embed(dp.fig, SID, "marker_dotplot", "Marker genes per called cell type: dot size = share "
                             "of the type's cells expressing the gene, colour = mean log-normalised expression")


def _annotation(ctx: Context, files: dict, annotation, summary: dict) -> str:
    if annotation is None or annotation["cell_type"].isna().all():
        return note("No marker-based annotation: no marker file is configured (analyze.markers.path).", "missing")
    net = _read(files, "markers_used.csv", readers.read_csv)
    types = annotation["cell_type"].astype(str)
    called = annotation[annotation["cell_type"].notna()]
    per_type = (called.assign(cell_type=called["cell_type"].astype(str)).groupby("cell_type")
                .agg(cells=("score", "size"), mean_score=("score", "mean"), mean_confidence=("confidence", "mean"),
                     median_margin=("margin", "median"))
                .sort_values("cells", ascending=False).reset_index())
    per_type.insert(2, "share", [f"{100 * n / len(called):.1f}%" for n in per_type["cells"]])
    ann = summary.get("annotation", {})
    facts = {"cell types called": int(types[annotation["cell_type"].notna()].nunique()),
             "mean confidence (0-1)": ann.get("mean_confidence", float(annotation["confidence"].mean())),
             "mean majority share per domain": ann.get("mean_majority_share")}
    parts = [h3("Marker-based annotation"),
             "<p>Each cell/spot is scored per cell type with decoupler on the log-normalised data and takes the "
             "type with the highest score, or <i>unassigned</i> when that type is not significant; the confidence "
             "is 1 minus the call's adjusted p-value and the margin how many orders of magnitude smaller that "
             "p-value is than the runner-up type's.</p>",
             kv_table({k: v for k, v in facts.items() if v is not None}), table(frame=per_type, digits=3)]
    if ctx.coords is None:
        parts.append(_confidence_histogram(ctx, annotation))
    parts.append(_dotplot(ctx, annotation, net))
    return "".join(parts)


def _heatmap(ax, mat: pd.DataFrame, title: str, cmap: str, symmetric: bool, vmin=None, vmax=None):
    arr = mat.to_numpy(dtype=float)
    if symmetric:
        lim = float(np.nanmax(np.abs(arr))) if np.isfinite(arr).any() else 1.0
        vmin, vmax = -(lim or 1.0), lim or 1.0
    im = ax.imshow(arr, cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
    ax.set_xticks(range(mat.shape[1]), [str(c) for c in mat.columns], rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(mat.shape[0]), [str(i) for i in mat.index], fontsize=7)
    ax.set_title(title, fontsize=9)
    ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
    if arr.size <= 100:
        for (i, j), v in np.ndenumerate(arr):
            if np.isfinite(v):
                ax.text(j, i, f"{v:.2f}" if abs(v) < 10 else f"{v:.0f}", ha="center", va="center", fontsize=6)


def _nhood(ctx: Context, files: dict) -> str:
    if ctx.coords is None:
        return ""
    nhood = _read(files, "nhood_enrichment.csv", readers.read_csv)
    if nhood is None or nhood.empty:
        return h3("Neighbourhood enrichment") + note("No neighbourhood enrichment was computed "
                                                      "(analyze.spatial_stats.enabled, or a single domain).", "missing")
    if not {"key", "a", "b", "zscore"} <= set(nhood.columns):
        raise InputError(f"{files['nhood_enrichment.csv']}: expected columns key, a, b, zscore")
    keys = list(dict.fromkeys(nhood["key"].astype(str)))
    pl = plt()
    fig, axes = pl.subplots(1, len(keys), figsize=(4.6 * len(keys), 3.9), squeeze=False)
    for ax, key in zip(axes[0], keys):
        sub = nhood[nhood["key"].astype(str) == key]
        order = list(dict.fromkeys(sub["a"].astype(str)))
        mat = sub.pivot_table(index="a", columns="b", values="zscore").reindex(index=order, columns=order)
        _heatmap(ax, mat, f"{DOMAIN_TITLES.get(key, key.replace('_', ' '))}: z-score", "RdBu_r", True)
    fig.tight_layout()
    return (h3("Neighbourhood enrichment") + "<p>squidpy's permutation z-score of neighbouring pairs on the spatial "
            "kNN graph: positive = the two categories touch more often than by chance.</p>"
            + ctx.figures.embed(fig, SID, "nhood_enrichment", "Neighbourhood enrichment between domains and "
                                "between cell types (z-scores)"))


def _svg(files: dict, summary: dict) -> str:
    svg = _read(files, "spatially_variable_genes.csv", readers.read_csv)
    if svg is None or svg.empty:
        return ""
    moran = summary.get("moran", {})
    tested = moran.get("n_genes_tested", "the")
    text = (f"<p>{esc(moran.get('n_significant_fdr_0.05', '?'))} of {esc(tested)} genes are significant at FDR 0.05"
            + (" (in the section with the most)" if "per_section" in moran else "")
            + "; the highest Moran's I" + (" per section" if "per_section" in moran else "") + ":</p>") if moran else ""
    n_sections = svg["section"].nunique() if "section" in svg else 1
    top = svg.groupby("section", sort=False).head(max(3, TOP_SVG // n_sections)) if n_sections > 1 else svg.head(TOP_SVG)
    return h3("Spatially variable genes (Moran's I)") + text + table(frame=top, digits=3)


def _agreement(ctx: Context, files: dict) -> str:
    if "agreement.csv" not in files:
        return ""
    agreement = readers.read_csv(files["agreement.csv"])
    if not {"a", "b", "ari", "nmi"} <= set(agreement.columns):
        raise InputError(f"{files['agreement.csv']}: expected columns a, b, ari, nmi")
    head = h3("Cross-stage agreement")
    if agreement.empty:
        return head + note("Fewer than two partitions of the cells: no agreement to show.", "missing")
    pl = plt()
    ari, nmi = matrix(agreement, "ari"), matrix(agreement, "nmi")
    side = 1.6 + 0.45 * len(ari)
    fig, axes = pl.subplots(1, 2, figsize=(2 * side + 1.5, side))
    _heatmap(axes[0], ari, "adjusted Rand index", "viridis", False, vmin=min(0.0, float(np.nanmin(ari))), vmax=1.0)
    _heatmap(axes[1], nmi, "normalised mutual information", "viridis", False, vmin=0.0, vmax=1.0)
    fig.tight_layout()
    return (head + "<p>Agreement between every pair of cell partitions: expression Leiden, spatial domains, the "
            "labels, the dominant factor of the best PNMF-GP variant and Leiden on each embedding (1 = identical).</p>"
            + ctx.figures.embed(fig, SID, "agreement", "Cross-stage agreement: ARI and NMI between partitions")
            + f"<details><summary>agreement.csv ({len(agreement)} pairs)</summary>{table(frame=agreement, digits=3)}"
            "</details>")


def _doublets(ctx: Context, files: dict, summary: dict) -> str:
    """Single-cell data only: Scrublet's doublet rate, and whether preprocess removed the called doublets."""
    if ctx.coords is not None:
        return ""
    head = h3("Doublets (Scrublet)")
    dbl = _read(files, "doublets.parquet", readers.read_parquet)
    removed = ctx.qc.get("doublets")  # written by preprocess when preprocess.remove_doublets is on
    if removed:
        text = (f"<p>Scrublet called <b>{removed['n_called']:,}</b> of {removed['n_cells']:,} cells doublets (doublet "
                f"rate <b>{100 * removed['rate']:.2f}%</b>); preprocess removed them before every other step "
                "(preprocess.remove_doublets: true). The histogram shows the scores of the cells kept.</p>")
        threshold = removed.get("threshold")
    elif "skipped" in (summary.get("doublets") or {}):
        return head + note(f"Doublets were not scored: {summary['doublets']['skipped']}", "warn")
    elif dbl is None or dbl.empty:
        return head + note("No doublet scores were written.", "missing")
    else:
        n, called = len(dbl), int(dbl["predicted_doublet"].astype(bool).sum())
        text = (f"<p>Scrublet called <b>{called:,}</b> of {n:,} cells doublets (doublet rate <b>{100 * called / n:.2f}%"
                "</b>); they are kept (preprocess.remove_doublets: false).</p>")
        threshold = (summary.get("doublets") or {}).get("threshold")
    per_section = (removed or summary.get("doublets") or {}).get("thresholds")
    if per_section:
        text += (f"<p>Scrublet ran on each of the {len(per_section)} sections (samples) alone, so no simulated doublet "
                 "pairs cells of two sections; each has its own threshold: "
                 + ", ".join(f"{k} {'none' if v is None else f'{v:.3f}'}" for k, v in per_section.items()) + ".</p>")
    return head + text + _doublet_histogram(ctx, dbl, threshold)


def _doublet_histogram(ctx: Context, dbl, threshold) -> str:
    scores = np.asarray([] if dbl is None else dbl["doublet_score"], dtype=float)
    scores = scores[np.isfinite(scores)]
    if not len(scores):
        return ""
    pl = plt()
    fig, ax = pl.subplots(figsize=(4.2, 2.6))
    ax.hist(scores, bins=40, color="#8172b2")
    if threshold is not None:
        ax.axvline(float(threshold), color="k", lw=1, ls="--", label="Scrublet threshold")
        ax.legend(frameon=False, fontsize=7)
    ax.set_xlabel("Scrublet doublet score")
    ax.set_ylabel("cells")
    fig.tight_layout()
    return ctx.figures.embed(fig, SID, "doublets", "Scrublet doublet scores per cell")


def section(ctx: Context) -> Section:
    skipped = stage_unavailable(ctx, "analyze", SID, TITLE)
    if skipped:
        return skipped
    files = ctx.plan["analyze"]["files"]
    summary = _read(files, "summary.json", readers.read_json) or {}
    obs = ctx.adata.obs_names
    domains = _aligned(_read(files, "domains.parquet", readers.read_parquet), obs, files.get("domains.parquet"))
    annotation = _aligned(_read(files, "annotation.parquet", readers.read_parquet), obs, files.get("annotation.parquet"))
    if annotation is not None and annotation.empty:
        annotation = None
    majority = _read(files, "domain_types.csv", readers.read_csv)
    parts = [f"<p>{esc(group_source_text(ctx.qc, summary, ctx.run_config))}</p>", domain_choice(files)]
    if domains is not None:
        parts.append(_domain_tables(domains, majority))
        parts.append(_maps(ctx, domains, annotation))
    parts.append(_annotation(ctx, files, annotation, summary))
    parts.append(_nhood(ctx, files))
    parts.append(_svg(files, summary))
    parts.append(_agreement(ctx, files))
    parts.append(_doublets(ctx, files, summary))
    return Section(SID, TITLE, "".join(parts))
