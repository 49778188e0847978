"""Tahoe-x1 inputs, ours and tested without the model: the vocabulary, gene mapping and tokenised cells.

Data preparation follows tahoe-x1's `loader_from_adata` -> `CountDataset` -> `DataCollator` (inference:
no masking, no padding with unexpressed genes):

1. genes: `var[gene_id_key]` Ensembl ids (upper-cased, version suffix dropped) mapped through the
   checkpoint's `vocab.json`; genes not in the vocabulary are dropped (tahoe's `id_in_vocab = -1`);
2. per cell: `<cls>` (value `pad_value`) followed by the cell's non-zero in-vocabulary genes in column
   order, with their raw counts;
3. binning (`do_binning`, `num_bins`): the cell's counts (everything after the first
   `keep_first_n_tokens`) -> `bucketize(count, quantile(counts, linspace(0, 1, num_bins - 1)))` + 1,
   values 1..num_bins-1; done with torch's own quantile/searchsorted so the edges are bit-identical,
   batched over cells of equal length;
4. length limit: a cell longer than `max_length` keeps its first `keep_first_n_tokens` tokens and a
   random sample of the rest (tahoe's `torch.randperm` order), drawn here from
   `numpy.random.default_rng([seed, cell])`, so a rerun gives the same tokens;
5. batches are padded to their longest cell with `pad_token_id` / `pad_value`; flash attention unpads
   them, and for torch attention the model's encoder masks the padded keys
   (tissuelens.models.tahoe.masked_encoder_forward), so a cell's embedding does not depend on its batch.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from tissuelens.errors import InputError
from tissuelens.io import read_json

CLS, PAD = "<cls>", "<pad>"
_VERSION = re.compile(r"\.\d+$")


def read_vocab(path: str | Path) -> dict:
    """Token -> id from tahoe's `vocab.json` (a JSON object; a JSON list is read as ids by position)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: vocab.json not found")
    obj = read_json(path, expect=None)
    if isinstance(obj, list):
        obj = {str(t): i for i, t in enumerate(obj)}
    if not isinstance(obj, dict) or not obj:
        raise InputError(f"{path}: expected a JSON object mapping tokens to ids")
    for tok, idx in obj.items():
        if isinstance(idx, bool) or not isinstance(idx, int) or idx < 0:
            raise InputError(f"{path}: id of {tok!r} is {idx!r}, not a non-negative integer")
    if len(set(obj.values())) != len(obj):
        raise InputError(f"{path}: token ids are not unique")
    for special in (PAD, CLS):
        if special not in obj:
            raise InputError(f"{path}: no '{special}' token")
    return obj


def normalise_ids(ids) -> np.ndarray:
    return np.array([_VERSION.sub("", str(g).strip().upper()) for g in ids], dtype=object)


def map_genes(ids, vocab: dict, where: str, min_fraction: float = 0.5) -> np.ndarray:
    """Vocabulary id of every gene (-1 when not in the vocabulary); InputError if too few are known."""
    norm = normalise_ids(ids)
    out = np.array([vocab.get(g, -1) if not g.startswith("<") else -1 for g in norm], dtype=np.int64)
    known = out >= 0
    if not known.any():
        raise InputError(
            f"{where}: none of the {len(norm)} Ensembl ids (e.g. '{norm[0] if len(norm) else ''}') is in the Tahoe "
            "vocab.json; Tahoe-x1 needs human Ensembl gene ids in var"
        )
    if known.mean() < min_fraction:
        missing = norm[~known]
        raise InputError(
            f"{where}: only {int(known.sum())} of {len(norm)} Ensembl ids are in the Tahoe vocab.json "
            f"(e.g. '{missing[0]}' is not); below min_vocab_fraction {min_fraction}"
        )
    return out


@dataclass
class PreparedCells:
    """Variable-length token sequences of all cells, flat: cell i is [offsets[i], offsets[i + 1])."""

    genes: np.ndarray  # int64 vocab ids, `<cls>` first in every cell
    values: np.ndarray  # float32 binned expression (pad_value for `<cls>`)
    offsets: np.ndarray  # (n_cells + 1,)
    n_expressed: np.ndarray  # in-vocab expressed genes per cell before the length limit

    @property
    def n_cells(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def batch(self, lo: int, hi: int, pad_token_id: int, pad_value: float):
        """Padded (genes, values) of cells lo..hi-1, as tahoe's collator pads them (to the longest)."""
        lengths = self.lengths[lo:hi]
        width = int(lengths.max()) if len(lengths) else 0
        genes = np.full((hi - lo, width), pad_token_id, dtype=np.int64)
        values = np.full((hi - lo, width), pad_value, dtype=np.float32)
        mask = np.arange(width)[None, :] < lengths[:, None]
        s, e = self.offsets[lo], self.offsets[hi]
        genes[mask] = self.genes[s:e]
        values[mask] = self.values[s:e]
        return genes, values


def bin_cells(values: np.ndarray, offsets: np.ndarray, n_bins: int, right: bool = False) -> np.ndarray:
    """tahoe-x1's `binning` of every cell's (positive) counts, cells of equal length in one torch call."""
    import torch

    out = np.zeros(values.shape, dtype=np.float32)
    lengths = np.diff(offsets)
    grades = torch.linspace(0, 1, n_bins - 1, dtype=torch.float32)
    for length in np.unique(lengths[lengths > 0]):
        cells = np.flatnonzero(lengths == length)
        idx = offsets[cells][:, None] + np.arange(length)[None, :]
        rows = torch.as_tensor(values[idx], dtype=torch.float32)  # (n, length)
        edges = torch.quantile(rows, grades, dim=1).T.contiguous()  # (n, n_bins - 1)
        digits = torch.searchsorted(edges, rows.contiguous(), right=right)
        if not right:
            digits = digits + 1  # tahoe: left-sided bins are shifted to 1..n_bins-1
        out[idx] = digits.numpy().astype(np.float32)
    return out


def prepare_cells(
    counts,
    vocab_ids: np.ndarray,
    *,
    cls_id: int,
    pad_value: float = -2,
    max_length: int = 1024,
    num_bins: int = 51,
    do_binning: bool = True,
    right_binning: bool = False,
    keep_first_n_tokens: int = 1,
    seed: int = 0,
) -> PreparedCells:
    """Tahoe-x1 token sequences for every row of `counts` (cells x genes, raw counts)."""
    if keep_first_n_tokens != 1:
        raise InputError(f"keep_first_n_tokens {keep_first_n_tokens} is not supported (chemical tokens are not used at inference)")
    if max_length < 2:
        raise InputError(f"max_length {max_length} leaves no room for genes after <cls>")
    known = np.flatnonzero(np.asarray(vocab_ids) >= 0)
    csr = sp.csr_matrix(counts)[:, known].tocsr()
    csr.eliminate_zeros()
    csr.sort_indices()
    if csr.data.size and (csr.data.min() < 0 or not np.all(np.isfinite(csr.data))):
        raise InputError("counts must be finite and non-negative")
    gene_ids = np.asarray(vocab_ids)[known][csr.indices]
    nnz = np.diff(csr.indptr)
    n = len(nnz)
    values = csr.data.astype(np.float32)
    if do_binning:
        values = bin_cells(values, csr.indptr, num_bins, right_binning)

    # cells that are too long keep <cls> and a seeded sample of the rest, in randperm order (a loop
    # over the long cells only; every other cell keeps its genes in column order)
    keep_len = np.minimum(nnz, max_length - 1)
    chunks, prev = [], 0
    for i in np.flatnonzero(nnz > max_length - 1):
        pick = np.random.default_rng([seed, int(i)]).permutation(int(nnz[i]))[: max_length - 1]
        chunks += [np.arange(csr.indptr[prev], csr.indptr[i]), csr.indptr[i] + pick]
        prev = i + 1
    chunks.append(np.arange(csr.indptr[prev], csr.indptr[n]))
    order_src = np.concatenate(chunks).astype(np.int64)

    lengths = keep_len + 1
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    genes = np.empty(offsets[-1], dtype=np.int64)
    vals = np.empty(offsets[-1], dtype=np.float32)
    first = offsets[:-1]
    genes[first] = cls_id
    vals[first] = pad_value
    body = np.ones(offsets[-1], dtype=bool)
    body[first] = False
    genes[body] = gene_ids[order_src]
    vals[body] = values[order_src]
    return PreparedCells(genes, vals, offsets, nnz)
