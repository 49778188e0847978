"""What embed_tahoe.py calls: `embed_dataset` (Tahoe-x1 cell embeddings and token activations of a preprocessed
AnnData) and `prepare_dataset` (its tokenised cells and token index, no model needed).

Runs in the Tahoe stack: heavy imports inside functions.
"""

from __future__ import annotations

import numpy as np

from tissuelens.embed.tahoe.encode import embed_cells
from tissuelens.embed.tahoe.prepare import CLS, map_genes, prepare_cells
from tissuelens.errors import InputError


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
