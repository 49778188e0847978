"""Geneformer cell embeddings and token activations (EmbExtractor semantics, our implementation).

* Layer: `emb_layer` as in Geneformer's EmbExtractor, an offset from the number of layers into
  `hidden_states` (n_layers + 1 entries, 0 = embedding output): -1 (default) = output of the
  second-to-last encoder layer, 0 = last layer, -n_layers = the embedding output.
* Pooling: `cls` = the `<cls>` token's state (V2 only); `mean` (EmbExtractor's "cell") = mean over the
  gene tokens, `<cls>`/`<eos>`/padding excluded.
* Every cell is returned in input order. Batches are sorted by length (descending) to minimise padding;
  padding is masked. Cells without a known gene get NaN rows (they are reported, not dropped).
* CUDA runs under bf16 (or fp16) autocast, CPU in fp32, unless `precision` says otherwise. Only the
  encoder layers up to the deepest one requested are run (the MLM head never is).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd

from tissuelens.errors import InputError

log = logging.getLogger(__name__)


def hidden_index(emb_layer: int, n_layers: int, what: str = "layer") -> int:
    """Geneformer's `emb_layer` (<= 0) -> index into hidden_states; InputError when out of range."""
    if not -n_layers <= emb_layer <= 0:
        raise InputError(
            f"embed.{what}: {emb_layer} is out of range for a {n_layers}-layer model "
            f"(valid: -{n_layers}..0; -1 = second-to-last layer, 0 = last layer)"
        )
    return n_layers + emb_layer


def pooling_mode(pooling: str, special_tokens: bool) -> str:
    if pooling == "auto":
        return "cls" if special_tokens else "mean"
    if pooling == "cls" and not special_tokens:
        raise InputError("embed.pooling: 'cls' needs a V2 checkpoint with a <cls> token; this one is V1 (use mean)")
    if pooling not in ("cls", "mean"):
        raise InputError(f"embed.pooling: '{pooling}' is not one of auto, cls, mean")
    return pooling


def autocast_dtype(precision: str, device):
    import torch

    if precision == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


class Encoder:
    """A loaded Geneformer run up to a chosen depth; returns hidden states as float32 tensors."""

    def __init__(self, ckpt, device, precision: str = "auto", upto: int | None = None):
        import torch

        self.ckpt = ckpt
        self.device = device
        self.autocast = autocast_dtype(precision, device)
        model = ckpt.load_model(device)
        self.bert = model.bert
        upto = ckpt.n_layers if upto is None else upto
        if upto < ckpt.n_layers:  # later layers cannot change earlier hidden states
            self.bert.encoder.layer = torch.nn.ModuleList(list(self.bert.encoder.layer)[: max(upto, 1)])
        self.pad_id = ckpt.pad_id
        self.special = [t for t in (ckpt.cls_id, ckpt.eos_id, ckpt.pad_id) if t is not None]

    def pad(self, seqs: list[np.ndarray]):
        import torch

        width = max(len(s) for s in seqs)
        ids = np.full((len(seqs), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(seqs), width), dtype=np.int64)
        for r, s in enumerate(seqs):
            ids[r, : len(s)] = s
            mask[r, : len(s)] = 1
        return torch.from_numpy(ids).to(self.device), torch.from_numpy(mask).to(self.device)

    def hidden_states(self, ids, mask):
        import torch

        with torch.inference_mode():
            if self.autocast is not None:
                with torch.autocast(self.device.type, dtype=self.autocast):
                    out = self.bert(input_ids=ids, attention_mask=mask, output_hidden_states=True)
            else:
                out = self.bert(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        return [h.float() for h in out.hidden_states]

    def gene_mask(self, ids):
        import torch

        keep = torch.ones_like(ids, dtype=torch.bool)
        for t in self.special:
            keep &= ids != t
        return keep


def pool(hidden, ids, encoder: Encoder, mode: str, exclude=None):
    """Cell embeddings (batch, d) from one hidden-state tensor; `exclude` (bool, like ids) drops positions."""
    if mode == "cls":
        return hidden[:, 0, :]
    keep = encoder.gene_mask(ids)
    if exclude is not None:
        keep &= ~exclude
    w = keep.to(hidden.dtype).unsqueeze(-1)
    return (hidden * w).sum(1) / w.sum(1).clamp(min=1)


def length_batches(lengths: np.ndarray, cells: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Cells grouped into batches of similar length (longest first)."""
    order = cells[np.argsort(-lengths[cells], kind="stable")]
    return [order[i : i + batch_size] for i in range(0, order.size, batch_size)]


@dataclass
class ActivationPlan:
    """Which cells and token positions to export, and where each lands in the activation files."""

    cells: np.ndarray  # sorted cell indices
    n_tokens: np.ndarray  # tokens exported per planned cell
    row_start: np.ndarray  # first activation row of each planned cell
    layers: list[int]  # hidden_states indices

    @classmethod
    def make(cls, tokens, layers: list[int], max_cells: int | None, max_tokens_per_cell: int | None, seed: int):
        eligible = np.flatnonzero(tokens.n_genes > 0)
        if max_cells is not None and eligible.size > max_cells:
            eligible = np.sort(np.random.default_rng(seed).choice(eligible, size=max_cells, replace=False))
        lengths = tokens.lengths[eligible]
        n_tok = lengths if max_tokens_per_cell is None else np.minimum(lengths, max_tokens_per_cell)
        start = np.concatenate([[0], np.cumsum(n_tok)[:-1]]).astype(np.int64)
        return cls(eligible, n_tok.astype(np.int64), start, sorted(set(layers)))

    def index(self, tokens, obs_names, id_to_name: dict[int, str]) -> pd.DataFrame:
        cell = np.repeat(self.cells, self.n_tokens)
        position = np.concatenate([np.arange(n) for n in self.n_tokens]) if self.cells.size else np.empty(0, int)
        ids = np.concatenate([tokens.cell(c)[:n] for c, n in zip(self.cells, self.n_tokens)]) if self.cells.size else np.empty(0, int)
        names = pd.Series(ids).map(id_to_name).to_numpy()
        return pd.DataFrame({"cell": cell, "obs_name": np.asarray(obs_names)[cell], "gene": names, "position": position})


def embed_cells(
    encoder: Encoder,
    tokens,
    *,
    layer: int,
    pooling: str,
    batch_size: int,
    cells: np.ndarray | None = None,
    plan: ActivationPlan | None = None,
    writer=None,
    progress: bool = True,
) -> np.ndarray:
    """Embeddings (n_cells, d_model) float32 in input order; NaN rows for cells without genes or not in `cells`."""
    from tissuelens.progress import Progress

    n = tokens.n_cells
    d = encoder.ckpt.d_model
    emb = np.full((n, d), np.nan, dtype=np.float32)
    run = np.arange(n) if cells is None else np.asarray(cells)
    run = run[tokens.n_genes[run] > 0]
    planned = {} if plan is None else {int(c): i for i, c in enumerate(plan.cells)}
    batches = length_batches(tokens.lengths, run, batch_size)
    bar = Progress(len(run), "Geneformer", unit="cells", logger=log, enabled=progress)
    for batch in batches:
        ids, mask = encoder.pad([tokens.cell(c) for c in batch])
        hs = encoder.hidden_states(ids, mask)
        emb[batch] = pool(hs[layer], ids, encoder, pooling).cpu().numpy()
        rows = [(r, planned[int(c)]) for r, c in enumerate(batch) if int(c) in planned] if writer is not None else []
        if rows:
            width = int(max(plan.n_tokens[j] for _, j in rows))
            for lay in plan.layers:
                block = hs[lay][:, :width].half().cpu().numpy()  # one transfer per layer and batch
                for r, j in rows:
                    k, start = int(plan.n_tokens[j]), int(plan.row_start[j])
                    writer.write(lay, slice(start, start + k), block[r, :k])
        del hs
        bar.update(len(batch))
    return emb
