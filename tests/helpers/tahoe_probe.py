"""Run inside the Tahoe stack (workflow/envs/tahoe_cpu.yaml) by tests/test_tahoe_model.py; prints one JSON object.

    python tahoe_probe.py padding WORKDIR   # padded batches vs each cell alone, per cell_emb_style
    python tahoe_probe.py upstream WORKDIR  # tahoe-x1's own encoder forward on the CPU (what fails)

A tiny random ComposerTX (2 layers, d_model 32) is built with tissuelens.models.tahoe.build_random and
loaded back through load_checkpoint / load_model, the loader of a Hub checkpoint.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

from tissuelens.embed.tahoe.encode import embed_cells
from tissuelens.embed.tahoe.prepare import prepare_cells
from tissuelens.models.tahoe import build_random, load_checkpoint

N_GENES = 60
LAYERS = [0, 1]


def tiny(workdir: Path, style: str):
    path = build_random(workdir / f"model-{style}", [f"ENSG{i:011d}" for i in range(N_GENES)], n_layers=2, d_model=32,
                        n_heads=2, expansion_ratio=2, cell_emb_style=style, seed=0)
    return load_checkpoint(path)


def cells(ckpt):
    """12 cells of 12 different lengths (3, 7, ... 47 expressed genes), seeded counts."""
    rng = np.random.default_rng(0)
    dense = np.zeros((12, N_GENES))
    for i in range(12):
        dense[i, rng.choice(N_GENES, 3 + 4 * i, replace=False)] = rng.integers(1, 30, 3 + 4 * i)
    ids = np.array([ckpt.vocab[f"ENSG{i:011d}"] for i in range(N_GENES)])
    order = rng.permutation(12)  # lengths shuffled, so every batch pads
    return prepare_cells(sp.csr_matrix(dense[order]), ids, cls_id=ckpt.vocab["<cls>"], max_length=64)


def run(model, prepared, batch_size):
    tokens = {k: np.zeros((prepared.offsets[-1], 32), dtype=np.float32) for k in LAYERS}

    def on_tokens(lo, hi, genes, outputs):
        keep = genes != 0
        for k in LAYERS:
            tokens[k][prepared.offsets[lo]:prepared.offsets[hi]] = outputs[k].numpy()[keep]

    emb = embed_cells(model, prepared, pad_token_id=0, pad_value=-2, layers=LAYERS, device=torch.device("cpu"),
                      batch_size=batch_size, precision="fp32", on_tokens=on_tokens, progress=False)
    return emb, tokens


def padding(workdir: Path) -> dict:
    out = {}
    for style in ("cls", "avg-pool"):
        ckpt = tiny(workdir, style)
        model = ckpt.load_model(torch.device("cpu"), "torch")
        prepared = cells(ckpt)
        alone, alone_tok = run(model, prepared, 1)
        batched, batched_tok = run(model, prepared, 12)
        # the same padded batch with the padding left unmasked (key_padding_mask all True)
        genes, values = prepared.batch(0, 12, 0, -2)
        g = torch.as_tensor(genes)
        with torch.no_grad():
            res = model.model(genes=g, values=torch.as_tensor(values), gen_masks=torch.zeros_like(g, dtype=torch.bool),
                              key_padding_mask=torch.ones_like(g, dtype=torch.bool), skip_decoders=True)
        raw = res["cell_emb"].numpy()
        unmasked = raw / np.linalg.norm(raw, axis=1, keepdims=True)
        out[style] = {
            "lengths": prepared.lengths.tolist(),
            "max_diff": float(np.abs(batched - alone).max()),
            "token_max_diff": float(max(np.abs(batched_tok[k] - alone_tok[k]).max() for k in LAYERS)),
            "unmasked_max_diff": float(np.abs(unmasked - alone).max()),
            "norms": np.linalg.norm(batched, axis=1).tolist(),
            "spread": float(np.abs(alone - alone.mean(axis=0)).max()),  # cells differ from each other
            "d_model": ckpt.d_model, "n_layers": ckpt.n_layers, "weights": ckpt.weights.name,
        }
    return out


def upstream(workdir: Path) -> dict:
    """tahoe-x1's TXEncoder.forward itself with torch attention (no flash-attn here), both mask settings."""
    from omegaconf import OmegaConf as om
    from tahoe_x1.model import ComposerTX

    ckpt = tiny(workdir, "cls")
    prepared = cells(ckpt)
    genes, values = prepared.batch(0, 5, 0, -2)
    g = torch.as_tensor(genes)
    out = {}
    for use_mask in (True, False):
        cfg = om.create(ckpt.model_config)
        cfg["attn_config"].update(attn_impl="torch", use_attn_mask=use_mask)
        model = ComposerTX(model_config=cfg, collator_config=om.create(ckpt.collator_config)).eval()
        try:
            with torch.no_grad():
                model.model(genes=g, values=torch.as_tensor(values), gen_masks=torch.zeros_like(g, dtype=torch.bool),
                            key_padding_mask=~g.eq(0), skip_decoders=True)
            out[str(use_mask)] = "ok"
        except Exception as exc:  # noqa: BLE001 (the failure is the finding)
            out[str(use_mask)] = f"{type(exc).__name__}: {exc}"
    return out


if __name__ == "__main__":
    what, workdir = sys.argv[1], Path(sys.argv[2])
    print(json.dumps({"padding": padding, "upstream": upstream}[what](workdir)))
