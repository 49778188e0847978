"""Marker-based annotation: a PanglaoDB TSV or a two-column CSV of markers, decoupler's ULM (or ORA)
score per cell and cell type on the log-normalised data, the best type per cell, the normalised entropy
of the softmax over its scores (uncertainty), and each domain's majority type.

No network at run time: the user supplies the marker file.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from tissuelens.errors import InputError

log = logging.getLogger(__name__)
PANGLAO_COLUMNS = ("species", "official gene symbol", "cell type")
CSV_COLUMNS = ("gene", "cell_type")


def read_markers(path: str | Path, fmt: str, species: str | None) -> pd.DataFrame:
    """Marker net in decoupler's long format: columns source (cell type), target (gene symbol), weight 1."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: marker file not found (analyze.markers.path)")
    try:
        table = pd.read_csv(path, sep="\t" if fmt == "panglaodb" else ",", dtype=str)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
        raise InputError(f"{path}: not a readable {fmt} marker table ({exc})") from None
    table.columns = [str(c).strip().lower() for c in table.columns]
    if fmt == "panglaodb":
        missing = [c for c in PANGLAO_COLUMNS if c not in table.columns]
        if missing:
            raise InputError(f"{path}: not a PanglaoDB TSV: no column {', '.join(repr(c) for c in missing)}")
        if species:
            tokens = table["species"].fillna("").str.split()
            keep = tokens.apply(lambda t: species in t).to_numpy(dtype=bool)
            if not keep.any():
                found = sorted({s for t in tokens for s in t})
                raise InputError(f"{path}: no marker for species '{species}' (analyze.markers.species; "
                                 f"file has: {', '.join(found) or 'none'})")
            table = table[keep]
        genes, types = table["official gene symbol"], table["cell type"]
    else:
        if tuple(table.columns[:2]) != CSV_COLUMNS or table.shape[1] != 2:
            raise InputError(f"{path}: not a marker CSV: expected the header 'gene,cell_type' "
                             f"(found {','.join(map(str, table.columns))})")
        genes, types = table["gene"], table["cell_type"]
    net = pd.DataFrame({"source": types.str.strip(), "target": genes.str.strip()}).dropna()
    net = net[(net["source"] != "") & (net["target"] != "")].drop_duplicates()
    if net.empty:
        raise InputError(f"{path}: the marker file lists no (gene, cell type) pair")
    net["weight"] = 1.0
    return net.reset_index(drop=True)


def match_genes(net: pd.DataFrame, var_names, min_markers: int, where: str) -> pd.DataFrame:
    """Net restricted to genes in the data (case-insensitive symbols, renamed to the data's spelling) and to
    cell types with at least `min_markers` of them; InputError when nothing is left."""
    by_upper = {str(g).upper(): str(g) for g in var_names}
    net = net.assign(target=net["target"].str.upper().map(by_upper)).dropna(subset=["target"])
    if net.empty:
        raise InputError(f"{where}: no marker gene of the file is in the data (analyze.markers.path)")
    sizes = net.groupby("source")["target"].nunique()
    dropped = sizes[sizes < min_markers]
    if len(dropped):
        log.info("cell types with fewer than %d markers in the data, not scored: %s", min_markers,
                 ", ".join(dropped.index))
    net = net[net["source"].isin(sizes[sizes >= min_markers].index)].drop_duplicates(["source", "target"])
    if net.empty:
        raise InputError(f"{where}: no cell type has analyze.markers.min_markers={min_markers} marker genes "
                         f"in the data (most: {int(sizes.max())})")
    return net.reset_index(drop=True)


def score(x, obs_names, var_names, net: pd.DataFrame, method: str = "ulm") -> pd.DataFrame:
    """decoupler's `method` scores (cells x cell types) of the expression matrix `x` (cells x genes)."""
    return score_and_padj(x, obs_names, var_names, net, method)[0]


def score_and_padj(x, obs_names, var_names, net: pd.DataFrame, method: str = "ulm") -> tuple[pd.DataFrame, pd.DataFrame]:
    """decoupler's `method` scores and their adjusted p-values (BH over the cell types of each cell), both
    cells x cell types."""
    import anndata as ad
    import decoupler as dc

    func = {"ulm": dc.mt.ulm, "ora": dc.mt.ora}[method]
    names = np.asarray(obs_names, dtype=str)
    # an AnnData holder: decoupler reads sparse matrices in batches only from AnnData
    holder = ad.AnnData(x, obs=pd.DataFrame(index=names), var=pd.DataFrame(index=np.asarray(var_names, dtype=str)))
    repaired = func(holder, net, tmin=0, verbose=False)  # a copy without empty cells when there are some
    out = repaired if repaired is not None else holder
    es = pd.DataFrame(out.obsm[f"score_{method}"]).reindex(index=names).astype(np.float64)
    padj = pd.DataFrame(out.obsm[f"padj_{method}"]).reindex(index=names, columns=es.columns).astype(np.float64)
    return es, padj


def softmax_entropy(scores: np.ndarray) -> np.ndarray:
    """Entropy of each row's softmax over its scores, divided by log(number of types): 0 certain, 1 uniform."""
    s = np.asarray(scores, dtype=np.float64)
    k = s.shape[1]
    if k < 2:
        return np.zeros(s.shape[0])
    z = s - s.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -np.where(p > 0, p * np.log(p), 0.0).sum(axis=1)
    return h / np.log(k)


UNASSIGNED = "unassigned"


def annotate(scores: pd.DataFrame, padj: pd.DataFrame | None = None, alpha: float = 0.05) -> pd.DataFrame:
    """Per cell: `cell_type` (highest score), `score`, `padj` (that type's adjusted p-value), `entropy`.
    `unassigned`: cells whose best score is not positive, whose best type is not significant (padj > alpha)
    or whose scores are missing (no marker expressed), so no cell is forced into a type."""
    values = scores.to_numpy(dtype=np.float64)
    ok = np.isfinite(values).all(axis=1)
    filled = np.where(np.isfinite(values), values, -np.inf)
    best = filled.argmax(axis=1)
    rows = np.arange(len(best))
    best_score = np.where(ok, filled[rows, best], np.nan)
    best_padj = np.full(len(best), np.nan)
    if padj is not None:
        best_padj = padj.reindex(index=scores.index, columns=scores.columns).to_numpy(dtype=np.float64)[rows, best]
    called = ok & (best_score > 0)
    if padj is not None:
        called &= np.nan_to_num(best_padj, nan=1.0) <= alpha
    types = np.asarray(scores.columns, dtype=object)[best]
    types[~called] = UNASSIGNED
    entropy = np.full(values.shape[0], np.nan)
    entropy[ok] = softmax_entropy(values[ok])
    names = sorted(map(str, scores.columns))
    return pd.DataFrame({
        "cell_type": pd.Categorical(types, categories=names + ([UNASSIGNED] if UNASSIGNED not in names else [])),
        "score": best_score,
        "padj": best_padj,
        "entropy": entropy,
    }, index=scores.index)


def domain_majority(cell_types: pd.Series, domains: pd.Series) -> pd.DataFrame:
    """Per domain: its cells, the most frequent cell type (ties: first in name order) and that type's share."""
    frame = pd.DataFrame({"domain": domains.astype(str).to_numpy(), "cell_type": cell_types.astype(str).to_numpy()})
    counts = frame.groupby(["domain", "cell_type"]).size().unstack(fill_value=0).sort_index(axis=1)
    top = counts.to_numpy().argmax(axis=1)
    n = counts.sum(axis=1).to_numpy()
    return pd.DataFrame({
        "domain": counts.index.astype(str),
        "n_cells": n.astype(int),
        "majority_type": counts.columns.to_numpy()[top].astype(str),
        "majority_share": counts.to_numpy()[np.arange(len(top)), top] / n,
    })
