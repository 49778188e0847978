"""Loki/OmiCLIP gene sentences: each spot (or cell) as the space-joined symbols of its top genes.

Same algorithm as `loki.preprocess.generate_gene_df(ad, house_keeping_genes)`:

1. drop genes whose symbol contains "." ; 2. drop genes whose symbol contains "-" ;
3. drop housekeeping genes (`data/loki_housekeeping_genes.txt`, the list Loki ships);
4. per spot, the `n_top` (50) largest values (`Series.nlargest(50)`: descending, ties in var order);
   there is no zero filter, so a spot with fewer expressed genes gets zero-expression genes appended in
   var order; with fewer than `n_top` genes left after filtering every gene is used (pandas then
   sorts with an unstable quicksort, so Loki's tie order is unspecified there; ours stays var order);
5. symbols joined with single spaces.

`top_genes` does step 4 a block of spots at a time with a per-row partial selection over the non-zeros
(np.partition; no per-spot Python loop, no global sort); `sentences_per_spot` is the straightforward per-spot pandas implementation,
kept as the reference for tests and `bench/bench_gene_sentences.py`. Both give identical sentences.

Also imported by the Loki conda env (Python 3.9, numpy 1.25): keep to numpy/scipy/pandas.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.sparse as sp

from tissuelens.errors import InputError

N_TOP = 50
ROW_BLOCK = 512  # spots per block of the top-gene selection (bounds the padded copy of the non-zeros)
HOUSEKEEPING_FILE = Path(__file__).resolve().parents[2] / "data" / "loki_housekeeping_genes.txt"


def load_housekeeping(path: str | Path | None = None) -> list[str]:
    """Symbols of a housekeeping list: one per line, '#' comments; a CSV with a `genesymbol` column
    (Loki's own `housekeeping_genes.csv`) is accepted too."""
    path = Path(path) if path else HOUSEKEEPING_FILE
    if not path.is_file():
        raise InputError(f"{path}: housekeeping gene list not found")
    lines = [ln.strip() for ln in path.read_text().splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith("#")]
    if lines and "genesymbol" in lines[0].split(","):
        col = lines[0].split(",").index("genesymbol")
        rows = [ln.split(",") for ln in lines[1:]]
        symbols = [r[col].strip() for r in rows if len(r) > col and r[col].strip()]
    else:
        symbols = lines
    if not symbols:
        raise InputError(f"{path}: housekeeping gene list is empty")
    return list(dict.fromkeys(symbols))


def sentence_gene_mask(symbols, housekeeping) -> np.ndarray:
    """Boolean mask of the genes a sentence may use (Loki's filters 1-3)."""
    symbols = np.asarray(symbols, dtype=object).astype(str)
    hk = set(housekeeping)
    return np.array([("." not in s) and ("-" not in s) and (s not in hk) for s in symbols], dtype=bool)


def check_symbols(symbols, where: str) -> None:
    """InputError unless var_names look like gene symbols (Loki's text encoder reads symbols)."""
    symbols = [str(s) for s in symbols]
    if not symbols:
        raise InputError(f"{where}: no genes")
    ensembl = sum(s.upper().startswith(("ENSG", "ENSMUSG")) for s in symbols)
    numeric = sum(s.isdigit() for s in symbols)
    if ensembl > 0.5 * len(symbols) or numeric > 0.5 * len(symbols):
        raise InputError(
            f"{where}: var_names are not gene symbols (e.g. '{symbols[0]}'); Loki's gene sentences need HGNC "
            "symbols as var_names"
        )


def _rows(x, lo: int, hi: int) -> sp.csr_matrix:
    """Rows lo:hi as a float64 CSR with sorted indices and no stored zeros; views into a clean CSR input,
    copies only when something must change. Checks values (two passes: min and max)."""
    if sp.isspmatrix_csr(x) or isinstance(x, sp.csr_array):
        a, b = x.indptr[lo], x.indptr[min(hi, x.shape[0])]
        csr = sp.csr_matrix((x.data[a:b], x.indices[a:b], x.indptr[lo : hi + 1] - a), shape=(min(hi, x.shape[0]) - lo, x.shape[1]),
                            copy=False)
    else:
        csr = sp.csr_matrix(x[lo:hi])
    if csr.data.dtype != np.float64:
        csr = csr.astype(np.float64)
    if csr.data.size:
        lo_v, hi_v = csr.data.min(), csr.data.max()
        if not (np.isfinite(lo_v) and np.isfinite(hi_v)):
            raise InputError("expression has NaN or infinite values")
        if lo_v < 0:
            raise InputError("expression has negative values; gene sentences rank non-negative expression")
        if lo_v == 0 or not csr.has_sorted_indices:  # stored zeros, unsorted columns: clean a copy
            csr = csr.copy()
            csr.eliminate_zeros()
            csr.sort_indices()
    return csr


def top_genes(x, n_top: int = N_TOP, keep: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Column indices of each row's `n_top` largest values among the columns in `keep` (boolean mask; all
    when None), descending, ties (zeros included) in column order, as pandas' `Series.nlargest`
    (keep="first"); returns (indices (n_rows, k), n_expressed (n_rows,)), k = min(n_top, kept columns)."""
    x = x if sp.issparse(x) else np.asarray(x)
    keep = np.ones(x.shape[1], dtype=bool) if keep is None else np.asarray(keep, dtype=bool)
    k = min(n_top, int(keep.sum()))
    out = np.empty((x.shape[0], k), dtype=np.int64)
    n_expr = np.zeros(x.shape[0], dtype=np.int64)
    if k == 0:
        return out, n_expr
    # blocks of rows bound the working copies at any number of spots
    for lo in range(0, x.shape[0], ROW_BLOCK):
        csr = _rows(x, lo, lo + ROW_BLOCK)
        if not keep.all():  # dropped genes leave the non-zeros (no column renumbering)
            csr = csr.copy()
            csr.data[~keep[csr.indices]] = 0
            csr.eliminate_zeros()
        nnz = np.diff(csr.indptr)
        block = out[lo : lo + ROW_BLOCK]
        short = np.flatnonzero(nnz < k)
        if not short.size:
            block[:] = _top_expressed(csr, k)
        else:
            full = np.flatnonzero(nnz >= k)
            if full.size:
                block[full] = _top_expressed(csr[full], k)
            # fewer expressed genes than k: zero-valued kept genes follow in column order
            dense = csr[short].toarray()
            dense[:, ~keep] = -1.0
            block[short] = np.argsort(-dense, axis=1, kind="stable")[:, :k]
        n_expr[lo : lo + ROW_BLOCK] = np.minimum(nnz, k)
    return out, n_expr


def _rank_in_row(flags: np.ndarray, row_start: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """For entries sorted by row: how many flagged entries precede each one within its row."""
    f = flags.view(np.int8)
    c = np.cumsum(f, dtype=np.int32)
    before = c - f
    return before - before[row_start][rows]


def _top_expressed(csr: sp.csr_matrix, k: int) -> np.ndarray:
    """Rows with at least k positive values: a per-row partial selection over the non-zeros only.

    Each row's non-zeros (column order) go into a padded (rows, max nnz) matrix; np.partition gives the
    k-th largest value; every value above it is taken, then values equal to it in column order until k;
    a stable sort of those k by value gives descending order with ties in column order."""
    n = csr.shape[0]
    nnz = np.diff(csr.indptr)
    m = int(nnz.max())
    padded = np.full(n * m, -1.0)
    padded[np.arange(csr.data.size) + np.repeat(np.arange(n) * m - csr.indptr[:-1], nnz)] = csr.data
    padded = padded.reshape(n, m)
    kth = np.partition(padded, m - k, axis=1)[:, m - k]
    flat = np.flatnonzero(padded >= kth[:, None])  # row-major: ascending column within a row
    r, p = np.divmod(flat, m)
    val = padded.ravel()[flat]
    col = csr.indices[csr.indptr[r] + p]
    counts = np.bincount(r, minlength=n)
    row_start = np.cumsum(counts) - counts
    tied = val == kth[r]
    tie_rank = _rank_in_row(tied, row_start, r)
    n_tied = tie_rank[row_start + counts - 1] + tied[row_start + counts - 1]
    need = k - (counts - n_tied)  # ties to take per row
    take = ~tied | (tie_rank < need[r])  # the first ties in column order
    at = r * k + _rank_in_row(take, row_start, r)
    cols = np.empty(n * k, dtype=np.int64)
    vals = np.empty(n * k)
    cols[at[take]] = col[take]
    vals[at[take]] = val[take]
    cols, vals = cols.reshape(n, k), vals.reshape(n, k)
    order = np.argsort(-vals, axis=1, kind="stable")
    return np.take_along_axis(cols, order, axis=1)


def join_symbols(symbols: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Sentences (object array) from a (n_rows, k) matrix of gene indices."""
    names = np.asarray(symbols, dtype=object)
    out = np.empty(idx.shape[0], dtype=object)
    out[:] = list(map(" ".join, names[idx].tolist()))
    return out


def gene_sentences(x, symbols, housekeeping, n_top: int = N_TOP) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(sentences, gene indices into `symbols` (n_rows, k), number of expressed genes per row)."""
    keep = sentence_gene_mask(symbols, housekeeping)
    if not keep.any():
        raise InputError("no gene is left for the sentences after dropping symbols with '.' or '-' and housekeeping genes")
    idx, n_expr = top_genes(x, n_top, keep)
    return join_symbols(np.asarray(symbols, dtype=object), idx), idx, n_expr


def sentences_per_spot(x, symbols, housekeeping, n_top: int = N_TOP) -> list[str]:
    """Reference: Loki's generate_gene_df, one spot at a time with pandas `Series.nlargest`."""
    import pandas as pd

    symbols = [str(s) for s in symbols]
    hk = set(housekeeping)
    keep = [j for j, s in enumerate(symbols) if "." not in s and "-" not in s and s not in hk]
    out = []
    for i in range(x.shape[0]):
        row = x[i]
        row = row.toarray().ravel() if sp.issparse(row) else np.asarray(row, dtype=np.float64).ravel()
        series = pd.Series(row[keep], index=[symbols[j] for j in keep])
        if n_top < len(series):
            top = series.nlargest(n_top)  # ties in var order (pandas sorts candidates with mergesort)
        else:
            # pandas' nlargest falls back to an unstable quicksort here; we fix ties in var order
            top = series.sort_values(ascending=False, kind="stable")
        out.append(" ".join(top.index))
    return out
