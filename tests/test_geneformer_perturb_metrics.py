"""Embedding metrics on known inputs (perturbation: test_geneformer_perturb.py)."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from helpers.geneformer_fixtures import embed_defaults

from tissuelens.embed import metrics as M


def test_label_metrics_on_known_clusters():
    rng = np.random.default_rng(0)
    centres = np.eye(3) * 10
    labels = np.repeat(["a", "b", "c"], 30)
    x = centres[np.repeat(np.arange(3), 30)] + rng.normal(scale=0.1, size=(90, 3)) + 1
    m = M.label_metrics(x, labels, k=5)
    assert m["knn_accuracy"] == 1.0 and m["silhouette"] > 0.9 and m["distance_ratio"] > 10
    assert m["leiden_ari"] == pytest.approx(1.0) and m["leiden_nmi"] == pytest.approx(1.0)
    # labels unrelated to the embedding: near chance
    shuffled = rng.permutation(labels)
    r = M.label_metrics(x, shuffled, k=5)
    assert r["knn_accuracy"] < 0.6 and abs(r["silhouette"]) < 0.2 and r["distance_ratio"] == pytest.approx(1.0, abs=0.1)
    # NaN rows (cells without genes) are skipped, and counted
    x[0] = np.nan
    assert M.label_metrics(x, labels, k=5)["n_cells"] == 89


def test_consistency_and_spatial_metrics():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(50, 8))
    same = M.consistency_metrics(a, a.copy(), k=5)
    assert same["mean_cosine"] == pytest.approx(1.0) and same["distance_correlation"] == pytest.approx(1.0) and same["knn_overlap"] == 1.0
    other = M.consistency_metrics(a, rng.normal(size=(50, 8)), k=5)
    assert other["mean_cosine"] < 0.5 and other["knn_overlap"] < 0.5
    # embedding = smooth function of position: spatial neighbours are more alike than random pairs
    xy = rng.uniform(0, 1, size=(200, 2))
    emb = np.column_stack([np.sin(3 * xy[:, 0]), np.cos(3 * xy[:, 1]), xy[:, 0] - 0.5])
    s = M.spatial_metrics(emb, xy, k=6)
    assert s["spatial_neighbor_cosine"] > s["random_pair_cosine"] + 0.2


def test_embedding_report_for_several_representations():
    rng = np.random.default_rng(2)
    a = ad.AnnData(obs=pd.DataFrame({"group": np.repeat(["x", "y"], 20)}, index=[f"c{i}" for i in range(40)]))
    a.obsm["X_m_text"] = rng.normal(size=(40, 4))
    a.obsm["X_m_image"] = rng.normal(size=(40, 4))
    a.uns["tissuelens_embed"] = '{"untrained": true, "kind": "loki"}'
    r = M.embedding_report(a, "m", embed_defaults()["metrics"])
    assert r["untrained"] is True and set(r["representations"]) == {"X_m_image", "X_m_text"}
    assert r["representations"]["X_m_text"]["labels"]["n_groups"] == 2
