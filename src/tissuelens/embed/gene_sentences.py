"""Loki/OmiCLIP gene sentences: each spot (or cell) as the space-joined symbols of its top genes.

Same algorithm as `loki.preprocess.generate_gene_df(ad, house_keeping_genes)`:

1. drop genes whose symbol contains "." ; 2. drop genes whose symbol contains "-" ;
3. drop housekeeping genes (`data/loki_housekeeping_genes.txt`, the list Loki ships);
4. per spot, the `n_top` (50) largest values (`Series.nlargest(50)`: descending, ties in var order);
   there is no zero filter, so a spot with fewer expressed genes gets zero-expression genes appended in
   var order; with fewer than `n_top` genes left after filtering every gene is used (pandas then
   sorts with an unstable quicksort, so Loki's tie order is unspecified there; ours stays var order);
5. symbols joined with single spaces.

`top_genes` does step 4 for all spots at once on the CSR arrays (one lexsort over the non-zeros, no
per-spot Python loop); `sentences_per_spot` is the straightforward per-spot pandas implementation,
kept as the reference for tests and `bench/bench_gene_sentences.py`. Both give identical sentences.

Also imported by the Loki conda env (Python 3.9, numpy 1.25): keep to numpy/scipy/pandas.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.sparse as sp

from tissuelens.errors import InputError

N_TOP = 50
ROW_BLOCK = 8192  # spots per block of the top-gene sort
HOUSEKEEPING_FILE = Path(__file__).resolve().parents[1] / "data" / "loki_housekeeping_genes.txt"


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


def _as_csr(x) -> sp.csr_matrix:
    csr = sp.csr_matrix(x, dtype=np.float64, copy=True)
    csr.eliminate_zeros()
    csr.sort_indices()
    return csr


def top_genes(x, n_top: int = N_TOP) -> tuple[np.ndarray, np.ndarray]:
    """Column indices of each row's `n_top` largest values, descending, ties (zeros included) in column
    order; returns (indices (n_rows, k), n_expressed (n_rows,)) with k = min(n_top, n_cols)."""
    x = x if sp.issparse(x) else np.asarray(x)
    k = min(n_top, x.shape[1])
    out = np.empty((x.shape[0], k), dtype=np.int64)
    n_expr = np.empty(x.shape[0], dtype=np.int64)
    # blocks of rows bound the sort's working memory (~60 bytes per non-zero) at any number of spots
    for lo in range(0, x.shape[0], ROW_BLOCK):
        out[lo : lo + ROW_BLOCK], n_expr[lo : lo + ROW_BLOCK] = _top_genes_block(_as_csr(x[lo : lo + ROW_BLOCK]), k)
    return out, n_expr


def _top_genes_block(csr: sp.csr_matrix, k: int) -> tuple[np.ndarray, np.ndarray]:
    n_rows = csr.shape[0]
    if csr.data.size and csr.data.min() < 0:
        raise InputError("expression has negative values; gene sentences rank non-negative expression")
    if csr.data.size and not np.all(np.isfinite(csr.data)):
        raise InputError("expression has NaN or infinite values")
    out = np.empty((n_rows, k), dtype=np.int64)
    nnz = np.diff(csr.indptr)
    rows = np.repeat(np.arange(n_rows), nnz)
    # one stable ordering of all non-zeros: by row, then value descending, then column
    order = np.lexsort((csr.indices, -csr.data, rows))
    rank = np.arange(order.size) - csr.indptr[rows[order]]
    take = rank < k
    out[rows[order][take], rank[take]] = csr.indices[order][take]

    short = np.flatnonzero(nnz < k)
    if short.size:
        # zero-valued genes fill the rest in column order; the first (k - nnz) columns outside a row's
        # non-zeros all lie within its first k columns
        is_nz = np.zeros((short.size, k), dtype=bool)
        pos = np.full(n_rows, -1)
        pos[short] = np.arange(short.size)
        sel = pos[rows] >= 0
        cols, r = csr.indices[sel], pos[rows[sel]]
        inside = cols < k
        is_nz[r[inside], cols[inside]] = True
        zero_cols = np.argsort(is_nz, axis=1, kind="stable")  # zero (False) columns first, in order
        fill = np.arange(k)[None, :] >= nnz[short][:, None]  # slots after the expressed genes
        src = np.arange(k)[None, :] - nnz[short][:, None]  # j-th slot to fill takes the j-th zero column
        rr, cc = np.nonzero(fill)
        out[short[rr], cc] = zero_cols[rr, src[rr, cc]]
    return out, np.minimum(nnz, k)


def join_symbols(symbols: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Sentences (object array) from a (n_rows, k) matrix of gene indices: column-wise, not per row."""
    names = np.asarray(symbols, dtype=object)
    if idx.shape[1] == 0:
        return np.full(idx.shape[0], "", dtype=object)
    out = names[idx[:, 0]].copy()
    for j in range(1, idx.shape[1]):
        out = out + " " + names[idx[:, j]]
    return out


def gene_sentences(x, symbols, housekeeping, n_top: int = N_TOP) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(sentences, gene indices into `symbols` (n_rows, k), number of expressed genes per row)."""
    keep = np.flatnonzero(sentence_gene_mask(symbols, housekeeping))
    if keep.size == 0:
        raise InputError("no gene is left for the sentences after dropping symbols with '.' or '-' and housekeeping genes")
    sub = sp.csr_matrix(x)[:, keep] if sp.issparse(x) else np.asarray(x)[:, keep]
    local, n_expr = top_genes(sub, n_top)
    idx = keep[local]
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
