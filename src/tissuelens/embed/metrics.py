"""Embedding quality and consistency metrics (any model's embeddings).

Against labels (the usual zero-shot checks of single-cell foundation models, as in scIB and the
Geneformer/scGPT evaluations):
* `knn_accuracy`: leave-one-out k-nearest-neighbour majority vote (cosine distance), fraction correct;
* `silhouette`: silhouette width of the labels (cosine), in [-1, 1]; scIB reports (s + 1) / 2;
* `leiden_ari`, `leiden_nmi`: agreement of Leiden clusters (scanpy, kNN graph on the embedding) with the labels,
  at the resolution with the best NMI (scIB optimises the clustering resolution the same way);
* `distance_ratio`: mean cosine distance between cells of different groups / within the same group (> 1 = separated).

Spatial data: `spatial_neighbor_cosine` (mean cosine similarity of each spot to its nearest spatial
neighbours) against `random_pair_cosine` (random pairs).

Consistency of two runs of one model (e.g. batch size or precision): mean cosine similarity of
matching rows, Pearson correlation of the pairwise distance matrices, mean kNN overlap.
"""

from __future__ import annotations

import numpy as np

from tissuelens.neighbors import knn

SILHOUETTE_MAX_CELLS = 20000  # silhouette is O(n²): a seeded subsample above this many cells


def _finite_rows(x: np.ndarray) -> np.ndarray:
    return np.isfinite(x).all(axis=1)


def _unit(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norm > 0, norm, 1)


def knn_accuracy(x: np.ndarray, labels, k: int = 15) -> float:
    labels = np.asarray(labels)
    codes, uniq = _codes(labels)
    nbr = knn(x, k, "cosine")
    votes = np.zeros((x.shape[0], uniq.size))
    np.add.at(votes, (np.repeat(np.arange(x.shape[0]), nbr.shape[1]), codes[nbr].ravel()), 1)
    return float((votes.argmax(1) == codes).mean())


def _codes(labels):
    uniq, codes = np.unique(np.asarray(labels).astype(str), return_inverse=True)
    return codes, uniq


def silhouette(x: np.ndarray, labels, seed: int = 0) -> float:
    from sklearn.metrics import silhouette_score

    sample = SILHOUETTE_MAX_CELLS if x.shape[0] > SILHOUETTE_MAX_CELLS else None
    return float(silhouette_score(x, np.asarray(labels).astype(str), metric="cosine", sample_size=sample, random_state=seed))


def distance_ratio(x: np.ndarray, labels, max_cells: int = 2000, seed: int = 0) -> float:
    """Mean cosine distance between groups / mean cosine distance within groups."""
    codes, _ = _codes(labels)
    if x.shape[0] > max_cells:
        keep = np.random.default_rng(seed).choice(x.shape[0], max_cells, replace=False)
        x, codes = x[keep], codes[keep]
    u = _unit(x)
    dist = 1.0 - u @ u.T
    same = codes[:, None] == codes[None, :]
    off = ~np.eye(len(codes), dtype=bool)
    within = dist[same & off]
    between = dist[~same]
    return float(between.mean() / within.mean()) if within.size and between.size and within.mean() > 0 else float("nan")


def leiden_scores(x: np.ndarray, labels, n_neighbors: int = 15, resolutions=(0.1, 0.2, 0.5, 1.0), seed: int = 0) -> dict:
    """ARI/NMI of Leiden clusters vs labels, at the resolution with the best NMI (as scIB's cluster optimisation)."""
    import anndata as ad
    import scanpy as sc
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    from tissuelens.neighbors import neighbors

    a = ad.AnnData(np.zeros((x.shape[0], 0), dtype=np.float32))
    a.obsm["X_emb"] = x.astype(np.float32)
    neighbors(a, use_rep="X_emb", n_neighbors=n_neighbors, metric="cosine", seed=seed)  # clamped to the cells there
    labels = np.asarray(labels).astype(str)
    best = None
    for res in resolutions:
        sc.tl.leiden(a, resolution=res, random_state=seed, flavor="igraph", n_iterations=2, directed=False, key_added="leiden")
        clusters = a.obs["leiden"].to_numpy()
        nmi = float(normalized_mutual_info_score(labels, clusters))
        if best is None or nmi > best["leiden_nmi"]:
            best = {
                "leiden_ari": float(adjusted_rand_score(labels, clusters)),
                "leiden_nmi": nmi,
                "leiden_n_clusters": int(np.unique(clusters).size),
                "leiden_resolution": float(res),
            }
    return best


def label_metrics(x: np.ndarray, labels, *, k: int = 15, resolutions=(0.1, 0.2, 0.5, 1.0), seed: int = 0) -> dict:
    labels = np.asarray(labels)
    ok = _finite_rows(x) & ~_missing(labels)
    x, labels = x[ok], labels[ok]
    out = {"n_cells": int(ok.sum()), "n_groups": int(np.unique(labels.astype(str)).size)}
    if out["n_groups"] < 2 or x.shape[0] < 3:
        return out
    sil = silhouette(x, labels, seed)
    out.update(
        knn_accuracy=knn_accuracy(x, labels, k),
        knn_k=int(min(k, x.shape[0] - 1)),
        silhouette=sil,
        silhouette_scaled=(sil + 1) / 2,
        distance_ratio=distance_ratio(x, labels, seed=seed),
    )
    out.update(leiden_scores(x, labels, n_neighbors=k, resolutions=resolutions, seed=seed))
    return out


def _missing(labels) -> np.ndarray:
    import pandas as pd

    return pd.isna(pd.Series(labels)).to_numpy()


def spatial_metrics(x: np.ndarray, coords: np.ndarray, k: int = 6, n_random: int = 20000, seed: int = 0) -> dict:
    ok = _finite_rows(x) & np.isfinite(coords).all(axis=1)
    x, coords = _unit(x[ok]), coords[ok]
    if x.shape[0] < k + 2:
        return {}
    nbr = knn(coords, k, "euclidean")
    near = np.mean([(x * x[nbr[:, j]]).sum(1).mean() for j in range(nbr.shape[1])])  # no (n, k, dim) copy
    rng = np.random.default_rng(seed)
    a, b = rng.integers(x.shape[0], size=(2, n_random))
    keep = a != b
    rand = (x[a[keep]] * x[b[keep]]).sum(-1).mean()
    return {"spatial_k": int(k), "spatial_neighbor_cosine": float(near), "random_pair_cosine": float(rand)}


def consistency_metrics(a: np.ndarray, b: np.ndarray, k: int = 15, max_cells: int = 2000, seed: int = 0) -> dict:
    """How alike two embeddings of the same cells are (rows matched)."""
    if a.shape != b.shape:
        raise ValueError(f"embeddings differ in shape: {a.shape} vs {b.shape}")
    ok = _finite_rows(a) & _finite_rows(b)
    a, b = a[ok], b[ok]
    if a.shape[0] > max_cells:
        keep = np.random.default_rng(seed).choice(a.shape[0], max_cells, replace=False)
        a, b = a[keep], b[keep]
    cos = (_unit(a) * _unit(b)).sum(1)
    out = {"n_cells": int(a.shape[0]), "mean_cosine": float(cos.mean()), "min_cosine": float(cos.min())}
    if a.shape[0] >= 3:
        from scipy.spatial.distance import pdist

        da, db = pdist(a, "cosine"), pdist(b, "cosine")
        out["distance_correlation"] = float(np.corrcoef(da, db)[0, 1]) if da.std() > 0 and db.std() > 0 else float(np.allclose(da, db))
        na, nb = knn(a, k, "cosine"), knn(b, k, "cosine")
        overlap = [np.intersect1d(x, y).size / na.shape[1] for x, y in zip(na, nb)]
        out["knn_overlap"] = float(np.mean(overlap))
        out["knn_k"] = int(na.shape[1])
    return out


def embedding_metrics(
    adata, key: str, *, label_key: str | None = "group", k: int = 15, leiden_resolutions=(0.1, 0.2, 0.5, 1.0), spatial_k: int = 6, seed: int = 0
) -> dict:
    """Label and spatial metrics of `obsm[key]` (labels from obs[label_key], coordinates from obsm['spatial'])."""
    x = np.asarray(adata.obsm[key], dtype=np.float64)
    out = {"key": key, "n_cells": int(x.shape[0]), "n_cells_embedded": int(_finite_rows(x).sum()), "dim": int(x.shape[1])}
    if label_key and label_key in adata.obs:
        out["label_key"] = label_key
        out["labels"] = label_metrics(x, adata.obs[label_key].to_numpy(), k=k, resolutions=leiden_resolutions, seed=seed)
    if "spatial" in adata.obsm:
        out["spatial"] = spatial_metrics(x, np.asarray(adata.obsm["spatial"], dtype=float), k=spatial_k, seed=seed)
    return out


def _embed_info(adata, model: str) -> dict:
    """What the embed step recorded: uns['embed'][model] (Geneformer) or the JSON in uns['tissuelens_embed']."""
    import json

    info = adata.uns.get("embed", {})
    if isinstance(info, dict) and model in info:
        return dict(info[model])
    raw = adata.uns.get("tissuelens_embed")
    if isinstance(raw, str):
        try:
            return json.loads(raw)
        except json.JSONDecodeError:
            return {}
    return {}


METRICS_USED = (
    "knn_accuracy (leave-one-out majority vote, cosine), silhouette (cosine; scaled = (s+1)/2 as in scIB), "
    "Leiden ARI/NMI against the labels (best-NMI resolution, as scIB), between/within-group cosine distance ratio; spatial: neighbour vs "
    "random-pair cosine; consistency between two runs: mean cosine, distance-matrix correlation, kNN overlap"
)


def embedding_report(adata, model: str, settings: dict, seed: int = 0) -> dict:
    """embedding_metrics.json: metrics of every `obsm["X_<model>*"]` plus the stored run consistency."""
    keys = sorted(k for k in adata.obsm if k == f"X_{model}" or k.startswith(f"X_{model}_"))
    if not keys:
        raise KeyError(f"X_{model}")
    info = _embed_info(adata, model)
    kw = dict(label_key=settings.get("label_key"), k=settings["k"], leiden_resolutions=tuple(settings["leiden_resolutions"]),
              spatial_k=settings["spatial_k"], seed=seed)
    report = {"model": model, "kind": info.get("kind"), "untrained": bool(info.get("untrained", False)), "metrics_used": METRICS_USED}
    if keys == [f"X_{model}"]:
        report.update(embedding_metrics(adata, keys[0], **kw))
    else:
        report["representations"] = {key: embedding_metrics(adata, key, **kw) for key in keys}
    if "consistency" in info:
        report["consistency"] = _plain(info["consistency"])
    return report
def _plain(obj):
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return obj
