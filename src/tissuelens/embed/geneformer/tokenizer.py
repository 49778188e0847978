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

One parallel numba pass over the CSR arrays validates the counts and sizes every cell's output; a
second ranks each cell (parallel over cells, no copy of the matrix): a two-pass LSD radix sort on a
22-bit key taken from the float64 values' bit images, then an exact stable sort inside each run of
equal keys. `tokenize_per_cell` is the straightforward per-cell implementation, kept as the reference
for tests and the benchmark; both give identical tokens.
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
    n_known: np.ndarray  # non-zero known genes per cell
    n_var: int
    n_known_genes: int


NEGATIVE, FRACTIONAL, UNSORTED = 1, 2, 4  # _scan_rows flags


@numba.njit(parallel=True, cache=True)
def _scan_rows(indptr, indices, data, col_of, n_counts, n_known, flags):
    """One pass over a CSR matrix: per row the total count, the number of non-zero known genes
    (`col_of` >= 0), and flags for negative/non-finite or fractional values and for column indices that
    are not strictly increasing (unsorted or duplicated entries)."""
    for i in numba.prange(indptr.size - 1):
        total = 0.0
        known = 0
        f = 0
        prev = -1
        for p in range(indptr[i], indptr[i + 1]):
            x = data[p]
            j = indices[p]
            if not (x >= 0 and x < np.inf):
                f |= NEGATIVE
            elif x != np.floor(x):
                f |= FRACTIONAL
            if j <= prev:
                f |= UNSORTED
            prev = j
            total += x  # integer counts: the float64 sum is exact in any order
            if x != 0 and col_of[j] >= 0:
                known += 1
        n_counts[i] = total
        n_known[i] = known
        flags[i] = f


def _scan(x: sp.csr_matrix, col_of: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    n_counts = np.empty(x.shape[0], np.float64)
    n_known = np.empty(x.shape[0], np.int64)
    flags = np.zeros(x.shape[0], np.uint8)
    _scan_rows(x.indptr, x.indices, x.data, col_of, n_counts, n_known, flags)
    return n_counts, n_known, int(np.bitwise_or.reduce(flags)) if flags.size else 0


def _count_matrix(adata, counts_layer: str | None, where: str) -> tuple[sp.csr_matrix, str]:
    if counts_layer:
        if counts_layer not in adata.layers:
            raise InputError(f"{where}: no layers['{counts_layer}'] with raw counts (has: {', '.join(adata.layers) or 'none'})")
        x, label = adata.layers[counts_layer], f"layers['{counts_layer}']"
    else:
        x, label = adata.X, "X"
    if not sp.issparse(x) or x.format != "csr":
        x = sp.csr_matrix(x)
    return x, label


def _gene_columns(adata, vocab: GeneVocab, gene_id_key: str, counts_layer: str | None, n_counts_key: str | None, where: str) -> _Columns:
    if gene_id_key not in adata.var.columns:
        raise InputError(
            f"{where}: var has no column '{gene_id_key}' with Ensembl gene ids (has: {', '.join(map(str, adata.var.columns)) or 'none'}); set embed.gene_id_key"
        )
    counts, label = _count_matrix(adata, counts_layer, where)
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
    unique = unique[np.argsort(first, kind="stable")]  # unique ids in order of first appearance
    col_of = np.full(counts.shape[1], -1, dtype=np.int64)
    col_of[keep] = np.arange(keep.size)

    n_counts, n_known, flags = _scan(counts, col_of)
    if flags & NEGATIVE:
        raise InputError(f"{where}: {label} holds negative or non-finite values; the tokenizer needs raw counts")
    if flags & FRACTIONAL:
        raise InputError(f"{where}: {label} holds non-integer values; the tokenizer needs raw integer counts")
    if flags & UNSORTED:  # rare: rescan the canonical copy (duplicate entries summed, columns sorted)
        counts = counts.copy()
        counts.sum_duplicates()
        n_counts, n_known, _ = _scan(counts, col_of)
    if n_counts_key:
        if n_counts_key not in adata.obs:
            raise InputError(f"{where}: obs has no column '{n_counts_key}' (n_counts_key)")
        n_counts = adata.obs[n_counts_key].to_numpy(dtype=np.float64)

    matrix = counts
    if unique.size < keep.size:  # sum the counts of genes that collapse to the same id
        pos = pd.Index(unique).get_indexer(kept_ids)
        agg = sp.csr_matrix((np.ones(keep.size, dtype=counts.dtype), (np.arange(keep.size), pos)), shape=(keep.size, unique.size))
        matrix = sp.csr_matrix(counts[:, keep] @ agg)
        matrix.sum_duplicates()
        matrix.sort_indices()
        col_of = np.arange(unique.size, dtype=np.int64)
        _, n_known, _ = _scan(matrix, col_of)
    tokens = np.array([vocab.token_dict[g] for g in unique], dtype=np.int32)
    medians = np.array([vocab.median_dict[g] for g in unique], dtype=np.float64)
    bad = ~(np.isfinite(medians) & (medians > 0))
    if bad.any():
        raise InputError(f"{where}: gene median of {unique[bad][0]} is {float(medians[bad][0])!r}, not a positive finite number")
    return _Columns(matrix, col_of, tokens, medians, n_counts, n_known, len(ids), int(keep.size))


# -- fast path -----------------------------------------------------------------------------------


KEY_BITS = 22  # radix key width: two counting-sort passes of 11 bits
INSERTION_MAX = 32  # longer runs of equal keys are ordered by a merge sort


@numba.njit(cache=True, error_model="numpy")
def _rank_descending(m, vals, vmin, vmax, words, spare, hist, pair):
    """Sort the first m values descending, ties in input order; returns packed words whose low 32 bits
    are the input positions, best first.

    Positive float64 values order like their bit images, so the key is the image's distance below
    the row's maximum, shifted right until it fits KEY_BITS. The shift only merges neighbours, never
    swaps them: an LSD radix sort on the key (stable) is exact except inside runs of equal keys, which
    are then sorted by the exact value."""
    pair[0] = vmin
    pair[1] = vmax
    bits = pair.view(np.uint64)
    lo, hi = bits[0], bits[1]
    u = vals[:m].view(np.uint64)
    width = 0
    while width < 64 and ((hi - lo) >> np.uint64(width)) > 0:
        width += 1
    shift = np.uint64(max(0, width - KEY_BITS))
    width = min(width, KEY_BITS)
    d0 = (width + 1) // 2
    h0 = hist[0, : (1 << d0) + 1]
    h1 = hist[1, : (1 << (width - d0)) + 1]
    h0[:] = 0
    h1[:] = 0
    low = np.uint64((1 << d0) - 1)
    for j in range(m):
        key = (hi - u[j]) >> shift
        words[j] = (key << np.uint64(32)) | np.uint64(j)
        h0[(key & low) + 1] += 1
        h1[(key >> np.uint64(d0)) + 1] += 1
    src, dst = words, spare
    for p in range(2):
        h = h0 if p == 0 else h1
        n_buckets = h.size - 1
        if n_buckets <= 1 or h.max() == m:
            continue  # one digit value only: this pass would not move anything
        for b in range(n_buckets):
            h[b + 1] += h[b]
        at = np.uint64(32 + (0 if p == 0 else d0))
        digit = np.uint64(n_buckets - 1)
        for j in range(m):
            w = src[j]
            d = (w >> at) & digit
            pos = h[d]
            h[d] = pos + 1
            dst[pos] = w
        src, dst = dst, src
    position = np.uint64(0xFFFFFFFF)
    a = 0
    while a < m:
        key = src[a] >> np.uint64(32)
        b = a + 1
        while b < m and (src[b] >> np.uint64(32)) == key:
            b += 1
        if b - a > INSERTION_MAX:
            run = src[a:b].copy()
            neg = np.empty(b - a, np.float64)
            for q in range(b - a):
                neg[q] = -vals[np.int64(run[q] & position)]
            ranked = np.argsort(neg, kind="mergesort")  # stable
            for q in range(b - a):
                src[a + q] = run[ranked[q]]
        else:
            for q in range(a + 1, b):
                cur = src[q]
                v = vals[np.int64(cur & position)]
                r = q - 1
                while r >= a and vals[np.int64(src[r] & position)] < v:
                    src[r + 1] = src[r]
                    r -= 1
                src[r + 1] = cur
        a = b
    return src


@numba.njit(parallel=True, cache=True, error_model="numpy")
def _tokenize_kernel(indptr, indices, data, col_of, n_counts, medians, tokens, out_offsets, out, max_genes, cls_id, eos_id, n_blocks):
    n = indptr.size - 1
    step = (n + n_blocks - 1) // n_blocks
    position = np.uint64(0xFFFFFFFF)
    for blk in numba.prange(n_blocks):
        start, stop = blk * step, min(n, (blk + 1) * step)
        size = 1
        for i in range(start, stop):
            size = max(size, indptr[i + 1] - indptr[i])
        cols = np.empty(size, np.int64)
        vals = np.empty(size, np.float64)
        words = np.empty(size, np.uint64)
        spare = np.empty(size, np.uint64)
        hist = np.empty((2, (1 << ((KEY_BITS + 1) // 2)) + 1), np.int64)
        pair = np.empty(2, np.float64)
        for i in range(start, stop):
            base = out_offsets[i]
            if cls_id >= 0:
                out[base] = cls_id
                base += 1
            n_count = n_counts[i]
            vmin, vmax = np.inf, 0.0
            m = 0
            for p in range(indptr[i], indptr[i + 1]):
                c = col_of[indices[p]]
                if data[p] != 0 and c >= 0:
                    v = data[p] / n_count  # the reference's order of operations, for identical rounding
                    v = v * 10000.0
                    v = v / medians[c]
                    vals[m] = v
                    cols[m] = c
                    vmin = min(vmin, v)
                    vmax = max(vmax, v)
                    m += 1
            if m > 0:
                ranked = _rank_descending(m, vals, vmin, vmax, words, spare, hist, pair)
                k = min(m, max_genes)
                for j in range(k):
                    out[base + j] = tokens[cols[np.int64(ranked[j] & position)]]
                base += k
            if eos_id >= 0:
                out[base] = eos_id


def _finish(cols: _Columns, vocab: GeneVocab, n_genes: np.ndarray, where: str) -> None:
    empty = int((n_genes == 0).sum())
    log.info(
        "%s: %d of %d genes are in the dictionary; %d cells tokenised, %d with no known gene",
        where, cols.n_known_genes, cols.n_var, n_genes.size - empty, empty,
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
    n_genes = np.minimum(cols.n_known, vocab.max_genes)
    bad = ~(cols.n_counts > 0) & (n_genes > 0)
    if bad.any():
        raise InputError(f"{where}: n_counts is zero, negative or missing for {int(bad.sum())} cells with counts")
    extra = 2 if vocab.special_tokens else 0
    offsets = np.zeros(x.shape[0] + 1, dtype=np.int64)
    np.cumsum(n_genes + extra, out=offsets[1:])
    out = np.empty(offsets[-1], dtype=np.int32)
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
    return TokenizedCells(out, offsets, n_genes, vocab.special_tokens, cols.n_var, cols.n_known_genes)


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
    return TokenizedCells(flat.astype(np.int32), offsets, n_genes, vocab.special_tokens, cols.n_var, cols.n_known_genes)
