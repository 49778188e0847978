"""Geneformer's rank-value tokenizer, vectorised over a sparse count matrix.

Same algorithm as Geneformer's TranscriptomeTokenizer (target_sum 10,000):

1. counts from `layers[counts_layer]` (non-negative integers); `n_counts` = each cell's total over
   *all* genes, computed before any gene is dropped (or read from `obs[n_counts_key]`);
2. Ensembl ids from `var[gene_id_key]`, upper-cased, mapped through the checkpoint's
   `ensembl_mapping_dict` when it has one; genes whose id is not in both the token and the median
   dictionary are dropped; genes that map to the same id have their counts summed (columns ordered by
   first appearance);
3. value = count / n_counts * 10,000 / gene median, in exactly that floating-point order;
4. each cell's non-zero genes ranked by descending value with a **stable** sort: ties keep column
   order (upstream uses numpy's default quicksort, whose tie order is unspecified);
5. truncated to the model input size; V2 checkpoints get `<cls>` first and `<eos>` last (the genes are
   truncated to input size - 2).

The per-cell ranking runs in one numba kernel over the CSR arrays (parallel over cells, no copy of
the matrix): a two-pass LSD radix sort on a 22-bit key (the top bits of each value's float32 image;
rounding and truncation are monotone, so the key never contradicts the value order), then an exact
float64 stable insertion sort inside each run of equal keys. `tokenize_per_cell` is the straightforward per-cell
implementation, kept as the reference for tests and the benchmark; both give identical tokens.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numba
import numpy as np
import pandas as pd
import scipy.sparse as sp

from tissuelens.errors import InputError

log = logging.getLogger(__name__)
TARGET_SUM = 10_000.0


@dataclass
class GeneVocab:
    """What the tokenizer needs from a checkpoint (see GeneformerCheckpoint.vocab())."""

    token_dict: dict[str, int]
    median_dict: dict[str, float]
    mapping_dict: dict[str, str] | None
    cls_id: int | None
    eos_id: int | None
    model_input_size: int

    @classmethod
    def from_checkpoint(cls, ckpt, max_input_size: int | None = None) -> "GeneVocab":
        size = ckpt.model_input_size if max_input_size is None else min(max_input_size, ckpt.model_input_size)
        return cls(ckpt.token_dict, ckpt.median_dict, ckpt.mapping_dict, ckpt.cls_id, ckpt.eos_id, size)

    @property
    def special_tokens(self) -> bool:
        return self.cls_id is not None and self.eos_id is not None

    @property
    def max_genes(self) -> int:
        return self.model_input_size - (2 if self.special_tokens else 0)


@dataclass
class TokenizedCells:
    """Ragged token sequences: cell i is `input_ids[offsets[i]:offsets[i + 1]]` (special tokens included)."""

    input_ids: np.ndarray  # int32, flat
    offsets: np.ndarray  # int64, n_cells + 1
    n_genes: np.ndarray  # gene tokens per cell (after truncation)
    special_tokens: bool
    n_var_genes: int = 0  # genes in var
    n_known_genes: int = 0  # var genes kept (id in the dictionaries)

    @property
    def n_cells(self) -> int:
        return self.offsets.size - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def cell(self, i: int) -> np.ndarray:
        return self.input_ids[self.offsets[i] : self.offsets[i + 1]]

    def as_lists(self) -> list[list[int]]:
        return [self.cell(i).tolist() for i in range(self.n_cells)]

    @property
    def empty_cells(self) -> np.ndarray:
        return np.flatnonzero(self.n_genes == 0)


# -- gene id handling (shared by the fast and the reference implementation) ---------------------


@dataclass
class _Columns:
    matrix: sp.csr_matrix  # counts (canonical CSR); when ids collapse, the known genes with duplicates summed
    col_of: np.ndarray  # per matrix column: index into tokens/medians, or -1 for genes not in the dictionary
    tokens: np.ndarray  # token id per known gene, in column order
    medians: np.ndarray  # median per known gene
    n_counts: np.ndarray  # float64 per cell, from all genes
    n_var: int
    n_known: int


def _counts(adata, counts_layer: str | None, where: str) -> sp.csr_matrix:
    if counts_layer:
        if counts_layer not in adata.layers:
            raise InputError(f"{where}: no layers['{counts_layer}'] with raw counts (has: {', '.join(adata.layers) or 'none'})")
        x, label = adata.layers[counts_layer], f"layers['{counts_layer}']"
    else:
        x, label = adata.X, "X"
    if not sp.issparse(x) or x.format != "csr":
        x = sp.csr_matrix(x)
    if x.data.size:
        if not np.all(np.isfinite(x.data)) or x.data.min() < 0:
            raise InputError(f"{where}: {label} holds negative or non-finite values; the tokenizer needs raw counts")
        if not np.issubdtype(x.data.dtype, np.integer) and np.any(x.data != np.floor(x.data)):
            raise InputError(f"{where}: {label} holds non-integer values; the tokenizer needs raw integer counts")
    if not x.has_canonical_format:
        x = x.copy()
        x.sum_duplicates()
    return x


def _gene_columns(adata, vocab: GeneVocab, gene_id_key: str, counts_layer: str | None, n_counts_key: str | None, where: str) -> _Columns:
    if gene_id_key not in adata.var.columns:
        raise InputError(
            f"{where}: var has no column '{gene_id_key}' with Ensembl gene ids (has: {', '.join(map(str, adata.var.columns)) or 'none'}); set embed.gene_id_key"
        )
    counts = _counts(adata, counts_layer, where)
    if n_counts_key:
        if n_counts_key not in adata.obs:
            raise InputError(f"{where}: obs has no column '{n_counts_key}' (n_counts_key)")
        n_counts = adata.obs[n_counts_key].to_numpy(dtype=np.float64)
    else:  # integer counts: the float64 sum is exact in any order
        n_counts = np.empty(counts.shape[0], dtype=np.float64)
        _row_sums(counts.indptr, counts.data, n_counts)

    ids = pd.Series(adata.var[gene_id_key].astype(str).str.upper().to_numpy())
    known = {g for g in vocab.median_dict if g in vocab.token_dict}
    if vocab.mapping_dict is not None:
        mapping = {k.upper(): v for k, v in vocab.mapping_dict.items() if v in known}
        collapsed = ids.map(mapping)
    else:
        collapsed = ids.where(ids.isin(known))
    keep = np.flatnonzero(collapsed.notna().to_numpy())
    if keep.size == 0:
        examples = ", ".join(ids.head(3))
        raise InputError(
            f"{where}: none of the {len(ids)} ids in var['{gene_id_key}'] (e.g. {examples}) is in the model's gene dictionary"
        )
    kept_ids = collapsed.iloc[keep].to_numpy()
    unique, first = np.unique(kept_ids, return_index=True)
    order = np.argsort(first, kind="stable")  # unique ids in order of first appearance
    unique = unique[order]
    if unique.size == keep.size:  # no duplicates: use the matrix as it is, unknown genes skipped
        matrix = counts
        col_of = np.full(counts.shape[1], -1, dtype=np.int64)
        col_of[keep] = np.arange(keep.size)
    else:  # sum the counts of genes that collapse to the same id
        pos = pd.Index(unique).get_indexer(kept_ids)
        agg = sp.csr_matrix((np.ones(keep.size, dtype=counts.dtype), (np.arange(keep.size), pos)), shape=(keep.size, unique.size))
        matrix = sp.csr_matrix(counts[:, keep] @ agg)
        matrix.sum_duplicates()
        matrix.sort_indices()
        col_of = np.arange(unique.size, dtype=np.int64)
    tokens = np.array([vocab.token_dict[g] for g in unique], dtype=np.int32)
    medians = np.array([vocab.median_dict[g] for g in unique], dtype=np.float64)
    return _Columns(matrix, col_of, tokens, medians, n_counts, len(ids), int(keep.size))


# -- fast path -----------------------------------------------------------------------------------


KEY_BITS = 22  # radix key: the top 22 bits of the float32 image, two passes of 11 bits
DIGIT = 11


@numba.njit(cache=True, error_model="numpy")
def _rank_one(counts, cols, n_count, medians, order, vals, f32, keys, tmp_order, tmp_keys, hist):
    """Fill `order[:m]` with 0..m-1 ranked by descending value (ties keep their input order)."""
    m = counts.size
    for j in range(m):
        v = counts[j] / n_count
        v = v * 10000.0
        v = v / medians[cols[j]]
        vals[j] = v
        f32[j] = v
    # Descending key: the top KEY_BITS bits of the float32 image, complemented. Rounding to float32 and
    # dropping low bits are monotone, so the key order never contradicts the value order.
    bits = f32[:m].view(np.uint32)
    full = np.uint32((1 << KEY_BITS) - 1)
    mask = np.uint32((1 << DIGIT) - 1)
    hist[:, :] = 0
    for j in range(m):
        key = full - (bits[j] >> (32 - KEY_BITS))
        keys[j] = key
        order[j] = j
        hist[0, (key & mask) + 1] += 1
        hist[1, (key >> DIGIT) + 1] += 1
    # LSD radix sort of (key, position) pairs; stable, so equal keys keep their input order
    k_src, k_dst, i_src, i_dst = keys, tmp_keys, order, tmp_order
    swapped = False
    for p in range(2):
        h = hist[p]
        if h.max() == m:
            continue  # every key has the same digit here
        for b in range(1 << DIGIT):
            h[b + 1] += h[b]
        shift = DIGIT * p
        for j in range(m):
            key = k_src[j]
            d = (key >> shift) & mask
            pos = h[d]
            h[d] = pos + 1
            k_dst[pos] = key
            i_dst[pos] = i_src[j]
        k_src, k_dst = k_dst, k_src
        i_src, i_dst = i_dst, i_src
        swapped = not swapped
    if swapped:
        order[:m] = i_src[:m]
        keys[:m] = k_src[:m]
    # exact fix-up: inside each run of equal keys, stable insertion sort by the float64 value
    a = 0
    while a < m:
        b = a + 1
        while b < m and keys[b] == keys[a]:
            b += 1
        for i in range(a + 1, b):
            cur = order[i]
            k = i - 1
            while k >= a and vals[order[k]] < vals[cur]:
                order[k + 1] = order[k]
                k -= 1
            order[k + 1] = cur
        a = b


@numba.njit(parallel=True, cache=True)
def _row_sums(indptr, data, out):
    for i in numba.prange(indptr.size - 1):
        t = 0.0
        for p in range(indptr[i], indptr[i + 1]):
            t += data[p]
        out[i] = t


@numba.njit(parallel=True, cache=True)
def _count_known(indptr, indices, data, col_of, max_genes, out):
    for i in numba.prange(indptr.size - 1):
        k = 0
        for p in range(indptr[i], indptr[i + 1]):
            if data[p] != 0 and col_of[indices[p]] >= 0:
                k += 1
        out[i] = min(k, max_genes)


@numba.njit(parallel=True, cache=True, error_model="numpy")
def _tokenize_kernel(indptr, indices, data, col_of, n_counts, medians, tokens, out_offsets, out, max_genes, cls_id, eos_id, n_blocks):
    n = indptr.size - 1
    step = (n + n_blocks - 1) // n_blocks
    for blk in numba.prange(n_blocks):
        start, stop = blk * step, min(n, (blk + 1) * step)
        size = 1
        for i in range(start, stop):
            size = max(size, indptr[i + 1] - indptr[i])
        counts = np.empty(size, np.float64)
        cols = np.empty(size, np.int64)
        order = np.empty(size, np.int64)
        tmp_order = np.empty(size, np.int64)
        vals = np.empty(size, np.float64)
        f32 = np.empty(size, np.float32)
        keys = np.empty(size, np.uint32)
        tmp_keys = np.empty(size, np.uint32)
        hist = np.empty((2, (1 << DIGIT) + 1), np.int64)
        for i in range(start, stop):
            base = out_offsets[i]
            if cls_id >= 0:
                out[base] = cls_id
                base += 1
            m = 0
            for p in range(indptr[i], indptr[i + 1]):
                c = col_of[indices[p]]
                if data[p] != 0 and c >= 0:
                    counts[m] = data[p]
                    cols[m] = c
                    m += 1
            if m > 0:
                _rank_one(counts[:m], cols[:m], n_counts[i], medians, order, vals, f32, keys, tmp_order, tmp_keys, hist)
                k = min(m, max_genes)
                for j in range(k):
                    out[base + j] = tokens[cols[order[j]]]
                base += k
            if eos_id >= 0:
                out[base] = eos_id


def _finish(cols: _Columns, vocab: GeneVocab, n_genes: np.ndarray, where: str) -> None:
    empty = int((n_genes == 0).sum())
    log.info(
        "%s: %d of %d genes are in the dictionary; %d cells tokenised, %d with no known gene",
        where, cols.n_known, cols.n_var, n_genes.size - empty, empty,
    )


def tokenize(
    adata,
    vocab: GeneVocab,
    *,
    gene_id_key: str = "gene_ids",
    counts_layer: str | None = "counts",
    n_counts_key: str | None = None,
    where: str = "AnnData",
) -> TokenizedCells:
    """Tokenise every cell of `adata` (input order kept; cells without known genes get no gene token)."""
    cols = _gene_columns(adata, vocab, gene_id_key, counts_layer, n_counts_key, where)
    x = cols.matrix
    n_genes = np.empty(x.shape[0], dtype=np.int64)
    _count_known(x.indptr, x.indices, x.data, cols.col_of, vocab.max_genes, n_genes)
    extra = 2 if vocab.special_tokens else 0
    offsets = np.zeros(x.shape[0] + 1, dtype=np.int64)
    np.cumsum(n_genes + extra, out=offsets[1:])
    out = np.empty(offsets[-1], dtype=np.int32)
    bad = (cols.n_counts <= 0) & (n_genes > 0)
    if bad.any():
        raise InputError(f"{where}: n_counts is zero or negative for {int(bad.sum())} cells with counts")
    _tokenize_kernel(
        x.indptr,
        x.indices,
        x.data,
        cols.col_of,
        cols.n_counts,
        cols.medians,
        cols.tokens,
        offsets,
        out,
        vocab.max_genes,
        vocab.cls_id if vocab.special_tokens else -1,
        vocab.eos_id if vocab.special_tokens else -1,
        max(1, min(x.shape[0], 4 * numba.get_num_threads())),
    )
    _finish(cols, vocab, n_genes, where)
    return TokenizedCells(out, offsets, n_genes, vocab.special_tokens, cols.n_var, cols.n_known)


# -- reference ------------------------------------------------------------------------------------


def tokenize_per_cell(
    adata,
    vocab: GeneVocab,
    *,
    gene_id_key: str = "gene_ids",
    counts_layer: str | None = "counts",
    n_counts_key: str | None = None,
    where: str = "AnnData",
) -> TokenizedCells:
    """Straightforward per-cell implementation of the same algorithm (reference for tests and bench)."""
    cols = _gene_columns(adata, vocab, gene_id_key, counts_layer, n_counts_key, where)
    seqs, n_genes = [], []
    for i in range(cols.matrix.shape[0]):
        row = cols.matrix[i]
        genes = cols.col_of[row.indices]
        known = (genes >= 0) & (row.data != 0)
        genes, counts = genes[known], row.data[known].astype(np.float64)
        values = counts / cols.n_counts[i] * TARGET_SUM / cols.medians[genes]
        ranked = cols.tokens[genes[np.argsort(-values, kind="stable")]][: vocab.max_genes]
        n_genes.append(ranked.size)
        if vocab.special_tokens:
            ranked = np.concatenate([[vocab.cls_id], ranked, [vocab.eos_id]])
        seqs.append(ranked.astype(np.int32))
    offsets = np.concatenate([[0], np.cumsum([s.size for s in seqs])]).astype(np.int64)
    flat = np.concatenate(seqs) if seqs else np.empty(0, np.int32)
    n_genes = np.asarray(n_genes, dtype=np.int64)
    _finish(cols, vocab, n_genes, where)
    return TokenizedCells(flat.astype(np.int32), offsets, n_genes, vocab.special_tokens, cols.n_var, cols.n_known)
