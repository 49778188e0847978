"""OmiCLIP's encoders on spots: gene sentences through the text encoder, H&E patches through the image encoder.

* Text: each spot's gene sentence (`sentences`) through the CoCa text encoder (`model.encode_text`,
  L2-normalised), as `loki.utils.encode_text_df` does, batched. The CLIP BPE tokenizer lower-cases and
  splits symbols into several tokens and keeps the first `context_length - 2` of them, so only a
  sentence's first genes reach the model: `text_positions` counts, per spot, the genes whose tokens all fit
  (`context_report`: the same for curated cell-type sentences).
* Image: each spot's patch (`patches`) through the model's own eval transform (which resizes it to the
  model's input) and `model.encode_image`, L2-normalised, as `loki.utils.encode_image` does, batched.
* Activations for the SAE stage: the text encoder's token outputs at chosen blocks (forward hooks on
  `model.text.transformer.resblocks[i]`; each BPE token is attributed to its gene, plus
  `<start_of_text>`, `<end_of_text>` and CoCa's appended `<cls>`: `token_index`).

Imported by the Loki stack (Python 3.9): numpy, torch, PIL, tqdm only.
"""

from __future__ import annotations

import logging

import numpy as np

from tissuelens.embed.loki.patches import crop_patches, pad_image
from tissuelens.errors import InputError
from tissuelens.progress import Progress

log = logging.getLogger(__name__)
SOT, EOT, CLS = "<start_of_text>", "<end_of_text>", "<cls>"


def gene_token_lengths(tokenizer, symbols) -> np.ndarray:
    """Number of BPE tokens of each symbol (one tokenizer call per gene, not per spot)."""
    out = np.zeros(len(symbols), dtype=np.int64)
    encode = getattr(tokenizer, "encode", None)
    for j, s in enumerate(symbols):
        if encode is not None:
            out[j] = len(encode(str(s)))
        else:  # tokenizers without .encode: count the non-pad tokens between start and end
            ids = tokenizer([str(s)])[0]
            out[j] = int((ids != 0).sum()) - 2
    return out


def text_positions(gene_idx: np.ndarray, token_len: np.ndarray, context_length: int):
    """Per spot: text tokens kept, genes fully in context, and the gene of every kept text token.

    open_clip's tokenizer writes <start_of_text>, the sentence's BPE tokens cut to `context_length - 2`,
    and <end_of_text>. Returns (n_text (n,), genes_in_context (n,), token_gene (flat gene indices of the
    kept text tokens, spot-major), token_offset (n + 1,) offsets into token_gene).
    """
    budget = context_length - 2
    lens = token_len[gene_idx]  # (n, k)
    cum = np.cumsum(lens, axis=1)
    total = cum[:, -1] if cum.shape[1] else np.zeros(len(gene_idx), dtype=np.int64)
    n_text = np.minimum(total, budget)
    in_context = (cum <= budget).sum(axis=1)
    flat_gene = np.repeat(gene_idx.ravel(), lens.ravel())
    spot_of = np.repeat(np.arange(len(gene_idx)), total)
    start = np.concatenate([[0], np.cumsum(total)[:-1]]) if len(total) else np.zeros(0, dtype=np.int64)
    within = np.arange(flat_gene.size) - start[spot_of]
    keep = within < n_text[spot_of]
    offsets = np.concatenate([[0], np.cumsum(n_text)])
    return n_text, in_context, flat_gene[keep], offsets


def context_report(sentences: dict, tokenizer, context_length: int) -> dict:
    """Per type: the sentence's genes (words) in order, how many reach the model (open_clip keeps
    context_length - 2 BPE tokens) and the ones cut."""
    out = {}
    for t, sentence in sentences.items():
        words = np.asarray(sentence.split(), dtype=object)
        lens = gene_token_lengths(tokenizer, words) if len(words) else np.zeros(0, dtype=np.int64)
        n = int((np.cumsum(lens) <= context_length - 2).sum())
        out[t] = {"genes": [str(w) for w in words], "genes_in_context": n, "cut": [str(w) for w in words[n:]]}
    return out


def token_index(n_text: np.ndarray, token_gene: np.ndarray, gene_ids: np.ndarray, obs_names: np.ndarray, ctx: int):
    """One row per exported text token: per spot <start_of_text>, the gene of each kept BPE token,
    <end_of_text>, then CoCa's appended <cls> (position `ctx`)."""
    import pandas as pd

    per_spot = n_text + 3
    cell = np.repeat(np.arange(len(n_text)), per_spot)
    start = np.concatenate([[0], np.cumsum(per_spot)[:-1]])
    within = np.arange(cell.size) - start[cell]
    nt = n_text[cell]
    genes = np.empty(cell.size, dtype=object)
    genes[(within >= 1) & (within <= nt)] = np.asarray(gene_ids, dtype=object)[token_gene]
    genes[within == 0] = SOT
    genes[within == nt + 1] = EOT
    genes[within == nt + 2] = CLS
    position = np.where(within == nt + 2, ctx, within)
    return pd.DataFrame({"cell": cell, "obs_name": obs_names[cell], "gene": genes, "position": position})


def resolve_layers(layers, n_layers: int, where: str) -> list:
    out = []
    for k in layers:
        k = int(k)
        j = k + n_layers if k < 0 else k
        if not 0 <= j < n_layers:
            raise InputError(f"{where}: layer {k} out of range; the text encoder has {n_layers} blocks")
        out.append(j)
    return sorted(set(out))


def _batches(n: int, size: int):
    for lo in range(0, n, size):
        yield lo, min(n, lo + size)


class TextTokenHooks:
    """Forward hooks on text-encoder blocks that keep each block's (batch, seq, width) output."""

    def __init__(self, model, layers: list[int]):
        blocks = model.text.transformer.resblocks
        self.batch_first = bool(getattr(model.text.transformer, "batch_first", False))
        self.outputs = {}
        self.handles = [blocks[i].register_forward_hook(self._hook(i)) for i in layers]

    def _hook(self, i):
        def hook(module, inputs, output):
            out = output[0] if isinstance(output, tuple) else output
            self.outputs[i] = out if self.batch_first else out.transpose(0, 1)

        return hook

    def remove(self):
        for h in self.handles:
            h.remove()


def encode_texts(model, tokenizer, sentences, *, device, batch_size: int = 64, layers=None, on_tokens=None, progress=True) -> np.ndarray:
    """L2-normalised text embeddings (n, embed_dim) float32. With `layers`, `on_tokens(lo, hi, tokens,
    {layer: (b, seq, width) float tensor})` receives the block outputs of every batch."""
    import torch

    hooks = TextTokenHooks(model, list(layers)) if layers else None
    out = []
    bar = Progress(len(sentences), "Loki text", unit="spots", logger=log, enabled=progress)
    try:
        with torch.no_grad():
            for lo, hi in _batches(len(sentences), batch_size):
                tokens = tokenizer([str(s) for s in sentences[lo:hi]]).to(device)
                emb = model.encode_text(tokens, normalize=True)
                out.append(emb.float().cpu().numpy())
                if hooks is not None and on_tokens is not None:
                    on_tokens(lo, hi, tokens.cpu().numpy(), {i: t.float().cpu() for i, t in hooks.outputs.items()})
                bar.update(hi - lo)
    finally:
        if hooks is not None:
            hooks.remove()
    return np.concatenate(out) if out else np.zeros((0, 0), dtype=np.float32)


def encode_images(model, preprocess, image: np.ndarray, x0, y0, side: int, *, device, batch_size: int = 64, progress=True) -> np.ndarray:
    """L2-normalised image embeddings (n, embed_dim) of the spots' patches, cropped batch by batch."""
    import torch
    from PIL import Image

    padded = pad_image(image, side)
    out = []
    bar = Progress(len(x0), "Loki image", unit="spots", logger=log, enabled=progress)
    with torch.no_grad():
        for lo, hi in _batches(len(x0), batch_size):
            crops = crop_patches(padded, side, x0[lo:hi], y0[lo:hi], side)
            batch = torch.stack([preprocess(Image.fromarray(c)) for c in crops]).to(device)
            out.append(model.encode_image(batch, normalize=True).float().cpu().numpy())
            bar.update(hi - lo)
    return np.concatenate(out) if out else np.zeros((0, 0), dtype=np.float32)
