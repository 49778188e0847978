"""Marker-based annotation: a PanglaoDB TSV or a two-column CSV of markers, decoupler's ULM (or ORA)
score per cell and cell type on the log-normalised data, the best type per cell ("unassigned" when not
significant), a confidence and a margin from decoupler's adjusted p-values, and each domain's majority type.

No network at run time: the user supplies the marker file.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from tissuelens.config import config_path
from tissuelens.errors import InputError

log = logging.getLogger(__name__)
PANGLAO_COLUMNS = ("species", "official gene symbol", "cell type")
CSV_COLUMNS = ("gene", "cell_type")


def read_markers(path: str | Path, fmt: str, species: str | None, organ=None, canonical_only: bool = True,
                 min_sensitivity: float | None = 0.5) -> pd.DataFrame:
    """Marker net in decoupler's long format: columns source (cell type), target (gene symbol), weight 1.

    A PanglaoDB TSV gets the filters decoupler's tutorials apply to PanglaoDB: the species (a token of its
    `species` field), canonical markers only (`canonical marker` == 1), sensitivity above `min_sensitivity` in
    that species (`sensitivity_human` for Hs, `sensitivity_mouse` for Mm, the larger of the two without a
    species; None: no filter), and the organ(s) `organ` (case-insensitive; None: every organ)."""
    path = config_path(path)
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
        table = panglao_filters(table, path, species, organ, canonical_only, min_sensitivity)
        genes, types = table["official gene symbol"], table["cell type"]
    else:
        if tuple(table.columns[:2]) != CSV_COLUMNS or table.shape[1] != 2:
            raise InputError(f"{path}: not a marker CSV: expected the header 'gene,cell_type' "
                             f"(found {','.join(map(str, table.columns))})")
        genes, types = table["gene"], table["cell_type"]
    net = pd.DataFrame({"source": types.str.strip(), "target": genes.str.strip()}).dropna()
    net = net[(net["source"] != "") & (net["target"] != "")].drop_duplicates()
    if net.empty:
        after = " after the filters (analyze.markers.canonical_only, min_sensitivity)" if fmt == "panglaodb" else ""
        raise InputError(f"{path}: the marker file lists no (gene, cell type) pair{after}")
    net["weight"] = 1.0
    return net.reset_index(drop=True)


SENSITIVITY_COLUMNS = {"Hs": "sensitivity_human", "Mm": "sensitivity_mouse"}


def panglao_filters(table: pd.DataFrame, path: Path, species: str | None, organ, canonical_only: bool,
                    min_sensitivity: float | None) -> pd.DataFrame:
    """The rows of a PanglaoDB table that pass the species, canonical, sensitivity and organ filters (see
    read_markers); InputError naming the file when a filter's column is missing or nothing passes it."""
    def need(column: str, setting: str) -> pd.Series:
        if column not in table.columns:
            raise InputError(f"{path}: no column '{column}' for analyze.markers.{setting} (a PanglaoDB TSV has it; "
                             f"switch the filter off to read this file)")
        return table[column]

    if species:
        tokens = table["species"].fillna("").str.split()
        keep = tokens.apply(lambda t: species in t).to_numpy(dtype=bool)
        if not keep.any():
            found = sorted({s for t in tokens for s in t})
            raise InputError(f"{path}: no marker for species '{species}' (analyze.markers.species; "
                             f"file has: {', '.join(found) or 'none'})")
        table = table[keep]
    if canonical_only:
        flag = pd.to_numeric(need("canonical marker", "canonical_only"), errors="coerce")
        table = table[(flag == 1).to_numpy()]
    if min_sensitivity is not None:
        if species in SENSITIVITY_COLUMNS:
            sens = pd.to_numeric(need(SENSITIVITY_COLUMNS[species], "min_sensitivity"), errors="coerce")
        else:
            sens = pd.concat([pd.to_numeric(need(c, "min_sensitivity"), errors="coerce")
                              for c in SENSITIVITY_COLUMNS.values()], axis=1).max(axis=1)
        table = table[(sens > min_sensitivity).to_numpy()]
    if organ:
        wanted = [organ] if isinstance(organ, str) else list(organ)
        organs = need("organ", "organ").fillna("").str.strip()
        keep = organs.str.lower().isin({o.strip().lower() for o in wanted}).to_numpy()
        if not keep.any():
            available = sorted(set(organs) - {""})
            shown = ", ".join(available[:8]) + (f", … ({len(available)} in all)" if len(available) > 8 else "")
            raise InputError(f"{path}: no marker for organ {', '.join(repr(o) for o in wanted)} after the other filters "
                             f"(analyze.markers.organ; organs there: {shown or 'none'})")
        table = table[keep]
    return table


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


def score_and_padj(x, obs_names, var_names, net: pd.DataFrame, method: str = "ulm",
                   where: str = "data") -> tuple[pd.DataFrame, pd.DataFrame]:
    """decoupler's `method` scores and their adjusted p-values (BH over the cell types of each cell), both
    cells x cell types. ORA's universe is the measured genes (`n_bg` = len(var_names), not decoupler's 20,000)
    and its observed set each cell's top 5 % of the genes it detects (decoupler's default `n_up`)."""
    import anndata as ad
    import decoupler as dc

    func = {"ulm": dc.mt.ulm, "ora": dc.mt.ora}[method]
    names = np.asarray(obs_names, dtype=str)
    genes = np.asarray(var_names, dtype=str)
    kwargs = {}
    if method == "ora":
        # decoupler drops genes no cell expresses before ranking; drop them here so the ranked count is known.
        # They stay in the universe: n_bg counts every measured gene.
        x, genes, kwargs = _ora_inputs(x, genes, where)
    # an AnnData holder: decoupler reads sparse matrices in batches only from AnnData
    holder = ad.AnnData(x, obs=pd.DataFrame(index=names), var=pd.DataFrame(index=genes))
    repaired = func(holder, net, tmin=0, verbose=False, **kwargs)  # a copy without empty cells when there are some
    out = repaired if repaired is not None else holder
    es = pd.DataFrame(out.obsm[f"score_{method}"]).reindex(index=names).astype(np.float64)
    padj = pd.DataFrame(out.obsm[f"padj_{method}"]).reindex(index=names, columns=es.columns).astype(np.float64)
    return es, padj


def _ora_inputs(x, genes: np.ndarray, where: str):
    """(matrix without undetected genes, their names, dc.mt.ora keywords): `n_bg` = every measured gene, `n_up`
    = decoupler's default top 5 % (at least 2) of the genes ranked, in the form this decoupler reads it."""
    import scipy.sparse as sp

    n_measured = len(genes)
    if sp.issparse(x):
        x = sp.csr_matrix(x, copy=True)
        x.eliminate_zeros()
        detected = x.getnnz(axis=0) > 0
    else:
        x = np.asarray(x)
        detected = np.count_nonzero(x, axis=0) > 0
    x, genes = x[:, detected], genes[detected]
    n_ranked = int(detected.sum())
    n_top = int(max(np.ceil(0.05 * n_ranked), 2))
    if n_top >= n_ranked:
        raise InputError(f"{where}: {n_ranked} detected genes are too few for ORA's top 5 % (analyze.markers.method)")
    n_up = n_ranked - n_top if _ora_keeps_all_but_bottom() else n_top
    return x, genes, {"n_bg": n_measured, "n_up": n_up}


@functools.lru_cache(maxsize=1)
def _ora_keeps_all_but_bottom() -> bool:
    """decoupler 2.0-2.2's `ora` keeps every gene ranked above the bottom `n_up` as the observed set, not the top
    `n_up` (scverse/decoupler#346, fixed by #347). Probed on a 10-gene cell whose one marker is its top gene:
    with n_up=1 a fixed decoupler observes that gene alone (positive log odds), the affected one 9 genes."""
    import decoupler as dc

    data = pd.DataFrame([np.arange(1.0, 11.0)], index=["c"], columns=[f"g{i}" for i in range(10)])
    net = pd.DataFrame({"source": ["s"], "target": ["g9"], "weight": [1.0]})
    es, _ = dc.mt.ora(data, net, tmin=0, n_up=1, n_bg=10, verbose=False)
    return bool(es.iloc[0, 0] < 0)


def softmax_entropy(scores: np.ndarray) -> np.ndarray:
    """Entropy of each row's softmax over its scores, divided by log(number of types): 0 certain, 1 uniform.
    The Loki annotation's uncertainty over cosine similarities (tissuelens.embed.loki.tasks); the marker
    annotation uses p-values instead (`annotate`), since this depends on the scale of the scores."""
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
P_FLOOR = 1e-300  # adjusted p-values below this (decoupler returns 0 for huge t) count as this in `margin`


def annotate(scores: pd.DataFrame, padj: pd.DataFrame | None = None, alpha: float = 0.05) -> pd.DataFrame:
    """Per cell: `cell_type` (highest score), `score`, `padj` (that type's adjusted p-value), `confidence`
    and `margin`. `unassigned`: cells whose best score is not positive, whose best type is not significant
    (padj > alpha) or whose scores are missing (no marker expressed), so no cell is forced into a type.

    Both certainty columns come from decoupler's adjusted p-values, so they do not depend on the scale of the
    scores: `confidence` = 1 - padj of the best type (0 when its score is not positive); `margin` = how many
    orders of magnitude smaller the best type's padj is than the runner-up's (by score), log10 padj(second) -
    log10 padj(best), a runner-up with a score not positive counting as padj 1 (0 when the best score is not
    positive). NaN without p-values, without scores or (margin) with one type."""
    values = scores.to_numpy(dtype=np.float64)
    ok = np.isfinite(values).all(axis=1)
    filled = np.where(np.isfinite(values), values, -np.inf)
    order = np.argsort(-filled, axis=1, kind="stable")
    best = order[:, 0]
    rows = np.arange(len(best))
    best_score = np.where(ok, filled[rows, best], np.nan)
    best_padj = np.full(len(best), np.nan)
    confidence = np.full(len(best), np.nan)
    margin = np.full(len(best), np.nan)
    positive = ok & (best_score > 0)
    if padj is not None:
        p = padj.reindex(index=scores.index, columns=scores.columns).to_numpy(dtype=np.float64)
        best_padj = p[rows, best]
        confidence = np.where(ok, np.where(positive, 1.0 - best_padj, 0.0), np.nan)
        if values.shape[1] > 1:
            second = order[:, 1]
            p_second = np.where(filled[rows, second] > 0, p[rows, second], 1.0)
            gap = np.log10(np.maximum(p_second, P_FLOOR)) - np.log10(np.maximum(best_padj, P_FLOOR))
            margin = np.where(ok, np.where(positive, np.maximum(gap, 0.0), 0.0), np.nan)
    called = positive.copy()
    if padj is not None:
        called &= np.nan_to_num(best_padj, nan=1.0) <= alpha
    types = np.asarray(scores.columns, dtype=object)[best]
    types[~called] = UNASSIGNED
    names = sorted(map(str, scores.columns))
    return pd.DataFrame({
        "cell_type": pd.Categorical(types, categories=names + ([UNASSIGNED] if UNASSIGNED not in names else [])),
        "score": best_score,
        "padj": best_padj,
        "confidence": confidence,
        "margin": margin,
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
