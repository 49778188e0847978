"""Tahoe-x1 inputs (ours, tested without the model) and the model call (only where tahoe-x1 imports).

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

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from tissuelens.errors import InputError
from tissuelens.io import read_json

log = logging.getLogger(__name__)
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


# -- the model call (tahoe-x1 environment only) ---------------------------------------------------


def attention_impl() -> str:
    """`flash` when flash-attn imports and a GPU is visible, else llm-foundry's torch attention."""
    import importlib.util

    import torch

    return "flash" if importlib.util.find_spec("flash_attn") is not None and torch.cuda.is_available() else "torch"


def embed_cells(model, prepared: PreparedCells, *, pad_token_id: int, pad_value: float, layers, device,
                batch_size: int = 16, precision: str = "amp_bf16", on_tokens=None, progress: bool = True) -> np.ndarray:
    """L2-normalised `cell_emb` of every cell from a loaded `ComposerTX` (tahoe's get_batch_embeddings),
    with forward hooks on `model.model.transformer_encoder.layers[i]` feeding `on_tokens(lo, hi, genes,
    {layer: (b, seq, d) tensor})`."""
    import torch

    from tissuelens.progress import Progress

    dtype = {"fp32": torch.float32, "amp_bf16": torch.bfloat16, "amp_fp16": torch.float16, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    blocks = model.model.transformer_encoder.layers
    captured = {}
    handles = []
    for i in layers:
        def hook(module, inputs, output, i=i):
            captured[i] = output[0] if isinstance(output, tuple) else output
        handles.append(blocks[i].register_forward_hook(hook))
    out = []
    try:
        with torch.no_grad(), torch.amp.autocast(device_type=device.type, dtype=dtype, enabled=dtype != torch.float32):
            bar = Progress(prepared.n_cells, "Tahoe-x1", unit="cells", logger=log, enabled=progress)
            for lo in range(0, prepared.n_cells, batch_size):
                hi = min(prepared.n_cells, lo + batch_size)
                genes, values = prepared.batch(lo, hi, pad_token_id, pad_value)
                g = torch.as_tensor(genes, device=device)
                res = model.model(genes=g, values=torch.as_tensor(values, device=device),
                                  gen_masks=torch.zeros_like(g, dtype=torch.bool), key_padding_mask=~g.eq(pad_token_id),
                                  skip_decoders=True)
                out.append(res["cell_emb"].float().cpu().numpy())
                if on_tokens is not None:
                    on_tokens(lo, hi, genes, {i: t.float().cpu() for i, t in captured.items()})
                bar.update(hi - lo)
    finally:
        for h in handles:
            h.remove()
    emb = np.concatenate(out)
    norm = np.linalg.norm(emb, axis=1, keepdims=True)
    return emb / np.where(norm > 0, norm, 1.0)


# -- the whole step ------------------------------------------------------------------------------

DEFAULTS = {
    "gene_id_key": "gene_ids",
    "counts_layer": "counts",
    "max_length": 2048,
    "min_vocab_fraction": 0.5,
    "batch_size": 16,
    "layers": [-1],
    "precision": "amp_bf16",
    "attn_impl": None,
    "device": "auto",
    "progress": True,
}


def prepare_dataset(adata, ckpt, settings: dict, *, seed: int, where: str):
    """(PreparedCells, token index DataFrame, settings) for a preprocessed AnnData; no model needed."""
    import pandas as pd

    s = dict(DEFAULTS)
    s.update({k: v for k, v in (settings or {}).items() if k in DEFAULTS})
    if s["gene_id_key"] not in adata.var:
        raise InputError(f"{where}: var has no column '{s['gene_id_key']}' with Ensembl ids (Tahoe-x1's vocabulary is Ensembl ids)")
    counts = adata.layers[s["counts_layer"]] if s["counts_layer"] in adata.layers else None
    if counts is None:
        raise InputError(f"{where}: layers['{s['counts_layer']}'] with raw counts is missing (Tahoe-x1 bins raw counts)")
    vocab_ids = map_genes(adata.var[s["gene_id_key"]].to_numpy(), ckpt.vocab, where, float(s["min_vocab_fraction"]))
    prepared = prepare_cells(
        counts, vocab_ids, cls_id=ckpt.vocab[CLS], pad_value=float(ckpt.collator("pad_value")),
        max_length=min(int(s["max_length"]), int(ckpt.model_config.get("max_seq_len", s["max_length"]))),
        num_bins=int(ckpt.collator("num_bins")), do_binning=bool(ckpt.collator("do_binning")),
        right_binning=bool(ckpt.collator("right_binning")), keep_first_n_tokens=int(ckpt.collator("keep_first_n_tokens")), seed=seed,
    )
    id_to_token = np.empty(max(ckpt.vocab.values()) + 1, dtype=object)
    for tok, i in ckpt.vocab.items():
        id_to_token[i] = tok
    cell = np.repeat(np.arange(prepared.n_cells), prepared.lengths)
    position = np.arange(cell.size) - prepared.offsets[:-1][cell]
    index = pd.DataFrame({"cell": cell, "obs_name": np.asarray(adata.obs_names)[cell], "gene": id_to_token[prepared.genes], "position": position})
    return prepared, index, s


def embed_dataset(adata, ckpt, settings: dict, *, model_name: str, seed: int, where: str, activations_dir=None):
    """Tahoe-x1 cell embeddings and per-layer token activations; returns (embeddings AnnData, metrics)."""
    import anndata as ad

    from tissuelens.device import resolve_device
    from tissuelens.embed.activations import ActivationWriter

    prepared, index, s = prepare_dataset(adata, ckpt, settings, seed=seed, where=where)
    layers = sorted({int(k) + ckpt.n_layers if int(k) < 0 else int(k) for k in s["layers"]})
    if any(not 0 <= k < ckpt.n_layers for k in layers):
        raise InputError(f"{where}: embed.tahoe.layers {s['layers']} out of range; the model has {ckpt.n_layers} layers")
    device = resolve_device(s["device"])
    model = ckpt.load_model(device, s["attn_impl"])
    meta = {"model": model_name, "kind": "tahoe", "untrained": ckpt.untrained,
            "checkpoint": {k: v for k, v in ckpt.describe().items() if k != "path"}, "activations": "tokens",
            "source": "encoder blocks (model.transformer_encoder.layers[k])"}
    writer = ActivationWriter(activations_dir, layers, ckpt.d_model, index, meta) if activations_dir is not None else None
    pad_id = int(ckpt.collator("pad_token_id"))

    def on_tokens(lo, hi, genes, outputs):
        keep = genes != pad_id
        rows = slice(int(prepared.offsets[lo]), int(prepared.offsets[hi]))
        for k in layers:
            writer.write(k, rows, outputs[k].numpy()[keep])

    emb = embed_cells(model, prepared, pad_token_id=pad_id, pad_value=float(ckpt.collator("pad_value")), layers=layers,
                      device=device, batch_size=int(s["batch_size"]), precision=s["precision"],
                      on_tokens=on_tokens if writer else None, progress=bool(s["progress"]))
    if writer is not None:
        writer.close()
    out = ad.AnnData(obs=adata.obs.copy())
    out.obsm[f"X_{model_name}"] = emb.astype(np.float32)
    out.obsm["X_tahoe"] = emb.astype(np.float32)
    if "spatial" in adata.obsm:
        out.obsm["spatial"] = np.asarray(adata.obsm["spatial"])
    out.obs["tahoe_n_tokens"] = prepared.lengths.astype(np.int32)
    metrics = {"model": model_name, "kind": "tahoe", "untrained": ckpt.untrained, "checkpoint": meta["checkpoint"],
               "n_cells": int(prepared.n_cells), "genes_in_vocab": int(index["gene"].nunique()) - 1,
               "tokens_per_cell": {"mean": float(prepared.lengths.mean()), "max": int(prepared.lengths.max())},
               "sampled_cells": int((prepared.n_expressed > prepared.lengths - 1).sum())}
    return out, metrics
