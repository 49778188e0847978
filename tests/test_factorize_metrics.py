"""Analysis formulas on hand-computed inputs; chunked results equal unchunked ones."""

import numpy as np
import pytest
import scipy.sparse as sp

from tissuelens.factorize import metrics


def test_deviance_by_hand():
    y = np.array([[0.0, 2.0], [3.0, 1.0]])
    f = np.array([[1.0], [2.0]])
    w = np.array([[0.5], [1.0]])  # rate = [[0.5, 1], [1, 2]]
    unit = np.array([[0.5, 2 * np.log(2) - 2 + 1], [3 * np.log(3) - 3 + 1, np.log(0.5) - 1 + 2]])
    out = metrics.deviance(sp.csr_matrix(y), f, w, chunk_size=1)
    assert out["total"] == pytest.approx(2 * unit.sum())
    assert out["mean"] == pytest.approx(2 * unit.sum() / 4)
    assert out["mean_per_gene"] == pytest.approx(2 * unit.sum() / 2)
    assert out["gene_mean"] == pytest.approx(unit.mean(0).mean())
    assert out["gene_max"] == pytest.approx(unit.mean(0).max())
    # size factors multiply the rate
    nu = np.array([2.0, 0.5])
    scaled = metrics.deviance(y, f * nu[:, None], w)["total"]
    assert metrics.deviance(y, f, w, size_factors=nu)["total"] == pytest.approx(scaled)


def test_reconstruction_error_by_hand_and_chunked():
    y = np.array([[1.0, 0.0], [0.0, 2.0], [2.0, 2.0]])
    f = np.ones((3, 1))
    w = np.array([[1.0], [1.0]])
    expected = np.sqrt(((y - 1.0) ** 2).sum() / (y**2).sum())
    assert metrics.reconstruction_error(sp.csr_matrix(y), f, w, chunk_size=2) == pytest.approx(expected)
    assert metrics.reconstruction_error(y, f, w, chunk_size=100) == pytest.approx(expected)


def test_morans_i_matches_the_knn_formula():
    rng = np.random.default_rng(0)
    xy = rng.uniform(size=(60, 2)) * 10
    values = np.column_stack([xy[:, 0] + 0.1 * rng.normal(size=60), rng.normal(size=60)])
    got = metrics.morans_i(values, xy, n_neighs=6)
    from sklearn.neighbors import NearestNeighbors

    nbr = NearestNeighbors(n_neighbors=7).fit(xy).kneighbors(xy, return_distance=False)[:, 1:]
    for j in range(2):
        z = values[:, j] - values[:, j].mean()
        expected = (z * z[nbr].mean(1)).sum() / (z**2).sum()
        assert got[j] == pytest.approx(expected, rel=1e-6)
    assert got[0] > 0.8 and abs(got[1]) < 0.3


def test_enrichment_lfc_by_hand():
    w = np.array([[1.0, 3.0], [2.0, 2.0]])
    wg = np.array([[[3.0, 1.0], [2.0, 2.0]]])
    lfc = metrics.enrichment_lfc(w, wg)
    assert lfc.shape == (1, 2, 2)
    assert lfc[0, 0, 0] == pytest.approx(np.log2(0.75 / 0.25), rel=1e-6)
    assert lfc[0, 0, 1] == pytest.approx(np.log2(0.25 / 0.75), rel=1e-6)
    np.testing.assert_allclose(lfc[0, 1], 0.0, atol=1e-9)
    summary = metrics.enrichment_summary(lfc, ["A", "B"], ["g0"], top=1)
    assert summary["factor_0"]["g0"]["top_enriched"] == ["A"]
    assert summary["factor_1"]["g0"]["top_depleted"] == ["A"]
    assert summary["factor_0"]["g0"]["mean_lfc"] == pytest.approx(np.log2(3) / 2, rel=1e-6)


def test_group_loadings_recover_exact_loadings():
    rng = np.random.default_rng(1)
    f = rng.uniform(0.2, 2.0, size=(200, 2))
    w = rng.uniform(0.1, 1.0, size=(6, 2))
    groups = np.repeat([0, 1], 100)
    w1 = w * np.array([2.0, 0.5])
    y = np.where(groups[:, None] == 0, f @ w.T, f @ w1.T)
    out = metrics.group_loadings(sp.csr_matrix(y), f, w, groups, 3, max_iter=5000, seed=0, tol=1e-10)
    np.testing.assert_allclose(out[0], w, rtol=1e-3)
    np.testing.assert_allclose(out[1], w1, rtol=1e-3)
    np.testing.assert_array_equal(out[2], w)  # an empty group (fewer cells than factors) copies W


def test_best_matched_pearson_finds_the_permutation():
    rng = np.random.default_rng(2)
    truth = rng.normal(size=(100, 3))
    est = np.column_stack([truth[:, 2] * 3 + 1, rng.normal(size=100), truth[:, 0], truth[:, 1] + 0.01 * rng.normal(size=100)])
    r = metrics.best_matched_pearson(truth, est)
    np.testing.assert_allclose(r, [1.0, 1.0, 1.0], atol=1e-3)
    assert metrics.best_matched_pearson(truth, -est[:, [2, 3, 0]]).max() < 0.5  # sign matters


def test_recovery_scores_training_cells_as_nsf_and_held_out_cells_apart():
    """NSF's benchmark scores factors on the training cells: held-out cells of `pnmf` only get the prior
    and must not count. 0/1 truth (the patterned simulations) has no log-space score."""
    from tissuelens.factorize.analysis import recovery

    rng = np.random.default_rng(0)
    truth = (rng.random((200, 2)) < 0.4).astype(float)
    est = truth[:, ::-1] * 3.0 + 0.01  # permuted and rescaled: exact on every cell
    train, val = np.arange(150), np.arange(150, 200)
    est[val] = 1.0 + 0.1 * rng.random((50, 2))  # the held-out cells carry noise only
    rec = recovery(truth, None, est, np.log(est), train, val)
    np.testing.assert_allclose(rec["pearson_spatial"], [1.0, 1.0], atol=1e-9)
    assert rec["spatial_min"] == pytest.approx(1.0)
    assert max(np.abs(rec["pearson_spatial_val"])) < 0.5
    assert rec["pearson_spatial_log"] is None
    positive = recovery(np.exp(truth), np.array([True, False]), np.exp(truth), truth, train, val)
    assert positive["pearson_spatial_log"] == pytest.approx([1.0]) and len(positive["pearson_all"]) == 2
