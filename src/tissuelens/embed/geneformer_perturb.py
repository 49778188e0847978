"""In-silico perturbation with Geneformer (InSilicoPerturber semantics, our implementation).

* `delete`: remove the gene's token (cells that do not express the gene are skipped);
* `overexpress`: move the token to the front (position 0 in V1, right after `<cls>` in V2); a gene the
  cell does not express is inserted there and the sequence truncated to the input size (`<eos>` kept last).

Per cell, the original and perturbed cell embeddings are compared on the unperturbed genes only: with
mean pooling both means run over the genes present in both sequences, the perturbed gene excluded
(with `cls` pooling the `<cls>` states are compared). Reported: cosine similarity, and when a goal
group is given, the cosine shift toward the goal state = cos(perturbed, goal) - cos(original, goal),
goal = mean embedding of the goal group's cells. Each cell also gets a control: the same perturbation
of one random other gene it expresses (seeded). Per gene, a Wilcoxon rank-sum test of the gene's
effects (1 - cosine, or the shift) against the controls', with Benjamini-Hochberg FDR across rows.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from tissuelens.embed.geneformer_extract import Encoder, pool
from tissuelens.errors import InputError

TYPES = ("delete", "overexpress")


def perturb_sequence(seq: np.ndarray, token: int, kind: str, special: bool, max_len: int) -> np.ndarray | None:
    """The perturbed token sequence, or None when a deletion targets a gene the cell lacks."""
    seq = np.asarray(seq)
    front = 1 if special else 0
    present = np.flatnonzero(seq == token)
    if kind == "delete":
        return None if present.size == 0 else np.delete(seq, present)
    if kind != "overexpress":
        raise InputError(f"perturbation type '{kind}' is not one of {', '.join(TYPES)}")
    rest = np.delete(seq, present)
    out = np.concatenate([rest[:front], [token], rest[front:]])
    if out.size > max_len:
        if special:  # drop the last gene, keep <eos> last
            out = np.concatenate([out[: max_len - 1], out[-1:]])
        else:
            out = out[:max_len]
    return out.astype(seq.dtype)


def _aligned_embeddings(encoder: Encoder, layer: int, mode: str, originals, perturbed, token_per_pair):
    """Original and perturbed embeddings of each pair, compared on shared unperturbed genes."""
    import torch

    n = len(originals)
    ids, mask = encoder.pad(list(originals) + list(perturbed))
    hs = encoder.hidden_states(ids, mask)[layer]
    exclude = torch.zeros_like(ids, dtype=torch.bool)
    if mode == "mean":
        for i in range(n):
            shared = np.intersect1d(originals[i], perturbed[i])
            shared = shared[shared != token_per_pair[i]]
            for row, seq in ((i, originals[i]), (n + i, perturbed[i])):
                drop = ~np.isin(seq, shared)
                exclude[row, : len(seq)] = torch.from_numpy(drop)
    emb = pool(hs, ids, encoder, mode, exclude=exclude).cpu().numpy()
    return emb[:n], emb[n:]


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    na, nb = np.linalg.norm(a, axis=-1), np.linalg.norm(b, axis=-1)
    return (a * b).sum(-1) / np.maximum(na * nb, 1e-12)


def perturb_cells(
    encoder: Encoder,
    tokens,
    cells: np.ndarray,
    gene_token: int,
    kind: str,
    *,
    layer: int,
    mode: str,
    max_len: int,
    batch_size: int = 32,
    goal: np.ndarray | None = None,
) -> pd.DataFrame:
    """One row per perturbed cell: cell, cos_sim (and shift toward `goal` when given)."""
    pairs = []
    for c in cells:
        seq = tokens.cell(int(c))
        new = perturb_sequence(seq, gene_token, kind, tokens.special_tokens, max_len)
        if new is not None:
            pairs.append((int(c), seq, new))
    rows = []
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        orig, pert = _aligned_embeddings(encoder, layer, mode, [p[1] for p in chunk], [p[2] for p in chunk], [gene_token] * len(chunk))
        cos = _cos(orig, pert)
        shift = _cos(pert, goal[None]) - _cos(orig, goal[None]) if goal is not None else np.full(len(chunk), np.nan)
        rows += [{"cell": c, "cos_sim": float(s), "shift": float(h)} for (c, _, _), s, h in zip(chunk, cos, shift)]
    return pd.DataFrame(rows, columns=["cell", "cos_sim", "shift"])


def random_controls(tokens, cells: np.ndarray, avoid: int, special_ids: set, seed: int) -> dict[int, int]:
    """One random expressed gene token per cell (not `avoid`, not a special token)."""
    rng = np.random.default_rng(seed)
    out = {}
    for c in cells:
        seq = tokens.cell(int(c))
        choices = seq[~np.isin(seq, list(special_ids | {avoid}))]
        if choices.size:
            out[int(c)] = int(rng.choice(choices))
    return out


def bh_fdr(p: np.ndarray) -> np.ndarray:
    p = np.asarray(p, dtype=float)
    out = np.full_like(p, np.nan)
    ok = np.isfinite(p)
    if ok.any():
        from scipy.stats import false_discovery_control

        out[ok] = false_discovery_control(p[ok], method="bh")
    return out


def summarise(cells_table: pd.DataFrame) -> pd.DataFrame:
    """Per gene and type: effect summaries and a rank-sum test against the random-gene controls."""
    from scipy.stats import mannwhitneyu

    rows = []
    for (gene, kind), t in cells_table.groupby(["gene", "perturbation"], sort=False):
        use_shift = t["shift"].notna().any()
        effect = t["shift"] if use_shift else 1 - t["cos_sim"]
        control = (t["control_shift"] if use_shift else 1 - t["control_cos_sim"]).dropna()
        p = mannwhitneyu(effect, control, alternative="two-sided").pvalue if len(effect) >= 2 and len(control) >= 2 else np.nan
        rows.append(
            {
                "gene": gene,
                "symbol": t["symbol"].iloc[0],
                "perturbation": kind,
                "n_cells": len(t),
                "cos_sim_mean": t["cos_sim"].mean(),
                "cos_sim_median": t["cos_sim"].median(),
                "control_cos_sim_mean": t["control_cos_sim"].mean(),
                "shift_mean": t["shift"].mean(),
                "control_shift_mean": t["control_shift"].mean(),
                "tested": "shift_to_goal" if use_shift else "1-cos_sim",
                "pvalue": p,
            }
        )
    out = pd.DataFrame(rows)
    if len(out):
        out["fdr"] = bh_fdr(out["pvalue"].to_numpy())
    return out
