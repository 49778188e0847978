"""Self-contained HTML feature dashboard: one file, images as base64 PNG, a small inline sort script."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import numpy as np
import pandas as pd

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:1.5em;color:#222;max-width:1400px}
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:1.6em}h3{font-size:1em;margin:0 0 .4em}
.warn{background:#fff3cd;border:1px solid #e0c36c;padding:.5em .8em;border-radius:4px}
.metrics td{padding:.1em .8em .1em 0}
table.sortable{border-collapse:collapse;font-size:12px}
table.sortable th{cursor:pointer;background:#f0f0f0;position:sticky;top:0;text-align:left;padding:3px 6px;
 border-bottom:1px solid #bbb;white-space:nowrap}
table.sortable th.asc::after{content:" \\25B2"}table.sortable th.desc::after{content:" \\25BC"}
table.sortable td{padding:2px 6px;border-bottom:1px solid #eee;max-width:26em;overflow:hidden;text-overflow:ellipsis;
 white-space:nowrap}
.scroll{max-height:32em;overflow:auto;border:1px solid #ddd}
.panel{border:1px solid #ddd;border-radius:6px;padding:.8em;margin:.8em 0;display:flex;flex-wrap:wrap;gap:1em}
.panel .genes{min-width:16em;font-size:12px}.panel .genes td{padding:0 .6em 0 0}
.panel img{height:170px}
input#filter{margin:.4em 0;padding:.2em .4em;width:20em}
"""

_JS = """
function sortTable(th){
  const table=th.closest('table'),idx=[...th.parentNode.children].indexOf(th),body=table.tBodies[0];
  const asc=!th.classList.contains('asc');
  table.querySelectorAll('th').forEach(h=>h.classList.remove('asc','desc'));
  th.classList.add(asc?'asc':'desc');
  const key=r=>{const c=r.cells[idx],v=c.dataset.v!==undefined?c.dataset.v:c.textContent;
    const n=parseFloat(v);return isNaN(n)?v.toLowerCase():n;};
  const rows=[...body.rows].sort((a,b)=>{const x=key(a),y=key(b);
    if(typeof x!==typeof y)return typeof x==='number'?-1:1;return (x<y?-1:x>y?1:0)*(asc?1:-1);});
  rows.forEach(r=>body.appendChild(r));
}
document.querySelectorAll('table.sortable th').forEach(th=>th.addEventListener('click',()=>sortTable(th)));
const f=document.getElementById('filter');
if(f)f.addEventListener('input',()=>{const q=f.value.toLowerCase();
  document.querySelectorAll('#features tbody tr').forEach(r=>{r.style.display=r.textContent.toLowerCase().includes(q)?'':'none';});});
"""


def png_data_uri(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=72)
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def file_data_uri(path: str | Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def group_bars(groups: pd.DataFrame, feature: int) -> str:
    plt = _plt()
    sub = groups[groups["feature"] == feature]
    fig, ax = plt.subplots(figsize=(2.8, 2.3))
    ax.bar(sub["group"].astype(str), sub["mean_activation"], color="#4c72b0")
    ax.set_title("mean activation per group", fontsize=8)
    ax.tick_params(axis="x", labelrotation=60, labelsize=6)
    ax.tick_params(axis="y", labelsize=6)
    fig.subplots_adjust(left=0.18, right=0.96, bottom=0.3, top=0.88)
    return png_data_uri(fig)


def spatial_map(coords: np.ndarray, values: np.ndarray) -> str:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(2.4, 2.4))
    order = np.argsort(values)
    size = float(np.clip(20000 / max(len(values), 1), 0.5, 40))  # fill the thumbnail at any spot count
    ax.scatter(coords[order, 0], coords[order, 1], c=values[order], s=size, cmap="viridis", linewidths=0)
    ax.set_aspect("equal")
    ax.invert_yaxis()
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title("per-spot activation", fontsize=8)
    fig.subplots_adjust(left=0.04, right=0.96, bottom=0.04, top=0.88)
    return png_data_uri(fig)


def activation_histogram(values: np.ndarray) -> str:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(2.6, 2.3))
    if values.size:
        counts, edges = np.histogram(values, bins=30)
        ax.stairs(np.log10(counts + 1), edges, fill=True, color="#dd8452")  # log counts, cheaper than a log axis
    ax.set_ylabel("log10(tokens + 1)", fontsize=6)
    ax.set_title(f"non-zero token activations (n={values.size})", fontsize=8)
    ax.tick_params(labelsize=6)
    fig.subplots_adjust(left=0.18, right=0.96, bottom=0.12, top=0.88)
    return png_data_uri(fig)


def choose_features(features: pd.DataFrame, n: int) -> list[int]:
    """Live, non-dense features most tied to space (Moran's I), else to a group (AUROC), else most frequent."""
    live = features[~features["dead"] & ~features["dense"]]
    for col in ("moran_i", "top_group_auroc", "frequency"):
        if col in live and live[col].notna().any():
            return live.sort_values(col, ascending=False, na_position="last")["feature"].head(n).astype(int).tolist()
    return []


def _fmt(v) -> tuple[str, str]:
    """(display text, sort value) for a table cell."""
    if isinstance(v, (bool, np.bool_)):
        return ("yes" if v else ""), str(int(v))
    if isinstance(v, (int, np.integer)):
        return str(v), str(v)
    if isinstance(v, (float, np.floating)):
        if not np.isfinite(v):
            return "", ""
        return (f"{v:.3g}", repr(float(v)))
    return str(v), str(v)


def _table(df: pd.DataFrame, table_id: str, link_features: set[int]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in df.columns)
    rows = []
    for rec in df.itertuples(index=False):
        cells = []
        for col, v in zip(df.columns, rec):
            text, key = _fmt(v)
            text = html.escape(text)
            if col == "feature" and int(v) in link_features:
                text = f'<a href="#f{int(v)}">{text}</a>'
            cells.append(f'<td data-v="{html.escape(key)}" title="{html.escape(str(v))}">{text}</td>')
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return (f'<table class="sortable" id="{table_id}"><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table>')


def render(path: str | Path, title: str, meta: dict, metrics: dict, features: pd.DataFrame, genes: pd.DataFrame,
           groups: pd.DataFrame | None, detail: list[int], cell_values: dict[int, np.ndarray] | None,
           coords: np.ndarray | None, histograms: dict[int, np.ndarray], loss_curve: str | Path | None) -> None:
    """Write the dashboard. `cell_values[f]` is feature f's per-cell activation aligned with `coords`."""
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>"]
    if meta.get("untrained"):
        parts.append("<p class='warn'>The foundation model's weights are <b>untrained</b> (random): these features "
                     "describe a random network and carry no biological meaning.</p>")
    summary = [("model", meta.get("model")), ("layer", meta.get("layer")), ("architecture", metrics.get("architecture")),
               ("d_in / d_sae", f"{metrics.get('d_in')} / {metrics.get('d_sae')}"), ("k", metrics.get("k")),
               ("L0", metrics.get("l0")), ("fraction of variance explained", metrics.get("fraction_variance_explained")),
               ("MSE", metrics.get("mse")), ("dead features", metrics.get("dead_features")),
               ("dense features", metrics.get("dense_features")), ("training tokens", metrics.get("training_tokens"))]
    rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(_fmt(v)[0] if v is not None else '')}</td></tr>"
                   for k, v in summary)
    parts.append(f"<table class='metrics'>{rows}</table>")
    if loss_curve is not None and Path(loss_curve).is_file():
        parts.append(f"<p><img alt='training loss and feature density' style='max-width:100%' "
                     f"src='{file_data_uri(loss_curve)}'></p>")

    live = features[~features["dead"]]
    parts.append(f"<h2>Features ({len(live)} live of {len(features)}; click a header to sort)</h2>")
    parts.append("<input id='filter' placeholder='filter (gene, group, ...)'>")
    parts.append("<div class='scroll'>" + _table(live, "features", set(detail)) + "</div>")

    if detail:
        parts.append(f"<h2>Feature details ({len(detail)})</h2>")
    by_feature = genes.groupby("feature") if len(genes) else None
    feat_idx = features.set_index("feature")
    for f in detail:
        row = feat_idx.loc[f]
        stats = [f"frequency {row['frequency']:.3g}", f"mean when active {row['mean_when_active']:.3g}"]
        if "top_group" in row and row["top_group"]:
            stats.append(f"top group {html.escape(str(row['top_group']))} (AUROC {row['top_group_auroc']:.2f})")
        if "moran_i" in row and pd.notna(row["moran_i"]):
            stats.append(f"Moran's I {row['moran_i']:.2f}")
        if "best_factor" in row and row["best_factor"] >= 0:
            stats.append(f"factor {int(row['best_factor'])} (r {row['best_factor_r']:.2f})")
        gene_rows = ""
        if by_feature is not None and f in by_feature.groups:
            g = by_feature.get_group(f).dropna(subset=["rank_mean"]).sort_values("rank_mean").head(10)
            gene_rows = "".join(f"<tr><td>{html.escape(str(r.symbol))}</td><td>{r.mean_activation:.3g}</td>"
                                f"<td>{r.log2_enrichment:.2f}</td><td>{r.n_tokens}</td></tr>" for r in g.itertuples())
        images = []
        if groups is not None and len(groups):
            images.append(f"<img alt='group bars' src='{group_bars(groups, f)}'>")
        if coords is not None and cell_values is not None and f in cell_values:
            images.append(f"<img alt='spatial map' src='{spatial_map(coords, cell_values[f])}'>")
        images.append(f"<img alt='activation histogram' src='{activation_histogram(histograms.get(f, np.empty(0)))}'>")
        parts.append(
            f"<div class='panel' id='f{f}'><div class='genes'><h3>feature {f}</h3><p>{'; '.join(stats)}</p>"
            f"<table><tr><th>gene</th><th>mean act.</th><th>log2 enr.</th><th>tokens</th></tr>{gene_rows}</table>"
            f"</div>{''.join(images)}</div>"
        )
    parts.append(f"<script>{_JS}</script></body></html>")
    Path(path).write_text("".join(parts))
