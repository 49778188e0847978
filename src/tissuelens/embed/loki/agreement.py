"""Text-image agreement of the embed step: per-spot cosine of a spot's text and image embeddings, and
retrieval (does a spot's image embedding rank its own sentence first among its own and its `k` nearest
spatial neighbours' sentences, within its section?); `summary` describes a metric's values.

Imported by the Loki stack (Python 3.9).
"""

from __future__ import annotations

import numpy as np


def l2_normalise(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norm > 0, norm, 1.0)


def cosine_agreement(text: np.ndarray, image: np.ndarray) -> np.ndarray:
    """Per-spot cosine similarity of its text and image embeddings."""
    return np.sum(l2_normalise(text) * l2_normalise(image), axis=1)


def section_codes(adata):
    """Each spot's section code (tissuelens.sections), or None for a dataset of one section."""
    from tissuelens.sections import section_labels

    labels = section_labels(adata)
    return None if labels is None else np.asarray(labels.codes)


def spatial_neighbours(xy: np.ndarray, k: int, sections=None) -> np.ndarray:
    """(n, k) indices of each spot's k nearest other spots (ties by index); with `sections` (codes) only spots of
    the same section (k at most the smallest section's size - 1)."""
    from scipy.spatial import cKDTree

    n = len(xy)
    k = min(k, n - 1)
    points = np.asarray(xy, dtype=np.float64)
    if sections is not None:
        sizes = np.bincount(sections)
        k = min(k, int(sizes[sizes > 0].min()) - 1)
        far = 10.0 * (float(np.ptp(points, axis=0).max()) + 1.0)  # sections this far apart: never neighbours
        points = np.column_stack([points, np.asarray(sections, dtype=np.float64) * far])
    if k < 1:
        return np.zeros((n, 0), dtype=np.int64)
    _, idx = cKDTree(points).query(points, k=k + 1)
    idx = np.asarray(idx).reshape(n, k + 1)
    out = np.empty((n, k), dtype=np.int64)
    # drop each spot itself (usually column 0; with duplicate locations it may sit elsewhere)
    self_mask = idx == np.arange(n)[:, None]
    # rows where the spot itself is not among the k+1 (exact duplicate locations): drop the last column
    missing = ~self_mask.any(axis=1)
    self_mask[missing, -1] = True
    out[:] = idx[~self_mask].reshape(n, k)
    return out


def retrieval_hits(text: np.ndarray, image: np.ndarray, neighbours: np.ndarray) -> np.ndarray:
    """True where a spot's image embedding is more similar to its own sentence than to every neighbour's."""
    t, im = l2_normalise(text), l2_normalise(image)
    own = np.sum(t * im, axis=1)
    if neighbours.shape[1] == 0:
        return np.ones(len(t), dtype=bool)
    others = np.einsum("nd,nkd->nk", im, t[neighbours])
    return own > others.max(axis=1)


def summary(values: np.ndarray) -> dict:
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return {"mean": None, "median": None, "min": None, "max": None}
    return {"mean": float(values.mean()), "median": float(np.median(values)), "min": float(values.min()), "max": float(values.max())}
