"""Loki's tasks on hand-made embeddings: annotation, retrieval, PredEx (tissuelens.embed.loki_tasks)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tissuelens.embed import loki_tasks as lt
from tissuelens.errors import InputError


def _unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_planted_marker_sentences_annotate_their_spots():
    """Spots whose image embedding lies near a type's sentence embedding get that type; confident spots
    have low entropy."""
    rng = np.random.default_rng(0)
    types = _unit(rng.normal(size=(3, 16)))
    truth = rng.integers(0, 3, size=60)
    spots = _unit(types[truth] + 0.05 * rng.normal(size=(60, 16)))
    best, best_sim, entropy, sim = lt.annotate(spots, types, logit_scale=100.0)
    assert (best == truth).all()
    np.testing.assert_allclose(best_sim, sim.max(axis=1))
    np.testing.assert_allclose(sim, spots @ types.T, atol=1e-12)  # Loki: image_embeddings @ text_embeddings.T
    assert entropy.max() < 0.5
    _, _, flat, _ = lt.annotate(spots, types, logit_scale=0.0)
    np.testing.assert_allclose(flat, 1.0)  # uniform softmax


def test_marker_sentences_keep_file_order_and_top_n():
    net = pd.DataFrame({"source": ["B", "A", "A", "A", "B"], "target": ["CD19", "CD3D", "CD3E", "CD3D", "MS4A1"]})
    assert lt.marker_sentences(net, 2) == {"A": "CD3D CD3E", "B": "CD19 MS4A1"}
    assert lt.marker_sentences(net, 1) == {"A": "CD3D", "B": "CD19"}


def test_planted_match_is_retrieved_at_rank_1():
    rng = np.random.default_rng(1)
    text = _unit(rng.normal(size=(40, 8)))
    image = _unit(text + 0.05 * rng.normal(size=(40, 8)))  # each image beside its own transcriptome
    idx, sims = lt.top_matches(lt.similarity(image, text), 3)
    assert (idx[:, 0] == np.arange(40)).all()
    assert np.all(np.diff(sims, axis=1) <= 0)
    labels = np.repeat(["a", "b"], 20)
    m = lt.retrieval_metrics(idx, np.arange(40), labels, labels)
    assert m["self_at_1"] == 1.0 and m["self_at_k"] == 1.0 and m["label_at_1"] == 1.0
    assert m["label_chance"] == 0.5


def test_top_k_ties_and_transcription_of_retrieve_st_by_image():
    sim = np.array([[0.5, 0.9, 0.5, 0.1], [0.2, 0.2, 0.2, 0.2]])
    idx, vals = lt.top_matches(sim, 3)
    assert idx.tolist() == [[1, 0, 2], [0, 1, 2]]  # ties by reference index
    torch = pytest.importorskip("torch")
    values, indices = torch.topk(torch.tensor(sim[0]), 3)  # Loki's retrieve_st_by_image
    assert set(indices.tolist()) == set(idx[0].tolist()) and np.allclose(values.numpy(), vals[0])


def test_k_larger_than_the_spots_fails():
    with pytest.raises(InputError, match="k=5 but there are 3 spots"):
        lt.check_k(5, 3, "d.h5ad: embed.loki.retrieve.k")


def loki_predict_st_gene_expr(image_text_similarity, train_data):
    """Transcription of Loki's predex.predict_st_gene_expr."""
    weighted_sum = image_text_similarity @ train_data
    weights = image_text_similarity.sum(axis=1, keepdims=True)
    return weighted_sum / weights


def test_predex_defaults_are_lokis_arithmetic():
    rng = np.random.default_rng(2)
    sim = rng.uniform(0.1, 1.0, size=(5, 12))
    expr = rng.poisson(3.0, size=(12, 4)).astype(float)
    np.testing.assert_allclose(lt.predict_expression(sim, expr), loki_predict_st_gene_expr(sim, expr))


def test_predex_top_k_and_temperature():
    sim = np.array([[0.9, 0.8, 0.1]])
    expr = np.array([[1.0], [3.0], [100.0]])
    assert lt.predict_expression(sim, expr, top_k=2)[0, 0] == pytest.approx((0.9 * 1 + 0.8 * 3) / 1.7)
    w = np.exp(np.array([0.9, 0.8]) / 0.1)
    assert lt.predict_expression(sim, expr, top_k=2, temperature=0.1)[0, 0] == pytest.approx((w[0] * 1 + w[1] * 3) / w.sum())
    assert lt.predex_weights(sim, temperature=1e-4)[0].tolist() == pytest.approx([1.0, 0.0, 0.0])


def test_predex_recovers_a_planted_linear_image_to_gene_map():
    """Expression = image embedding @ W; text embeddings = image embeddings (a perfectly aligned model):
    held-out spots' expression is predicted from their nearest reference spots with high Pearson r."""
    rng = np.random.default_rng(3)
    n, d, g = 600, 4, 10
    z = _unit(rng.normal(size=(n, d)))
    w = rng.normal(size=(d, g))
    expr = z @ w + 0.05 * rng.normal(size=(n, g))
    test = lt.holdout_split(n, 0.2, seed=0)
    assert test.sum() == 120 and (lt.holdout_split(n, 0.2, seed=0) == test).all()
    sim = lt.similarity(z[test], z[~test])
    pred = lt.predict_expression(sim, expr[~test], top_k=10, temperature=0.05)
    r = lt.pearson_per_gene(pred, expr[test])
    assert np.nanmin(r) > 0.9
    loki_default = lt.pearson_per_gene(lt.predict_expression(sim, expr[~test]), expr[test])
    assert np.nanmean(loki_default) < np.nanmean(r)  # raw weights over every spot smooth towards the mean


def test_pearson_per_gene_constant_is_nan():
    pred = np.array([[1.0, 2.0], [2.0, 2.0], [3.0, 2.0]])
    r = lt.pearson_per_gene(pred, np.array([[1.0, 0.0], [2.0, 1.0], [3.0, 5.0]]))
    assert r[0] == pytest.approx(1.0) and np.isnan(r[1])


def test_tangram_proportions_sum_to_one_and_follow_planted_types():
    """Tangram (clusters mode, Loki's arguments) on hand-made embeddings: 'cells' of two types with distinct
    embeddings; spots that are copies of one type's cells get that type as dominant; proportions sum to 1."""
    pytest.importorskip("tangram")
    import anndata as ad

    from tissuelens.embed.loki_run import run_decompose

    rng = np.random.default_rng(4)
    centres = rng.normal(size=(2, 12)) * 2
    cell_type = np.repeat(["a", "b"], 30)
    cells = centres[(cell_type == "b").astype(int)] + 0.1 * rng.normal(size=(60, 12))
    ref = ad.AnnData(obs=pd.DataFrame({"group": cell_type}, index=[f"c{i}" for i in range(60)]))
    ref.obsm["X_loki_text"] = cells.astype(np.float32)
    spot_type = np.repeat([0, 1], 20)
    st = ad.AnnData(obs=pd.DataFrame(index=[f"s{i}" for i in range(40)]))
    st.obsm["X_loki_image"] = (centres[spot_type] + 0.1 * rng.normal(size=(40, 12))).astype(np.float32)
    st.obsm["spatial"] = rng.uniform(size=(40, 2))
    settings = {"label_key": "group", "spot_embedding": "auto", "num_epochs": 300, "device": "cpu"}
    table, summary = run_decompose(st, ref, settings, 0, "st.h5ad", "ref")
    props = table[["a", "b"]].to_numpy()
    np.testing.assert_allclose(props.sum(axis=1), 1.0)
    assert (table["dominant"].to_numpy() == np.array(["a", "b"])[spot_type]).all()
    assert summary["spot_embedding"] == "image" and summary["cell_types"] == ["a", "b"]
    del ref.obs["group"]
    with pytest.raises(InputError, match="reference dataset 'ref' has no labels"):
        run_decompose(st, ref, settings, 0, "st.h5ad", "ref")


def test_proportions_normalise_rows():
    from tissuelens.embed.loki_run import proportions

    np.testing.assert_allclose(proportions(np.array([[1.0, 3.0], [0.0, 0.0]])), [[0.25, 0.75], [0.0, 0.0]])
