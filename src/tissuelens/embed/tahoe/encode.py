"""The Tahoe-x1 model call (only where tahoe-x1 imports): cell embeddings and per-layer token outputs of a
loaded `ComposerTX`, and which attention implementation this machine supports.
"""

from __future__ import annotations

import logging

import numpy as np

from tissuelens.embed.tahoe.prepare import PreparedCells

log = logging.getLogger(__name__)


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
