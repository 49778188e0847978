"""What Loki builds on OmiCLIP embeddings: zero-shot annotation, image-to-transcriptome retrieval, PredEx (the math;
Tangram decomposition: `decompose`).

All compare L2-normalised embeddings by their dot product (= cosine), as Loki does:

* Annotate (`loki.annotate.annotate_with_marker_genes`): one sentence per cell type (its marker genes
  joined by spaces, as Loki's marker-gene notebooks), encoded by the text encoder; `image @ text.T` per
  spot and type, the best type by argmax. We add the softmax entropy over types (probabilities as CLIP's:
  softmax of `logit_scale x cosine`), and the same annotation from the spots' text embeddings.
* Annotate with bulk samples (`loki.annotate.annotate_with_bulk`): `bulk_scores`.
* Retrieve (`loki.retrieve.retrieve_st_by_image`): `image @ text.T`, top k by similarity.
* PredEx (`loki.predex.predict_st_gene_expr`): expression = similarity-weighted mean of the reference
  spots' expression, `(S @ X) / S.sum(1)`. Options beyond Loki: keep only each row's top k similarities,
  and weights softmax(S / temperature) instead of the raw similarities; both off by default (Loki's).

Imported by the Loki stack (Python 3.9, numpy 1.25): numpy and pandas only (decoupler only inside
`analyze.markers.score`, never called here).
"""

from __future__ import annotations

import numpy as np

from tissuelens.analyze.markers import softmax_entropy
from tissuelens.embed.loki.agreement import l2_normalise
from tissuelens.errors import InputError


def similarity(query: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """(n_query, n_reference) cosine similarities (dot products of L2-normalised rows)."""
    return l2_normalise(np.asarray(query, dtype=np.float64)) @ l2_normalise(np.asarray(reference, dtype=np.float64)).T


# -- annotate ------------------------------------------------------------------------------------


def marker_sentences(net, top_n: int) -> dict:
    """{cell type: its first `top_n` marker genes (file order) joined by spaces}, types sorted by name.
    `net` is the long marker table of tissuelens.analyze.markers (columns source = type, target = gene)."""
    out = {}
    for cell_type, rows in net.groupby("source", sort=True):
        genes = list(dict.fromkeys(rows["target"].astype(str)))[: int(top_n)]
        out[str(cell_type)] = " ".join(genes)
    return out


def annotate(spot_emb: np.ndarray, type_emb: np.ndarray, logit_scale: float = 1.0):
    """(best type index (n,), its similarity (n,), normalised softmax entropy (n,), similarities (n, types))."""
    sim = similarity(spot_emb, type_emb)
    best = sim.argmax(axis=1)
    return best, sim[np.arange(len(best)), best], softmax_entropy(float(logit_scale) * sim), sim


# -- retrieve ------------------------------------------------------------------------------------


def check_k(k: int, n: int, what: str) -> int:
    k = int(k)
    if k < 1 or k > n:
        raise InputError(f"{what}: k={k} but there are {n} spots to retrieve from")
    return k


def top_matches(sim: np.ndarray, k: int, block: int = 2048):
    """(indices (n, k), similarities (n, k)) of each row's k largest similarities, descending."""
    n, m = sim.shape
    idx = np.empty((n, k), dtype=np.int64)
    for lo in range(0, n, block):
        s = sim[lo : lo + block]
        cand = np.argpartition(-s, k - 1, axis=1)[:, :k] if k < m else np.tile(np.arange(m), (len(s), 1))
        vals = np.take_along_axis(s, cand, axis=1)
        order = _order_desc(vals, cand)
        idx[lo : lo + block] = np.take_along_axis(cand, order, axis=1)
    return idx, np.take_along_axis(sim, idx, axis=1)


def _order_desc(vals: np.ndarray, cand: np.ndarray) -> np.ndarray:
    """Per row: order of the candidates by similarity descending, ties by reference index."""
    by_index = np.argsort(cand, axis=1, kind="stable")
    v = np.take_along_axis(vals, by_index, axis=1)
    return np.take_along_axis(by_index, np.argsort(-v, axis=1, kind="stable"), axis=1)


def retrieval_metrics(idx: np.ndarray, self_index=None, query_labels=None, reference_labels=None) -> dict:
    """Accuracy at k of the retrieved reference spots (idx (n, k), best first).

    * `self_at_k`: the spot's own transcriptome is among its k (retrieval within the dataset), with
      `self_at_1`; chance k / n_reference;
    * `label_at_1`: the best match has the spot's label; `label_precision_at_k`: mean fraction of the k
      with the spot's label; chance: the probability that a random reference spot shares the label."""
    n, k = idx.shape
    out = {"k": int(k), "n_query": int(n)}
    if self_index is not None:
        hit = idx == np.asarray(self_index)[:, None]
        out.update(self_at_1=float(hit[:, 0].mean()), self_at_k=float(hit.any(axis=1).mean()))
    if query_labels is not None and reference_labels is not None:
        ql = np.asarray(query_labels).astype(str)
        rl = np.asarray(reference_labels).astype(str)
        same = rl[idx] == ql[:, None]
        levels, counts = np.unique(rl, return_counts=True)
        freq = dict(zip(levels, counts / counts.sum()))
        out.update(label_at_1=float(same[:, 0].mean()), label_precision_at_k=float(same.mean()),
                   label_chance=float(np.mean([freq.get(v, 0.0) for v in ql])))
    return out


# -- PredEx --------------------------------------------------------------------------------------


def holdout_split(n: int, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of the held-out spots: round(fraction x n), at least 1 and at most n - 1, seeded."""
    n_test = int(min(max(round(float(fraction) * n), 1), n - 1))
    mask = np.zeros(n, dtype=bool)
    mask[np.random.default_rng(seed).permutation(n)[:n_test]] = True
    return mask


def block_split(xy: np.ndarray, fraction: float, blocks: int, seed: int, sections=None) -> np.ndarray:
    """Boolean mask of the held-out spots, whole spatial blocks at a time: each section's bounding box cut
    into `blocks` x `blocks` squares, the blocks shuffled (seeded) and taken until round(fraction x n)
    spots are held out (at least one block, never every block), so test spots have no training
    neighbours but at block borders."""
    xy = np.asarray(xy, dtype=np.float64)
    n = len(xy)
    sec = np.zeros(n, dtype=np.int64) if sections is None else np.unique(np.asarray(sections).astype(str), return_inverse=True)[1]
    cell = np.zeros((n, 2), dtype=np.int64)
    for s in np.unique(sec):
        m = sec == s
        lo, hi = xy[m].min(axis=0), xy[m].max(axis=0)
        span = np.where(hi > lo, hi - lo, 1.0)
        cell[m] = np.clip(np.floor((xy[m] - lo) / span * blocks), 0, blocks - 1).astype(np.int64)
    block = np.unique(np.column_stack([sec, cell]), axis=0, return_inverse=True)[1].ravel()
    n_blocks = int(block.max()) + 1
    if n_blocks < 2:
        raise InputError("PredEx: every spot falls in one spatial block; use more blocks or split: random")
    target = int(min(max(round(float(fraction) * n), 1), n - 1))
    counts = np.bincount(block, minlength=n_blocks)
    held, total = [], 0
    for b in np.random.default_rng(seed).permutation(n_blocks):
        if total >= target or len(held) == n_blocks - 1:
            break
        held.append(b)
        total += counts[b]
    return np.isin(block, held)


def predex_weights(sim: np.ndarray, top_k: int | None = None, temperature: float | None = None) -> np.ndarray:
    """Row-normalised weights over the reference spots: the raw similarities (Loki), or softmax(S / T);
    with `top_k`, every similarity below a row's k-th largest gets weight 0."""
    s = np.asarray(sim, dtype=np.float64)
    keep = np.ones_like(s, dtype=bool)
    if top_k is not None and top_k < s.shape[1]:
        idx, _ = top_matches(s, int(top_k))
        keep = np.zeros_like(s, dtype=bool)
        np.put_along_axis(keep, idx, True, axis=1)
    if temperature is None:
        w = np.where(keep, s, 0.0)
    else:
        z = np.where(keep, s / float(temperature), -np.inf)
        w = np.exp(z - z.max(axis=1, keepdims=True))
    total = w.sum(axis=1, keepdims=True)
    if np.any(np.abs(total) < 1e-12):
        raise InputError("PredEx: a spot's similarity weights sum to zero (set embed.loki.predex.temperature)")
    return w / total


def predict_expression(sim: np.ndarray, reference_expr: np.ndarray, top_k: int | None = None,
                       temperature: float | None = None) -> np.ndarray:
    """(n_query, genes): weights (predex_weights) @ reference expression."""
    return predex_weights(sim, top_k, temperature) @ np.asarray(reference_expr, dtype=np.float64)


def pearson_per_gene(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """Pearson r of each column; NaN where either column is constant."""
    p = pred - pred.mean(axis=0)
    t = true - true.mean(axis=0)
    denom = np.sqrt((p**2).sum(axis=0) * (t**2).sum(axis=0))
    with np.errstate(divide="ignore", invalid="ignore"):
        r = (p * t).sum(axis=0) / denom
    return np.where(denom > 0, r, np.nan)


def bulk_scores(image_emb: np.ndarray, bulk_emb: np.ndarray) -> np.ndarray:
    """(spots, samples): Loki's annotate_with_bulk (tensor=False) per sample: dot product of every spot's
    image embedding with the sample's text embedding, softmax over the spots, then min-max to [0, 1]."""
    sim = np.asarray(image_emb, dtype=np.float64) @ np.asarray(bulk_emb, dtype=np.float64).T
    e = np.exp(sim - sim.max(axis=0, keepdims=True))
    p = e / e.sum(axis=0, keepdims=True)
    lo, hi = p.min(axis=0, keepdims=True), p.max(axis=0, keepdims=True)
    return (p - lo) / np.where(hi > lo, hi - lo, 1.0)
